"""Shared test set-up: one CPU thread (two processes on two cores otherwise fight over spinning
OpenMP threads), glibc's default malloc, a private model cache, and small corpora written per test."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# runner.main tunes malloc for its process (allocator.py); the suite is one process, and later tests
# measure memory that must fall when freed. test_allocator turns it back on in its own subprocesses.
os.environ["LEARNFORGET_MALLOPT"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def code_corpus(tmp_path: Path) -> Path:
    """A folder of 40 small, distinct Python files: enough for a held-out split and a few steps."""
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(40):
        body = "\n".join(f"    total += {i} * {j}  # step {j}" for j in range(12))
        (d / f"mod_{i:02d}.py").write_text(f"def f_{i}(x):\n    total = x\n{body}\n    return total\n")
    return d


@pytest.fixture
def qa_jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "qa.jsonl"
    rows = [{"prompt": f"What is {i} plus {i + 1}?", "response": f"{i} + {i + 1} = {2 * i + 1}. The answer is {2 * i + 1}."} for i in range(60)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def kill_when():
    """kill_when(p, ready, timeout, poll, what): SIGKILL process p as soon as ready() holds; fails if p ends first."""
    def kill(p, ready, timeout: float, poll: float, what: str = "run") -> None:
        deadline = time.time() + timeout
        while not ready() and p.poll() is None and time.time() < deadline:
            time.sleep(poll)
        assert p.poll() is None, f"{what} ended before it could be killed: raise the budget"
        p.send_signal(signal.SIGKILL)
        p.wait()
    return kill
