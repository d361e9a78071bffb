"""advise's pilots: the first part of each method's run at the budget, trained as a study, with the learning rate
chosen by successive halving.

Every pilot is the budget's own run (same schedule, same checkpoints), paused after its first fraction
(train.run's stop_tokens), so continuing it to the budget (`learnforget study <out>/continue.yaml`) is the run the
forecast is about, and the pilot's tokens are not trained twice.

Learning rates: full fine-tuning tries a bracket around its prior; LoRA tries the same bracket around 10x that
(LoRA Without Regret) on one reference rank, with alpha fixed for every rank (its 1/r scaling, under which the
best learning rate is about independent of rank), and every other rank takes the reference rank's choice. The
bracket trains to a rung (a quarter of the pilot); the lowest held-out target loss there goes on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import yaml

from .. import advice
from ..config import AdviseConfig, EvalSpec, Experiment, ExecutorSpec, ForecastSpec, Study
from ..errors import UserError
from ..forecast import Schedule
from ..study import cache, evaluation, plan, training
from ..train import record


def parse_method(spec: str, alpha: float) -> dict:
    """A --methods item as a study methods entry: full | lora-r<rank>[-attention|-mlp|-all]."""
    s = spec.strip()
    if s == "full":
        return {"method": "full"}
    parts = s.split("-")
    if len(parts) in (2, 3) and parts[0] == "lora" and parts[1][:1] == "r" and parts[1][1:].isdigit() and int(parts[1][1:]) >= 1:
        targets = parts[2] if len(parts) == 3 else "all"
        if targets in ("attention", "mlp", "all"):
            return {"method": "lora", "rank": int(parts[1][1:]), "alpha": alpha, "dropout": 0.0, "targets": targets}
    raise UserError(f"--methods: '{spec}' is not a method; use full or lora-r<rank>[-attention|-mlp|-all], e.g. lora-r16")


def step_tokens(cfg: AdviseConfig) -> int:
    return max(1, cfg.batch_tokens // cfg.seq_len) * cfg.seq_len


def milestones(cfg: AdviseConfig) -> dict:
    """Token counts, whole steps: the rung, the pilot's end, and every checkpoint of the budget's run."""
    st = step_tokens(cfg)
    pilot = advice.pilot_tokens(Schedule(cfg.budget_tokens, st, cfg.warmup), cfg.pilot_fraction)
    steps = pilot // st
    if pilot >= cfg.budget_tokens:
        raise UserError(f"--pilot-fraction {cfg.pilot_fraction}: the pilot ({pilot:,} tokens, at least 4 steps of {st:,}) "
                        f"is not shorter than the budget ({cfg.budget_tokens:,}); raise --budget-tokens or lower the fraction")
    inside = {max(1, round(steps / 2 ** j)) * st for j in range(4)}  # the pilot's end, 1/2, 1/4, 1/8: log-spaced points to fit
    rung = max(1, round(steps / 4)) * st
    later = [pilot * 2 ** k for k in range(1, 20) if pilot * 2 ** k < cfg.budget_tokens]
    cks = sorted({*inside, *later, cfg.budget_tokens})
    return {"step": st, "rung": rung, "pilot": pilot, "checkpoints": cks}


def bracket(prior: float, n: int, factor: float) -> list[float]:
    return [float(f"{prior * factor ** (i - (n - 1) / 2):.3g}") for i in range(n)]


def study_of(cfg: AdviseConfig, lrs: dict[str, list[float]], root: Path) -> Study:
    """The pilot study: one experiment at the budget, one methods entry per method with its learning rates."""
    ms = milestones(cfg)
    exp = Experiment(name=cfg.regime, regime=cfg.regime, domain=cfg.domain or _domain(cfg.data), data=cfg.data,
                     tokens=cfg.budget_tokens, checkpoints=[float(c) for c in ms["checkpoints"]])
    methods = [{**parse_method(k, cfg.alpha), "lr": lrs[k]} for k in cfg.methods]
    return Study(name=root.name, model=cfg.model, experiments=[exp], methods=methods, seeds=list(cfg.seeds), seq_len=cfg.seq_len,
                 train={"batch_tokens": cfg.batch_tokens, "micro_batch": cfg.micro_batch, "warmup": cfg.warmup},
                 eval=EvalSpec(forgetting=[], learning={"code": [], "math": []}, heldout_tokens=cfg.heldout_tokens, general=cfg.general),
                 executor=ExecutorSpec(workers=cfg.workers), forecast=ForecastSpec(cfg.pilot_fraction))


def _domain(data: str) -> str:
    return "math" if any(w in data.lower() for w in ("math", "gsm")) else "code"


def _by_method(cfg: AdviseConfig, runs: list) -> dict[str, list]:
    keys = {json.dumps(parse_method(k, cfg.alpha), sort_keys=True): k for k in cfg.methods}
    out: dict[str, list] = {k: [] for k in cfg.methods}
    for r in runs:
        m = asdict(r.config.method)
        fields = {"method": m["method"]} if m["method"] == "full" else {k: m[k] for k in ("method", "rank", "alpha", "dropout", "targets")}
        out[keys[json.dumps(fields, sort_keys=True)]].append(r)
    return out


def reference_rank(cfg: AdviseConfig) -> str | None:
    """The LoRA method whose bracket decides every rank's learning rate: the median rank."""
    lora = sorted((k for k in cfg.methods if k != "full"), key=lambda k: parse_method(k, cfg.alpha)["rank"])
    return lora[len(lora) // 2] if lora else None


def run(cfg: AdviseConfig, root: Path) -> dict:
    """Train the pilots (the bracket to the rung, the chosen to the pilot's end) and return the final study, per
    method its chosen runs (one per seed, PlannedRun), the brackets tried and the milestones."""
    ms = milestones(cfg)
    ref = reference_rank(cfg)
    priors = {k: cfg.full_lr if k == "full" else cfg.full_lr * cfg.lora_lr_ratio for k in cfg.methods}
    tried = {k: bracket(priors[k], cfg.bracket, cfg.bracket_factor) for k in ("full", ref) if k in cfg.methods}
    study = study_of(cfg, {k: tried.get(k, [priors[k]]) for k in cfg.methods}, root)
    runs = plan.expand(study, root)
    evaluation.base_heldout(study, root, runs)
    groups = _by_method(cfg, runs)
    rung_runs = [r for k in tried for r in groups[k]]
    print(f"[advise] learning-rate bracket: {', '.join(f'{k} {v}' for k, v in tried.items())}, to {ms['rung']:,} tokens", flush=True)
    training.train_all(study, rung_runs, stop_tokens=ms["rung"])
    brackets, chosen_lr = {}, {}
    for k in tried:
        rows = [{"lr": lr, "rung_tokens": ms["rung"],
                 "rung_loss": _mean_loss([r for r in groups[k] if r.config.train.lr == lr], ms["rung"])} for lr in tried[k]]
        best = min(rows, key=lambda x: x["rung_loss"])
        for x in rows:
            x["kept"] = x is best
        if len(rows) > 1 and best in (rows[0], rows[-1]):  # the optimum was not bracketed: say so, where it is read
            best["note"] = "kept, at the bracket's edge: a learning rate beyond it may be better"
        brackets[k], chosen_lr[k] = rows, best["lr"]
    for k in cfg.methods:
        if k not in chosen_lr:
            chosen_lr[k] = chosen_lr.get(ref, priors[k])
            brackets[k] = [{"lr": chosen_lr[k], "rung_tokens": None, "rung_loss": None, "kept": True,
                            "note": f"from {ref}'s bracket (alpha {cfg.alpha:g} for every rank: the best lr is about rank-independent)"}]
    final = study_of(cfg, {k: [chosen_lr[k]] for k in cfg.methods}, root)
    final_runs = plan.expand(final, root)
    print(f"[advise] chosen: {', '.join(f'{k} lr {v:g}' for k, v in chosen_lr.items())}; pilots to {ms['pilot']:,} tokens", flush=True)
    # longest first (the ranks that take the reference's rate start from 0, the bracket's winners from the rung), so
    # that parallel workers finish together
    order = sorted(final_runs, key=lambda r: -(ms["pilot"] - ((record.read_run(Path(r.config.out)) or {}).get("paused_at") or {}).get("tokens", 0)))
    training.train_all(final, order, stop_tokens=ms["pilot"])
    write_continue(final, root)
    return {"study": final, "runs": _by_method(cfg, final_runs), "brackets": brackets, "milestones": ms}


def _mean_loss(runs: list, tokens: int) -> float:
    vals = []
    for r in runs:
        row = next((e for e in cache.metric_rows(Path(r.config.out)) if e["tokens"] == tokens), None)
        if row is None:
            raise UserError(f"{r.config.out}: no held-out loss at {tokens:,} tokens (the pilot did not reach its rung)")
        vals.append(row["eval"]["target"]["loss"])
    return float(sum(vals) / len(vals))


def write_continue(study: Study, root: Path) -> Path:
    """<root>/continue.yaml: the chosen runs as a study, which resumes the pilots to the budget."""
    d = asdict(study)
    d.pop("analysis")
    d["experiments"] = [{k: v for k, v in e.items() if v is not None} for e in d["experiments"]]
    path = root / "continue.yaml"
    path.write_text(f"# learnforget study {path} --out {root.parent}\n" + yaml.safe_dump(d, sort_keys=False))
    return path


def run_row(r, base_general: str) -> dict:
    """A pilot (or trained) run as a results.json run row: what advice.py reads."""
    rec = record.read_run(Path(r.config.out)) or {}
    t = r.config.train
    rows = cache.metric_rows(Path(r.config.out))
    cks = [{"tokens": e["tokens"], "heldout": {("general" if k == base_general else k): v for k, v in e["eval"].items()}}
           for e in rows if e["step"] > 0]
    return {"id": r.id, "label": plan.label(r.config), "lr": t.lr, "seed": t.seed, "family": r.family,
            "schedule": {"budget_tokens": t.tokens, "step_tokens": max(1, t.batch_tokens // r.config.data.seq_len) * r.config.data.seq_len,
                         "warmup": t.warmup},
            "trainable_params": (rec.get("parameters") or {}).get("trainable"), "peak_rss_mb": rec.get("peak_rss_mb"),
            "tokens_per_s": rec.get("tokens_per_s_this_session"), "wall_seconds": rec.get("wall_seconds"),
            "train_seconds": rec.get("train_seconds_this_session"), "status": rec.get("status"), "checkpoints": cks}


def base_row(study: Study, root: Path, r) -> dict:
    """The base model's held-out entries (target, general) on the runs' documents."""
    got = cache.read(cache.heldout_path(root, r)) or {}
    if "target" not in got:
        raise UserError(f"{cache.heldout_path(root, r)}: the base model's held-out scores are missing")
    return {("general" if k == study.eval.general else k): v for k, v in got.items()}
