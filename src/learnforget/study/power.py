"""Power before compute (--dry-run): the smallest difference each planned signal can detect.

For held-out losses this is measured, in seconds: the base model scores the planned held-out sets per
document, and the spread of its per-document losses gives the standard error of a mean loss. The
figure is for two *unpaired* systems, an upper bound: the study pairs every comparison on the same
documents, which removes the variance the systems share (most of it after short fine-tuning), and the
report then states each row's own detectable difference. For benchmark accuracies it follows from
the item count and the base accuracy (0.5, the worst case, when the base has not been scored yet).
KL drift is zero for the base model: its spread is known only once runs have trained.
"""

from __future__ import annotations

from pathlib import Path

from .. import stats
from ..config import Study
from ..errors import UserError
from . import cache
from .plan import PlannedRun, forgetting_tasks, learning_tasks

MIN_UNITS = 20  # fewer documents (or items) than this make a percentile bootstrap unreliable
CLAIMS_OF = {"target": "a, d, e (learning)", "general": "b, c (forgetting)", "task": "b (forgetting)", "learning": "a, d, e (learning)"}


def _base_heldout(study: Study, root: Path, r: PlannedRun, loaded: dict) -> dict:
    """The base model's per-document held-out scores: from the study's cache, else scored now (no reference kept)."""
    cached = cache.read(cache.heldout_path(root, r))
    if cached is not None:
        return cached
    from .. import heldout, models
    from ..train.heldout import heldout_sets

    if "model" not in loaded:
        loaded["model"] = models.load(study.model)
    model, tok = loaded["model"]
    return {name: heldout.score(model, ids, labels, tok.eos_token_id, r.config.train.eval_batch)
            for name, (ids, labels) in heldout_sets(r.config, tok).items()}


def _row(experiment: str, signal: str, units: int, detectable: float, margin: float, claims: str, how: str) -> dict:
    # a 95% interval's half-width is 1.96/2.8 of the detectable difference: equivalence needs it inside the margin
    decides = "yes" if 1.96 / stats.Z_POWER * detectable < margin else f"only differences above {detectable:.3g}"
    if units < MIN_UNITS:
        decides += f"; only {units} units: too few for a bootstrap, raise the size"
    return {"experiment": experiment, "signal": signal, "units": units, "detectable": detectable, "margin": margin,
            "claims": claims, "decides": decides, "how": how}


def _task_rows(study: Study, root: Path, exp: str, domain: str) -> list[dict]:
    from ..evaluate import tasks as registry

    base = cache.read(cache.eval_path(root, study, "base", None, cache.tasks_for(study, domain))) or {}
    rows = []
    for t, role in [(t, "learning") for t in learning_tasks(study, domain)] + [(t, "task") for t in forgetting_tasks(study)]:
        kind = registry.get(t.split(":")[0]).kind if t.split(":")[0] in registry.names() else "choice"
        n = study.eval.generation_limit if kind == "generate" else study.eval.limit
        if n is None:
            continue
        p = base[t]["value"] if t in base else 0.5
        rows.append(_row(exp, f"{t} accuracy", n, stats.min_detectable(p, n), study.eval.margins["accuracy"], CLAIMS_OF[role],
                         "base accuracy " + (f"{p:.3f}" if t in base else "unknown (0.5 assumed)") + f", {n} items, unpaired"))
    return rows


def power(study: Study, root: Path, runs: list[PlannedRun]) -> list[dict]:
    """One row per (experiment, signal): units, smallest detectable difference (80% power), margin, claims."""
    rows, loaded = [], {}
    for r in cache.first_per_experiment(runs):
        exp = r.experiment.name
        if r.config.train.eval_tokens:
            for name, res in _base_heldout(study, root, r, loaded).items():
                u = res["units"]
                sig = "target" if name in ("target", "select") else "general"
                what = "selection (lr choice only)" if name == "select" else sig
                rows.append(_row(exp, f"held-out {what} loss", len(u["tokens"]), stats.loss_detectable(u["loss"], u["tokens"]),
                                 study.eval.margins["loss"], "learning rates" if name == "select" else CLAIMS_OF[sig],
                                 f"{sum(u['tokens']):,} tokens, base per-document spread, unpaired"))
        rows += _task_rows(study, root, exp, r.experiment.domain)
    return rows


