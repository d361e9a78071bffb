"""The shipped study configs: each loads, and its dry run plans it offline without loading data or
weights; the paper-scale ones say what the paper did (Llama-2-7B, LionW, ranks 16/64/256)."""

import json
from pathlib import Path

import pytest

from learnforget import cli, models
from learnforget.study import cost, plan
from learnforget.data import sources
from learnforget.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
PAPER = [p for p in CONFIGS if p.name.startswith("paper-")]


@pytest.fixture
def offline(monkeypatch):
    """No hub, no data loading, no 1-second matmul measurement: a dry run must need none of them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cost, "measure_matmul_flops", lambda seconds=1.0: 1e11)

    def refuse(*a, **k):
        raise AssertionError("a dry run must not load data")

    monkeypatch.setattr(sources, "load_docs", refuse)
    monkeypatch.setattr(sources, "load_records", refuse)
    monkeypatch.setattr(models, "load", refuse)


def test_the_configs_are_there():
    names = {p.name for p in CONFIGS}
    assert {"demo-cpu.yaml", "cpu-full.yaml", "paper-code-cpt.yaml", "paper-math-cpt.yaml",
            "paper-code-ift.yaml", "paper-math-ift.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_dry_runs_offline(path, offline, tmp_path, capsys):
    s = plan.load(path)
    runs = plan.expand(s, tmp_path)
    assert runs and len({r.id for r in runs}) == len(runs)  # no two runs of the grid are the same run
    assert len({Path(r.config.out).name for r in runs}) == len(runs)
    assert cli.main(["study", str(path), "--dry-run", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"{len(runs)} runs; estimated training time" in out and "PFLOP in all" in out
    for r in runs:  # a line per run with a FLOP estimate (epoch budgets: from tokens_per_epoch)
        line = next(l for l in out.splitlines() if l.startswith(Path(r.config.out).name))
        assert line.split()[2] != "-", line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_configs_follow_the_paper(path):
    s = plan.load(path)
    runs = plan.expand(s, Path("/tmp/unused"))
    assert s.model == "meta-llama/Llama-2-7b-hf"
    assert {r.config.train.optimizer for r in runs} == {"lion"}
    assert {r.config.train.betas for r in runs} == {(0.9, 0.95)}
    assert {r.config.train.grad_clip for r in runs} == {1.0}
    lora = [r.config.method for r in runs if r.config.method.method == "lora"]
    assert {m.rank for m in lora} == {16, 64, 256}
    assert {m.rank for m in lora if m.targets == "all"} == {16, 64, 256}
    assert {m.targets for m in lora} == {"all", "attention", "mlp"}
    assert all(m.alpha == 2 * m.rank and m.dropout == 0.05 for m in lora)
    assert any(r.family == "full" for r in runs)
    (exp,) = s.experiments
    data = {"code-cpt": "bigcode/starcoderdata/python", "math-cpt": "open-web-math/open-web-math",
            "code-ift": "ise-uiuc/Magicoder-Evol-Instruct-110K", "math-ift": "meta-math/MetaMathQA"}
    assert exp.data == data[exp.name]
    assert s.seq_len == (1024 if exp.name == "math-ift" else 4096)
    assert s.eval.forgetting == ["hellaswag", "winogrande", "arc_challenge"]
    if exp.regime == "cpt":
        assert exp.checkpoints[:3] == [250_000_000, 500_000_000, 1_000_000_000] and len(exp.checkpoints) >= 6
    else:
        assert exp.epochs == 16 and exp.checkpoints == [1, 2, 4, 8, 16]
        assert any(r.family == "full-regularized" for r in runs)  # the weight decay / dropout baselines
    assert s.executor.num_gpus == 1


def test_architecture_falls_back_to_the_table_when_the_hub_is_unreachable(monkeypatch, capsys):
    from transformers import AutoConfig

    def unreachable(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(models, "_hub_offline", lambda: False)
    monkeypatch.setattr(AutoConfig, "from_pretrained", unreachable)
    cfg = models.architecture("meta-llama/Llama-2-7b-hf")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size) == (4096, 32, 11008, 32000)
    assert cfg.num_key_value_heads == 32 and cfg.tie_word_embeddings is False
    assert "built-in architecture table" in capsys.readouterr().out
    with pytest.raises(UserError, match="cannot read the config of model 'someone/unknown-7b'"):
        models.architecture("someone/unknown-7b")


def test_embedded_table_matches_the_converted_model():
    """The table's SmolLM2 numbers are the converted model's, where this machine has converted it."""
    converted = models.cache_dir() / "models" / "smollm2-135m" / "config.json"
    if not converted.exists():
        pytest.skip("smollm2-135m not converted on this machine")
    real = json.loads(converted.read_text())
    assert {k: real[k] for k in models.ARCHITECTURES["smollm2-135m"]} == models.ARCHITECTURES["smollm2-135m"]
