"""The shipped study configs: each loads, and its dry run plans it offline without loading data or
weights; the paper-scale ones say what the paper did (Llama-2-7B, LionW, ranks 16/64/256)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from learnforget import cli, config, models, validate
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


# Every shipped config, and what its grid must expand to: (runs, method labels, learning rates).
SHIPPED = {
    # the demo: 6 search runs (3 lrs each on seed 0), then full, LoRA r16 and full with dropout on seeds 1-6 (stand-in lrs)
    "demo-cpu.yaml": (24, {"full", "full-adrop0.1", "lora-r16-all"}, {6e-6, 2e-5, 6e-5, 2e-4, 4e-4, 8e-4}),
    "demo-cpu-diversity.yaml": (24, {"full", "full-adrop0.1", "lora-r16-all"}, {6e-6, 2e-5, 6e-5, 2e-4, 4e-4, 8e-4}),
    "cpu-full.yaml": (44, {"full", "full-wd0.1", "full-wd1", "full-adrop0.05", "full-adrop0.1", "lora-r1-all", "lora-r16-all",
                           "lora-r256-all", "lora-r40-attention", "lora-r24-mlp"}, {1e-5, 3e-5, 1e-4, 3e-4, 1e-3}),
    "paper-code-cpt.yaml": (8, None, None), "paper-math-cpt.yaml": (8, None, None),
    "paper-code-ift.yaml": (12, None, None), "paper-math-ift.yaml": (12, None, None),
}


def test_every_shipped_config_plans_its_grid(tmp_path):
    """Each shipped config loads, validates and expands to the grid its YAML describes: the run count,
    the method labels and learning rates, and every run's budget and checkpoints from its experiment."""
    assert {p.name for p in CONFIGS} == set(SHIPPED)
    for path in CONFIGS:
        n, labels, lrs = SHIPPED[path.name]
        s = plan.load(path)
        runs = plan.expand(s, tmp_path)
        assert len(runs) == n, path.name
        assert labels is None or {plan.label(r.config) for r in runs} == labels, path.name
        assert lrs is None or {r.config.train.lr for r in runs} == lrs, path.name
        for r in runs:
            t, e = r.config.train, r.experiment
            budget = e.tokens if e.tokens is not None else e.epochs
            assert (t.tokens, t.epochs) == (e.tokens, e.epochs) and t.checkpoints[-1] == budget
            assert t.checkpoints == sorted(float(c) for c in e.checkpoints or [budget])
            assert r.config.data.source == e.data and r.config.data.regime == e.regime and r.config.model == s.model
            assert isinstance(t.lr, float) and t.seed in s.seeds + ([s.search.seed] if s.search else [])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_dry_runs_offline(path, offline, tmp_path, capsys):
    s = plan.load(path)
    runs = plan.expand(s, tmp_path)
    assert runs and len({r.id for r in runs}) == len(runs)  # no two runs of the grid are the same run
    assert len({Path(r.config.out).name for r in runs}) == len(runs)
    assert cli.main(["study", str(path), "--dry-run", "--no-power", "--no-probe", "--out", str(tmp_path / "s")]) == 0
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
    assert plan.forgetting_tasks(s) == ["hellaswag", "winogrande", "arc_challenge"]
    if exp.regime == "cpt":
        assert exp.checkpoints[:3] == [250_000_000, 500_000_000, 1_000_000_000] and len(exp.checkpoints) >= 6
    else:
        assert exp.epochs == 16 and exp.checkpoints == [1, 2, 4, 8, 16]
        assert any(r.family == "full-regularized" for r in runs)  # the weight decay / dropout baselines
    assert s.executor.num_gpus == 1
    # full fine-tuning (12 B/parameter of fp32 state) on 8 GPUs under FSDP; LoRA on one GPU each
    full = [r.config.train for r in runs if r.config.method.method == "full"]
    assert full and {(t.processes, t.distributed) for t in full} == {(8, "fsdp")}
    assert {(r.config.train.processes, r.config.train.distributed) for r in runs if r.family == "lora"} == {(1, "ddp")}
    rows = max(1, s.train["batch_tokens"] // s.seq_len)
    assert all(rows % (t.micro_batch * t.processes) == 0 for t in (r.config.train for r in runs))  # train.budget's rule


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


# ----------------------------------------------------------------------------- typed, located config errors


def _study_text(lr: str) -> str:
    return ("name: t\nmodel: tiny-random-llama\nexperiments:\n"
            "  - {name: e, regime: cpt, domain: code, data: python-code, tokens: 256}\n"
            f"methods:\n  - method: full\n    lr: {lr}\n")


def test_exponent_numbers_are_numbers(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(_study_text("[2e-4, 1E-5, 3e+1]"))
    runs = plan.expand(plan.load(p), tmp_path)
    assert [r.config.train.lr for r in runs] == [2e-4, 1e-5, 30.0]


@pytest.mark.parametrize("lr, message", [
    ('"fast"', r"s.yaml:7: methods\[0\].lr: expected a number, got 'fast'$"),
    ("[2e-4, fast]", r"s.yaml:7: methods\[0\].lr\[1\]: expected a number, got 'fast'$"),
    ("[true]", r"s.yaml:7: methods\[0\].lr\[0\]: expected a number, got True$"),
])
def test_a_wrong_type_names_file_line_field_and_value(tmp_path, lr, message, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(_study_text(lr))
    with pytest.raises(UserError, match=message):
        plan.load(p)
    assert cli.main(["study", str(p), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "methods[0].lr" in err


def test_nested_fields_are_located(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(_study_text("[1e-3]") + "eval:\n  limit: 10\n  tasks_at: sometimes\nanalysis:\n  k: ten\n")
    with pytest.raises(UserError, match=r"s.yaml:10: eval.tasks_at: expected one of 'final', 'all', got 'sometimes'"):
        plan.load(p)
    p.write_text(_study_text("[1e-3]") + "analysis:\n  diversity: {problems: 2.5}\n")
    with pytest.raises(UserError, match=r"s.yaml:9: analysis.diversity.problems: expected an integer, got 2.5"):
        plan.load(p)
    p.write_text(_study_text("[1e-3]") + "train: {optimizer: sgd}\n")
    with pytest.raises(UserError, match=r"s.yaml:8: train.optimizer: expected one of 'adamw', 'lion', got 'sgd'"):
        plan.load(p)


def test_yaml_syntax_errors_name_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodel: m: n\n")
    with pytest.raises(UserError, match=r"bad.yaml:2:9: not valid YAML \(mapping values are not allowed here\)"):
        plan.load(p)


def test_extends_keeps_the_lines_of_each_file(tmp_path):
    (tmp_path / "base.yaml").write_text(_study_text("[1e-3]"))
    (tmp_path / "over.yaml").write_text("extends: base.yaml\nseq_len: long\n")
    with pytest.raises(UserError, match=r"over.yaml:2: seq_len: expected an integer, got 'long'"):
        plan.load(tmp_path / "over.yaml")
    (tmp_path / "over.yaml").write_text("extends: base.yaml\nseq_len: 64\n")
    (tmp_path / "base.yaml").write_text(_study_text('"fast"'))
    with pytest.raises(UserError, match=r"base.yaml:7: methods\[0\].lr: expected a number"):
        plan.load(tmp_path / "over.yaml")


def _wrong(tp):
    """A value of the wrong type for a declared field type."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return "no-such-choice"
    if tp is str or str in args:
        return 12345
    if tp is bool:
        return "yes"
    return {"an": "object"} if (tp in (int, float) or int in args or float in args) else 3.5


def _minimal(cls) -> dict:
    """The required fields of a spec, with valid values."""
    return {config.Experiment: {"name": "e", "regime": "cpt", "domain": "code", "data": "d"},
            config.TrainConfig: {"tokens": 256}, config.DataSpec: {"source": "d"},
            config.Study: {"name": "s", "model": "m", "experiments": [], "methods": []},
            config.RunConfig: {"model": "m", "data": {"source": "d"}, "method": {}, "train": {"tokens": 8}, "out": "o"}}.get(cls, {})


SPECS = [config.DataSpec, config.MethodConfig, config.TrainConfig, config.RunConfig, config.Experiment, config.EvalSpec,
         config.DiversitySpec, config.AnalysisSpec, config.ExecutorSpec, config.Study]
FIELDS = [(cls, f.name) for cls in SPECS for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls, name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_every_field_refuses_a_wrong_type(cls, name):
    """Generated from the dataclasses: a wrong-typed value in any field is a UserError naming the field."""
    assert validate.build(cls, _minimal(cls))  # the minimal mapping is valid
    value = _wrong(validate.hints(cls)[name])
    with pytest.raises(UserError, match=rf"^spec.yaml:3: {name}: expected .*, got {re.escape(repr(value))}$"):
        validate.build(cls, {**_minimal(cls), name: value}, validate.Source("spec.yaml", {(name,): ("spec.yaml", 3)}), ())


# ----------------------------------------------------------------------------- the command line


def _train_args(argv):
    p = cli.build_parser()
    return cli.train_config(p.parse_args(cli._with_config(p, argv)))


def test_train_reads_a_config_file_and_the_command_line_wins(tmp_path):
    f = tmp_path / "train.yaml"
    f.write_text("data: python-code\nout: runs/x\nmethod: lora\nrank: 8\nlr: 2e-4\ncheckpoints: [64, 128]\ntokens: 128\nrslora: true\n")
    cfg = _train_args(["train", "--config", str(f), "--rank", "4"])
    assert (cfg.method.method, cfg.method.rank, cfg.method.rslora, cfg.train.lr) == ("lora", 4, True, 2e-4)
    assert cfg.train.checkpoints == [64.0, 128.0] and cfg.data.source == "python-code" and cfg.out == "runs/x"
    assert _train_args(["train", "--config", str(f), "--no-rslora"]).method.rslora is False
    f.write_text("data: python-code\nout: runs/x\ntokens: 128\nlr: fast\n")
    with pytest.raises(UserError, match=r"train.yaml:4: lr: expected a number, got 'fast'"):
        _train_args(["train", "--config", str(f)])
    f.write_text("data: python-code\nout: runs/x\ntokens: 128\nlearning_rate: 1\n")
    with pytest.raises(UserError, match=r"train.yaml:4: unknown train option 'learning_rate'"):
        _train_args(["train", "--config", str(f)])


def test_choices_and_booleans_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--out", "o", "--data", "d", "--tokens", "8", "--optimizer", "sgd"])
    assert "invalid choice: 'sgd'" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train", "--out", "o", "--data", "d", "--tokens", "8", "--gradient-checkpointing"])
    assert cli.train_config(args).train.gradient_checkpointing is True
    args = cli.build_parser().parse_args(["train", "--out", "o", "--data", "d", "--tokens", "8", "--no-gradient-checkpointing"])
    assert cli.train_config(args).train.gradient_checkpointing is False


def test_eval_defaults_are_the_study_defaults():
    p = cli.build_parser()
    args = p.parse_args(["eval", "--model", "m", "--out", "o"])
    assert (args.seed, args.batch_size) == (config.EvalSpec().seed, config.EvalSpec().batch_size) == (1234, 16)
    assert p.parse_args(["analyze", "--base", "m", "--checkpoint", "c"]).svd == config.AnalysisSpec().svd == "gram"
