"""results.json (schema version 2, written by study/gather.py): validation, and the typed view the report uses.

{"version": 2,
 "study": {name, model, model_note, created, hardware, config},
 "tasks": {"learning": {"code": task, "math": task}, "paper": [task, ...]}   (task roles, from the task registry)
 "margins": {"loss": nats/token, "kl": nats/token, "accuracy": fraction}     (equivalence margins)
 "base": {"tasks": {task: TaskResult}, "heldout": {"general" | "<regime>-<domain>": HeldOut}},
 "runs": [{id, label, family (full | lora | full-regularized), regime (cpt | ift), domain (code | math), lr, rank,
           targets, seed, best_lr, trainable_params, total_params, peak_rss_mb, tokens_per_s,
           [alpha, failed (why, or null), best_lr_edge (low | high | null: the best lr at the edge of its grid)],
           checkpoints: [{tokens, budget, flops, heldout: {target: HeldOut, general: HeldOut}, tasks: {task: TaskResult}}]}],
 "analysis": {spectrum: [...], intruders: [...], diversity: [...]}   (optional; study/analyse.py)}
TaskResult = {metric, value, stderr, n, chance, items: one score per item, in an order shared by every system}.
HeldOut = {loss, tokens[, kl][, entropy], units: {loss: [sum per unit], tokens: [count per unit][, kl, entropy: [sum per
unit]]}}: units are held-out documents (one per row they span), in an order shared by the base model and every checkpoint
of the experiment; kl is KL(base || checkpoint) per token, entropy the model's next-token entropy per token. A missing base heldout entry drops only a reference line.
analysis rows: spectrum {run_id, tokens, module_type, layer, rank90, full_rank}; intruders {run_id, tokens, k, eps,
count[, directions]}; diversity {run_id ("base"), tokens, task, n, distinct, distinct_correct, pass_at_k[, items]}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DOMAINS
from ..errors import UserError
from ..stats import Units

VERSION = 2
FAMILY_ORDER = {"full": 0, "full-regularized": 1, "lora": 2}


def _need(obj, keys, where: str) -> None:
    if not isinstance(obj, dict):
        raise UserError(f"results.json: '{where or 'top level'}' must be a mapping, got {type(obj).__name__}")
    for k in keys:
        if k not in obj:
            raise UserError(f"results.json: missing field '{where + '.' if where else ''}{k}'")


def _task(tr, where: str, n_base: int | None = None) -> None:
    _need(tr, ("metric", "value", "stderr", "n", "chance", "items"), where)
    if len(tr["items"]) != tr["n"]:
        raise UserError(f"results.json: '{where}.items' has {len(tr['items'])} scores but n = {tr['n']}")
    if n_base is not None and tr["n"] != n_base:
        raise UserError(f"results.json: '{where}' has {tr['n']} items but the base model has {n_base}: items must be shared")


def _heldout(h, where: str, n_units: int | None = None) -> int:
    _need(h, ("loss", "tokens", "units"), where)
    _need(h["units"], ("loss", "tokens"), f"{where}.units")
    n = len(h["units"]["tokens"])
    for k in ("loss", "kl", "entropy"):
        if k in h["units"] and len(h["units"][k]) != n:
            raise UserError(f"results.json: '{where}.units.{k}' has {len(h['units'][k])} values but {n} units")
    if n_units is not None and n != n_units:
        raise UserError(f"results.json: '{where}' has {n} units but the base model has {n_units}: units must be shared")
    return n


def _one_of(value, allowed, where: str) -> None:
    if value not in allowed:
        raise UserError(f"results.json: '{where}' must be one of {list(allowed)}, got {value!r}")


def _run(r: dict, w: str, base_tasks: dict, base_units: dict) -> None:
    _need(r, ("id", "label", "family", "regime", "domain", "lr", "rank", "targets", "seed", "best_lr", "trainable_params",
              "total_params", "peak_rss_mb", "tokens_per_s", "checkpoints"), w)
    _one_of(r["family"], FAMILY_ORDER, f"{w}.family")
    _one_of(r["regime"], ("cpt", "ift"), f"{w}.regime")
    _one_of(r["domain"], DOMAINS, f"{w}.domain")
    if not r["checkpoints"]:
        raise UserError(f"results.json: '{w}.checkpoints' is empty")
    for j, c in enumerate(r["checkpoints"]):
        wc = f"{w}.checkpoints[{j}]"
        _need(c, ("tokens", "budget", "flops", "heldout", "tasks"), wc)
        _need(c["heldout"], ("target", "general"), f"{wc}.heldout")
        for k, ref in (("target", f"{r['regime']}-{r['domain']}"), ("general", "general")):
            _heldout(c["heldout"][k], f"{wc}.heldout.{k}", base_units.get(ref))
        for t, tr in c["tasks"].items():
            _task(tr, f"{wc}.tasks.{t}", base_tasks[t]["n"] if t in base_tasks else None)


def validate(res: dict) -> dict:
    """Check every field the report reads; raise UserError naming the first missing or wrong one."""
    _need(res, ("version", "study", "tasks", "base", "runs"), "")
    if res["version"] != VERSION:
        raise UserError(f"results.json: 'version' is {res['version']!r}; this report reads version {VERSION} "
                        f"(re-run the study to regather it)")
    _need(res["study"], ("name", "model", "model_note", "created", "hardware", "config"), "study")
    _need(res["tasks"], ("learning", "paper"), "tasks")
    _need(res["base"], ("tasks", "heldout"), "base")
    base = res["base"]["tasks"]
    for t, tr in base.items():
        _task(tr, f"base.tasks.{t}")
    units = {k: _heldout(h, f"base.heldout.{k}") for k, h in res["base"]["heldout"].items()}
    if not isinstance(res["runs"], list) or not res["runs"]:
        raise UserError("results.json: 'runs' must be a non-empty list")
    for i, r in enumerate(res["runs"]):
        _run(r, f"runs[{i}]", base, units)
    need = {"spectrum": ("run_id", "tokens", "module_type", "layer", "rank90", "full_rank"),
            "intruders": ("run_id", "tokens", "k", "eps", "count"),
            "diversity": ("run_id", "tokens", "task", "n", "distinct", "distinct_correct", "pass_at_k")}
    for key, keys in need.items():
        for i, row in enumerate((res.get("analysis") or {}).get(key, [])):
            _need(row, keys, f"analysis.{key}[{i}]")
    return res


def load(study_dir: Path) -> dict:
    p = Path(study_dir) / "results.json"
    if not p.exists():
        raise UserError(f"{p}: no results.json (run `learnforget study <config>` first)")
    try:
        return validate(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------- the typed view

# Signals: "metric" (the learning task), "target" (held-out target loss), "signal" (forgetting tasks above chance),
# "paper" (the paper's three tasks), "general" (held-out general-text loss), "kl_general" / "kl_target" (KL drift),
# "entropy_target" (next-token entropy on target text: higher is more diverse, the "better" of claim g).
HIGHER_BETTER = {"metric": True, "signal": True, "paper": True, "target": False, "general": False,
                 "kl_general": False, "kl_target": False, "entropy_target": True}
MARGIN_OF = {"metric": "accuracy", "signal": "accuracy", "paper": "accuracy", "target": "loss", "general": "loss",
             "kl_general": "kl", "kl_target": "kl", "entropy_target": "loss"}


@dataclass
class Point:
    """One checkpoint of a series (seeds stacked), or the base model (tokens 0)."""

    tokens: int
    flops: float
    tasks: dict[str, Units]  # per benchmark task: item scores
    heldout: dict[str, Units]  # "target", "general", "kl_*", "entropy_*": per-unit sums and token counts


@dataclass
class Series:
    """One (experiment, method label, learning rate): its checkpoints, seeds averaged unit by unit."""

    group: str  # "<regime>/<domain>"
    domain: str
    label: str
    lr: float
    family: str
    rank: int | None
    trainable_params: int
    total_params: int
    peak_rss_mb: float
    seeds: list[int]
    run_ids: list[str]
    best: bool
    points: list[Point] = field(default_factory=list)
    learned: bool = True  # final target loss below the base model's (set by claims.findings)
    targets: str | None = None  # LoRA: attention | mlp | all
    alpha: float | None = None  # LoRA alpha (absent in results.json: 2 * rank)
    failed: str | None = None  # why the run failed (study.gather.failure): kept out of every verdict
    edge: str | None = None  # best lr at the low / high edge of its grid: the optimum was not bracketed
    role: str = "grid"  # grid | search (an lr grid on the search seed) | verdict (the chosen lr, every seed)

    @property
    def who(self) -> str:
        return f"{self.label} (lr {self.lr:g})"


def _heldout_units(key: str, hs: list[dict], system: str, seeds: tuple) -> dict[str, Units]:
    """Units of one held-out set for the runs of one series (one row of sums per seed)."""
    counts = np.asarray(hs[0]["units"]["tokens"], float)
    out = {key: Units.of(key, [h["units"]["loss"] for h in hs], counts, system, seeds)}
    for k in ("kl", "entropy"):
        if all(k in h["units"] for h in hs):
            out[f"{k}_{key}"] = Units.of(f"{k}_{key}", [h["units"][k] for h in hs], counts, system, seeds)
    return out


def _point(tokens: int, flops: float, cks: list[dict], group: str, system: str, seeds: tuple) -> Point:
    """One checkpoint of a series from its runs' checkpoints `cks`, in the order of `seeds` (every system's rows in
    seed order: a seed's row pairs with the same seed's row of every other system)."""
    names = [t for t in cks[0]["tasks"] if all(t in c["tasks"] for c in cks)]
    tasks = {t: Units.of(t, [c["tasks"][t]["items"] for c in cks], system=system, seeds=seeds) for t in names}
    held = {**_heldout_units("target", [c["heldout"]["target"] for c in cks], system, seeds),
            **_heldout_units("general", [c["heldout"]["general"] for c in cks], system, seeds)}
    if all("select" in c["heldout"] for c in cks):
        held.update(_heldout_units("select", [c["heldout"]["select"] for c in cks], system, seeds))
    held = {k: Units(_unit_set(group, k), u.scores, u.counts, system, seeds) for k, u in held.items()}
    return Point(tokens, flops, tasks, held)


def base_point(res: dict, group: str) -> Point:
    """The base model as the tokens-0 point of an experiment: its tasks, held-out losses, and zero KL."""
    b = res["base"]
    tasks = {t: Units.of(t, tr["items"], system="base") for t, tr in b["tasks"].items()}
    held = {}
    for key, ref in (("target", group.replace("/", "-")), ("general", "general"), ("select", group.replace("/", "-") + ":select")):
        h = b["heldout"].get(ref)
        if h:
            counts = np.asarray(h["units"]["tokens"], float)
            held[key] = Units.of(_unit_set(group, key), h["units"]["loss"], counts, "base")
            held["kl_" + key] = Units.of(_unit_set(group, "kl_" + key), np.zeros(len(counts)), counts, "base")
            if "entropy" in h["units"]:
                held["entropy_" + key] = Units.of(_unit_set(group, "entropy_" + key), h["units"]["entropy"], counts, "base")
    return Point(0, 0.0, tasks, held)


def _unit_set(group: str, k: str) -> str:
    """A held-out unit set's name (its bootstrap indices): per experiment for the target split (its documents), shared
    for general text."""
    return f"{group}:{k}" if "target" in k or "select" in k else k


def series(res: dict) -> list[Series]:
    """One series per (regime, domain, label, lr, role), checkpoints by tokens, runs in seed order."""
    groups: dict[tuple, list] = {}
    for r in res["runs"]:
        groups.setdefault((r["regime"], r["domain"], r["label"], float(r["lr"]), r.get("role", "grid")), []).append(r)
    out = []
    for (regime, domain, label, lr, role), runs in groups.items():
        group, system = f"{regime}/{domain}", f"{regime}/{domain}|{label}|{lr:g}|{role}"
        runs = sorted(runs, key=lambda r: r["seed"])
        seeds = tuple(r["seed"] for r in runs)
        by_tok: dict[int, list] = {}
        for r in runs:
            for c in r["checkpoints"]:
                by_tok.setdefault(int(c["tokens"]), []).append(c)
        r0 = runs[0]
        s = Series(group, domain, label, lr, r0["family"], r0["rank"], r0["trainable_params"], r0["total_params"],
                   max(r["peak_rss_mb"] or 0.0 for r in runs), sorted(r["seed"] for r in runs), [r["id"] for r in runs],
                   all(r["best_lr"] for r in runs))
        s.targets, s.alpha = r0.get("targets"), r0.get("alpha") or (2.0 * r0["rank"] if r0["rank"] else None)
        s.failed = next((r["failed"] for r in runs if r.get("failed")), None)
        s.edge, s.role = r0.get("best_lr_edge"), role
        s.points = [_point(tok, float(np.mean([c["flops"] for c in cs])), cs, group, system, seeds)
                    for tok, cs in sorted(by_tok.items()) if len(cs) == len(runs)]  # a checkpoint every seed has
        out.append(s)
    return sorted(out, key=lambda s: (s.group, FAMILY_ORDER[s.family], s.label, s.lr))