def print_power(study: Study, root: Path, runs: list[PlannedRun]) -> None:
    try:
        rows = power(study, root, runs)
    except (UserError, OSError) as e:  # e.g. a hub model offline: the cost plan stands without it
        print(f"power: not measured here ({e})")
        return
    print(f"\nSmallest difference each signal can detect (95% test, 80% power; unpaired, an upper bound: the study pairs "
          f"every comparison on the same documents or items)\n{'experiment':<14} {'signal':<28} {'units':>6} {'detectable':>11} "
          f"{'margin':>8}  {'claims':<20} decides within the margin?")
    for row in rows:
        print(f"{row['experiment']:<14} {row['signal']:<28} {row['units']:>6} {row['detectable']:>11.4f} {row['margin']:>8.4f}  "
              f"{row['claims']:<20} {row['decides']}  ({row['how']})")
    print("KL drift from the base: the base model's own KL is 0, so its spread is known only after training (the report "
          "gives each comparison's interval and detectable difference).")


def seed_rows(study: Study, root: Path) -> list[dict]:
    """From this study's last results.json (if any): per experiment and paired signal, the seed-to-seed SD of the paired
    difference full - LoRA at the final checkpoint, the difference `seeds` can detect (t with S - 1 degrees of freedom,
    80% power) and the seeds needed to detect one of the margin's size."""
    import json

    import numpy as np
    from scipy import stats as st

    path = root / "results.json"
    if not path.exists():
        return []
    runs = [r for r in json.loads(path.read_text())["runs"] if r.get("best_lr") and not r.get("failed")]
    rows = []
    for exp in sorted({r["experiment"] for r in runs}):
        mine = [r for r in runs if r["experiment"] == exp]
        by = {fam: {r["seed"]: r["checkpoints"][-1]["heldout"] for r in mine if r["family"] == fam and r["label"] == lab}
              for fam, lab in {(r["family"], r["label"]) for r in mine} if fam in ("full", "lora")}
        if set(by) != {"full", "lora"}:
            continue
        shared = sorted(set(by["full"]) & set(by["lora"]))
        if len(shared) < 2:
            continue
        for name, key, margin in (("held-out target loss", ("target", "loss"), "loss"), ("held-out general loss", ("general", "loss"), "loss"),
                                  ("KL drift, general text", ("general", "kl"), "kl")):
            d = [by["full"][s][key[0]].get(key[1], np.nan) - by["lora"][s][key[0]].get(key[1], np.nan) for s in shared]
            sd = float(np.nanstd(d, ddof=1))
            S = len(study.seeds)
            detect = lambda n: (st.t.ppf(0.975, n - 1) + 0.84) * sd / np.sqrt(n)  # noqa: E731
            need = next((n for n in range(2, 101) if detect(n) <= study.eval.margins[margin]), None)
            rows.append({"experiment": exp, "signal": name, "seeds_measured": len(shared), "seed_sd": sd,
                         "detectable": float(detect(S)) if S > 1 else None, "margin": study.eval.margins[margin], "seeds_needed": need})
    return rows


def print_seeds(study: Study, root: Path) -> None:
    S = len(study.seeds)
    print(f"\nSeeds: {S} per method at its chosen learning rate ({', '.join(map(str, study.seeds))})"
          + (f", learning rates searched on seed {study.search.seed}" if study.search else "")
          + (f"; a paired difference needs to exceed t({S - 1}) = {__import__('scipy').stats.t.ppf(0.975, S - 1):.2f} seed standard "
             f"errors to be decided" if S > 1 else "; one seed: every row is 'one run', not a verdict about the methods (3 or more needed)"))
    rows = seed_rows(study, root)
    if not rows:
        print("  the seed-to-seed spread of each signal is known once runs have trained: run the study, then --dry-run again "
              "to see the seeds it needs")
        return
    print(f"  from this study's last results ({rows[0]['seeds_measured']} seeds): {'signal':<24} {'seed SD':>9} {'detectable':>11} "
          f"{'margin':>8}  seeds to detect the margin")
    for r in rows:
        det = "–" if r["detectable"] is None else f"{r['detectable']:.4f}"
        print(f"  {r['experiment']:<14} {r['signal']:<24} {r['seed_sd']:>9.4f} {det:>11} {r['margin']:>8.4f}  "
              f"{r['seeds_needed'] if r['seeds_needed'] else 'more than 100'}")
