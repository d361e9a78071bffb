"""A study: a YAML grid of experiments x methods x learning rates x seeds, expanded to runs, trained,
evaluated, gathered into results.json, and reported.

    learnforget study configs/demo-cpu.yaml [--dry-run] [--out runs/studies]

Every stage is cached by the hash of its inputs: a run folder is named by the hash of its resolved
RunConfig (train.run resumes it from its last checkpoint, or skips it when done); an evaluation is
stored under the hash of (checkpoint, evaluation spec). So a re-run does only what changed, an
interrupted study resumes, and adding one rank to the YAML trains just that rank.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .config import DataSpec, MethodConfig, RunConfig, TrainConfig
from .errors import UserError
from .executors import ExecutorSpec
from .study_analysis import AnalysisSpec

FORGETTING_DEFAULT = ["hellaswag", "winogrande", "arc_challenge"]
LEARNING_DEFAULT = {"code": ["humaneval"], "math": ["gsm8k"]}


@dataclass
class Experiment:
    name: str
    regime: str  # cpt | ift
    domain: str  # code | math
    data: str
    tokens: int | None = None
    epochs: float | None = None
    checkpoints: list[float] = field(default_factory=list)
    heldout_fraction: float = 0.05
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    tokens_per_epoch: int | None = None  # for an epoch budget: the dataset's size in tokens, used only by --dry-run

    def __post_init__(self):
        if self.domain not in ("code", "math"):
            raise UserError(f"experiment {self.name}: domain must be code or math, got '{self.domain}'")


@dataclass
class EvalSpec:
    forgetting: list[str] = field(default_factory=lambda: list(FORGETTING_DEFAULT))
    learning: dict = field(default_factory=lambda: dict(LEARNING_DEFAULT))
    limit: int | None = 200  # items per task, a seeded fixed sample shared by every checkpoint
    generation_limit: int | None = 50  # items for generation tasks (gsm8k, humaneval): they cost ~100x more
    heldout_tokens: int = 8192
    general: str = "general-text"  # held-out general text: the continuous forgetting signal
    tasks_at: str = "final"  # final | all: which checkpoints get benchmark tasks (held-out loss: all)
    # all | best_lr: which runs get benchmark tasks. best_lr scores only the learning rate with the lowest
    # final held-out target loss per method (the report's choice when there is no learning task): a sweep's
    # other learning rates keep their held-out losses, and the study saves most of its evaluation time.
    tasks_runs: str = "all"
    seed: int = 1234
    batch_size: int = 16

    def __post_init__(self):
        if self.tasks_at not in ("final", "all"):
            raise UserError(f"eval.tasks_at: final or all, got '{self.tasks_at}'")
        if self.tasks_runs not in ("all", "best_lr"):
            raise UserError(f"eval.tasks_runs: all or best_lr, got '{self.tasks_runs}'")


@dataclass
class Study:
    name: str
    model: str
    experiments: list[Experiment]
    methods: list[dict]  # each a MethodConfig grid (lists expand) plus `lr: [..]` and optional train overrides
    train: dict = field(default_factory=dict)  # TrainConfig defaults for every run
    eval: EvalSpec = field(default_factory=EvalSpec)
    seeds: list[int] = field(default_factory=lambda: [0])
    seq_len: int = 512
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)  # resources per run for --executor ray
    analysis: AnalysisSpec | None = None  # optional: spectrum, intruders, diversity (study_analysis.py)


def _build(kind, value: dict, where: str):
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        return kind(**value)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A study file's mapping, with `extends: other.yaml` (relative to this file) merged under it: mappings
    merge key by key, anything else is replaced. So `extends: demo-cpu.yaml` plus one `analysis:` key is the
    demo study with more analysis, in the demo's own folder (same name, same runs: nothing is retrained)."""
    if not path.exists():
        raise UserError(f"{path}: no such study file" + (f" (extended by {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise UserError(f"{path}: extends itself (through {' -> '.join(map(str, seen))})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a study file is a mapping with name, model, experiments, methods")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise UserError(f"{path}: extends: the path of another study file, got {parent!r}")
    return _merge(_read(path.parent / parent, seen + (path.resolve(),)), raw)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | Path) -> Study:
    path = Path(path)
    raw = _read(path)
    for key in ("name", "model", "experiments", "methods"):
        if key not in raw:
            raise UserError(f"{path}: missing field '{key}'")
    raw = dict(raw)
    raw["experiments"] = [_build(Experiment, e, f"{path}: experiments[{i}]") for i, e in enumerate(raw["experiments"])]
    raw["eval"] = _build(EvalSpec, raw.get("eval", {}), f"{path}: eval")
    raw["executor"] = _build(ExecutorSpec, raw.get("executor", {}), f"{path}: executor")
    if raw.get("analysis") is not None:
        raw["analysis"] = _build(AnalysisSpec, raw["analysis"], f"{path}: analysis")
    study = _build(Study, raw, str(path))
    for i, m in enumerate(study.methods):
        if "lr" not in m:
            raise UserError(f"{path}: methods[{i}]: missing field 'lr' (a list of learning rates)")
    return study


def _grid(entry: dict) -> list[tuple[dict, dict]]:
    """Expand list-valued fields of one methods entry into (method fields, train overrides) pairs."""
    method_keys = {f.name for f in fields(MethodConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = set(entry) - method_keys - train_keys - {"label"}
    if unknown:
        raise UserError(f"methods: unknown field(s) {sorted(unknown)}")
    lists = {k: v if isinstance(v, list) and k not in ("checkpoints", "extra_eval", "betas") else [v] for k, v in entry.items() if k != "label"}
    out = []
    for combo in itertools.product(*lists.values()):
        values = dict(zip(lists, combo))
        out.append(({k: v for k, v in values.items() if k in method_keys}, {k: v for k, v in values.items() if k in train_keys}))
    return out


@dataclass
class PlannedRun:
    experiment: Experiment
    config: RunConfig
    family: str  # full | lora | full-regularized
    id: str


def run_id(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d.pop("out")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def expand(study: Study, root: Path) -> list[PlannedRun]:
    runs = []
    for exp, entry, seed in itertools.product(study.experiments, study.methods, study.seeds):
        for method_fields, train_over in _grid(entry):
            method = MethodConfig(**method_fields)
            train_fields = {**study.train, **train_over, "seed": seed, "tokens": exp.tokens, "epochs": exp.epochs,
                            "checkpoints": list(exp.checkpoints), "eval_tokens": study.eval.heldout_tokens,
                            "extra_eval": [study.eval.general] if study.eval.general else [],
                            "skip_base_eval": True}  # the base model's held-out losses: scored once per experiment
            if "betas" in train_fields:  # YAML gives a list; the config holds a tuple
                train_fields["betas"] = tuple(train_fields["betas"])
            train = TrainConfig(**train_fields)
            data = DataSpec(source=exp.data, regime=exp.regime, seq_len=study.seq_len, heldout_fraction=exp.heldout_fraction,
                            text_field=exp.text_field, prompt_field=exp.prompt_field, response_field=exp.response_field)
            cfg = RunConfig(model=study.model, data=data, method=method, train=train, out="")
            rid = run_id(cfg)
            wd = f"-wd{train.weight_decay:g}" if train.weight_decay else ""  # weight-decay baselines: tell them apart by name
            cfg.out = str(root / "runs" / f"{exp.name}-{method.label()}{wd}-lr{train.lr:g}-s{seed}-{rid}")
            regularized = method.method == "full" and (train.weight_decay > 0 or method.attention_dropout > 0)
            runs.append(PlannedRun(exp, cfg, "full-regularized" if regularized else method.method, rid))
    return runs


# ----------------------------------------------------------------------------- cost estimate (dry run)


def flops_per_token(params_total: int, params_trainable: int, full: bool, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for full fine-tuning; LoRA skips frozen weight gradients (4N + 6N_lora);
    plus attention scores (12 * layers * d * seq / 2 with causal masking, forward + backward)."""
    dense = 6 * params_total if full else 4 * params_total + 6 * params_trainable
    return dense + 6 * n_layers * d_model * seq_len


def measure_matmul_flops(seconds: float = 1.0) -> float:
    """This machine's fp32 dense matmul rate (FLOP/s), measured now: the yardstick for time estimates."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.time() - t0)


def dry_run(study: Study, runs: list[PlannedRun]) -> list[dict]:
    """Per run: tokens, FLOPs, time and peak memory estimated for this hardware, without loading data."""
    from . import models

    model_cfg = models.architecture(study.model)  # no weights; offline, a built-in table for the configs' models
    L, d, ff, V = model_cfg.num_hidden_layers, model_cfg.hidden_size, model_cfg.intermediate_size, model_cfg.vocab_size
    kv = d * getattr(model_cfg, "num_key_value_heads", model_cfg.num_attention_heads) // model_cfg.num_attention_heads
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d), "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}
    n_total = L * sum(a * b for a, b in shapes.values()) + V * d * (1 if getattr(model_cfg, "tie_word_embeddings", True) else 2)
    rate = measure_matmul_flops()
    rows = []
    for r in runs:
        m, t = r.config.method, r.config.train
        n_lora = 0 if m.method == "full" else L * sum(m.rank * (a + b) for name, (a, b) in shapes.items() if name in m.target_modules())
        tokens = t.tokens if t.tokens is not None else None
        if tokens is None and r.experiment.tokens_per_epoch:  # an epoch budget: tokens only from the YAML's estimate
            tokens = int(t.epochs * r.experiment.tokens_per_epoch)
        fpt = flops_per_token(n_total, n_lora or n_total, m.method == "full", L, d, study.seq_len)
        flops = fpt * tokens if tokens else None
        # held-out scoring at every checkpoint (a forward pass, 2N per token): in the demo as much as the training
        sets = (1 + len(t.extra_eval)) if t.eval_tokens else 0
        eval_flops = 2 * n_total * t.eval_tokens * sets * len(t.checkpoints)
        # memory: fp32 weights (+ grads + 2 Adam moments for what trains) + logits of one micro-batch
        trainable = n_total if m.method == "full" else n_lora
        mem = 4 * (n_total + 3 * trainable) + 4 * 3 * t.micro_batch * study.seq_len * V + 4 * 30 * t.micro_batch * study.seq_len * d * L
        rows.append({"run": Path(r.config.out).name, "tokens": tokens, "epochs": t.epochs, "flops": flops,
                     "est_seconds": (flops + eval_flops) / (0.8 * rate) if flops else None, "est_peak_gb": mem / 1e9})
    return rows


# ----------------------------------------------------------------------------- execution


def _status(out: str) -> str:
    p = Path(out) / "run.json"
    return json.loads(p.read_text()).get("status", "running") if p.exists() else "new"


def execute(study: Study, root: Path, runs: list[PlannedRun]) -> None:
    """Train what is not done, then evaluate every checkpoint (cached), one run after another."""
    from . import train

    pending = [r for r in runs if _status(r.config.out) != "done"]
    est = {r.id: row["est_seconds"] or 0.0 for r, row in zip(pending, dry_run(study, pending))} if pending else {}
    t0, spent, spent_est = time.time(), 0.0, 0.0
    for i, r in enumerate(runs, 1):
        done = r not in pending
        # ETA: the dry-run estimate of what is left, scaled by how the finished runs compared to theirs
        left = sum(est[p.id] for p in pending[pending.index(r):]) if not done else 0.0
        eta = left * (spent / spent_est if spent_est else 1.0)
        print(f"[study] run {i}/{len(runs)} {Path(r.config.out).name}: {'cached' if done else 'training'}"
              f" (study elapsed {(time.time() - t0) / 60:.1f} min" + (f", training left ~{eta / 60:.0f} min)" if not done else ")"), flush=True)
        if not done:
            tic = time.time()
            train.run(r.config)
            spent, spent_est = spent + time.time() - tic, spent_est + est[r.id]
    from . import study_eval

    study_eval.evaluate_all(study, root, runs)


def gather(study: Study, root: Path, runs: list[PlannedRun]) -> dict:
    """results.json (schema version 1, see report.py) from run folders and cached evaluations."""
    from . import study_analysis, study_eval

    results = study_eval.gather(study, root, runs)
    analysis = study_analysis.gather(study, root, runs)  # cached spectrum / intruders / diversity rows
    if analysis:
        results["analysis"] = analysis
    return results


def main(args) -> int:
    study = load(args.config)
    root = Path(args.out) / study.name
    runs = expand(study, root)
    if args.dry_run:
        rows = dry_run(study, runs)
        print(f"{'run':<60} {'tokens':>9} {'TFLOP':>8} {'est. min':>9} {'est. GB':>8}")
        for row in rows:
            tf = f"{row['flops'] / 1e12:8.1f}" if row["flops"] else f"{'-':>8}"
            mins = f"{row['est_seconds'] / 60:9.1f}" if row["est_seconds"] else f"{'-':>9}"
            print(f"{row['run']:<60} {row['tokens'] or row['epochs']:>9} {tf} {mins} {row['est_peak_gb']:8.1f}")
        total = sum(r["est_seconds"] or 0 for r in rows)
        print(f"{len(rows)} runs; estimated training time {total / 3600:.2f} h on this machine (with the held-out "
              f"losses at each checkpoint; benchmark tasks and analysis extra); "
              f"{sum(r['flops'] or 0 for r in rows) / 1e15:.3g} PFLOP in all")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump(_read(Path(args.config)), sort_keys=False))  # `extends` resolved
    if getattr(args, "executor", "local") == "ray":  # pending runs train as Ray tasks; execute() then finds them done
        from . import executors

        executors.train_ray(runs, study.executor, getattr(args, "ray_address", None))
    execute(study, root, runs)
    from . import study_analysis

    study_analysis.run(study, root, runs)  # the optional `analysis:` block (cached like the evaluations)
    results = gather(study, root, runs)
    tmp = root / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(root / "results.json")
    from . import report

    html = report.write(root)
    print(f"[study] report: {html}")
    return 0
