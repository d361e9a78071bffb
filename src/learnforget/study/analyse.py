"""The study's analysis stage: spectra and intruder dimensions of the weight updates, and the diversity
of sampled solutions, cached under <study>/analysis/ and gathered into results.json's `analysis`.

    analysis:
      spectrum: true          # rank@90% of ΔW per module, every run's final checkpoint (LoRA: ΔW = B·A·scale)
      intruders: true         # intruder dimensions (arXiv 2410.21228): top-k tuned directions far from all base ones
      diversity:              # costly (sampling + sandbox): base + best-lr full and LoRA runs by default
        task: {code: humaneval, math: gsm8k}   # or one task for every experiment
        problems: 20
        samples: 8
        temperature: 0.8

Each result is a JSON file named by what decides it (cache.py), so a re-run computes only what is
missing, like the evaluations. The rows have the shape the report reads: spectrum {run_id, tokens, module,
module_type, layer, rank90, full_rank}, intruders {run_id, tokens, k, eps, count} (one row per eps, summed
over modules), diversity {run_id ("base" for the base model), tokens, task, n, distinct, distinct_correct,
pass_at_k, items}.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import checkpoint
from ..analysis import diversity as div
from ..config import AnalysisSpec, Study
from . import cache
from .gather import base_results, mark_best, run_row
from .plan import PlannedRun, diversity_task


def _spectrum_rows(deltas: dict, factors: dict, rid: str, tokens: int, method: str) -> list[dict]:
    from ..analysis import spectrum

    rows = spectrum.spectrum(deltas, fraction=cache.FRACTION, base=False, random=False, method=method, factors=factors)
    return [{"run_id": rid, "tokens": tokens, "module": r["module"], "module_type": r["type"], "layer": r["layer"],
             "rank90": r["rank"], "full_rank": r["full_rank"], "delta_fro": r["delta_fro"]} for r in rows]


def _intruder_rows(deltas: dict, rid: str, tokens: int, an: AnalysisSpec, base_U: dict) -> list[dict]:
    from ..analysis import intruders

    missing = {n: d for n, d in deltas.items() if n not in base_U}
    if missing:  # the base's singular vectors: most of the cost, shared by every checkpoint
        base_U.update(intruders.base_vectors(missing))
    res = intruders.intruders(deltas, k=an.k, eps=tuple(an.eps), base_U=base_U)
    return [{"run_id": rid, "tokens": tokens, "k": res["k"], "eps": float(e), "count": res["total"][e],
             "directions": sum(m["k"] for m in res["modules"]), "by_type": {t: c[e] for t, c in res["by_type"].items()}}
            for e in res["total"]]


def _diversity_runs(study: Study, root: Path, runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs whose final checkpoint gets sampled: all, or (best_lr) the full and LoRA runs at their
    best learning rate (gather.best_lr, the rule the report shows)."""
    d = study.analysis.diversity
    if d.runs == "all":
        return [r for r in runs if d.methods is None or r.config.method.label() in d.methods]
    rows = [run_row(study, root, r) for r in runs]
    best = mark_best(rows, base_results(study, root, runs))
    return [r for r, row in zip(runs, rows) if r.id in best and r.family in ("full", "lora")
            and (d.methods is None or row["label"] in d.methods)]


def _todo(study: Study, root: Path, runs: list[PlannedRun]) -> tuple[list, list]:
    """(run, checkpoint) pairs with spectrum or intruders missing; (run id, checkpoint or None for the
    base model, task) triples with diversity missing."""
    an = study.analysis
    todo = [(r, ck) for r in runs for ck in cache.analysis_checkpoints(an, r)
            if (an.spectrum and not cache.spectrum_path(root, an, r.id, ck).exists())
            or (an.intruders and not cache.intruders_path(root, an, r.id, ck).exists())]
    div_todo = []
    if an.diversity is not None:
        d = an.diversity
        chosen = _diversity_runs(study, root, runs)
        tasks = sorted({t for r in chosen if (t := diversity_task(d, r.experiment.domain))})
        if d.base:
            div_todo += [("base", None, t) for t in tasks]
        for r in chosen:
            cks = checkpoint.complete(Path(r.config.out))
            task = diversity_task(d, r.experiment.domain)
            if cks and task:
                div_todo.append((r.id, cks[-1], task))
        div_todo = [t for t in div_todo if not cache.diversity_path(root, d, t[2], t[0], t[1]).exists()]
    return todo, div_todo


def _weights(study: Study, root: Path, base, todo: list) -> None:
    import torch

    from ..analysis import spectrum

    an, base_U = study.analysis, {}
    for i, (r, ck) in enumerate(todo, 1):
        t0 = time.time()
        tuned = checkpoint.load(base, ck, merge=False)
        deltas = spectrum.weight_deltas(base, tuned)
        tokens = cache.tokens(ck)
        bad = [n for n, (_, d) in deltas.items() if not bool(torch.isfinite(d).all())]
        if bad:  # a diverged run: no spectrum exists; say so and go on with the others (nothing is cached)
            print(f"[study] analysis: skipping {Path(r.config.out).name}/{ck.name}: its update has NaN/inf in "
                  f"{len(bad)} matrices (e.g. {bad[0]}); the run diverged", flush=True)
            continue
        if an.spectrum:  # a LoRA update's singular values come from its factors: exact, and r x r
            factors = spectrum.lora_factors(tuned)
            cache.cached(cache.spectrum_path(root, an, r.id, ck), lambda: {"rows": _spectrum_rows(deltas, factors, r.id, tokens, an.svd)})
        if an.intruders:
            cache.cached(cache.intruders_path(root, an, r.id, ck), lambda: {"rows": _intruder_rows(deltas, r.id, tokens, an, base_U)})
        print(f"[study] analysis {i}/{len(todo)}: spectrum/intruders of {Path(r.config.out).name}/{ck.name} "
              f"({time.time() - t0:.1f} s)", flush=True)
        del tuned, deltas


def _diversity(study: Study, root: Path, base, tok, div_todo: list) -> None:
    d = study.analysis.diversity
    for i, (rid, ck, task) in enumerate(div_todo, 1):
        t0 = time.time()
        model = base
        if ck is not None:
            model = checkpoint.load(base, ck, merge=True)  # merged: same outputs, faster sampling
        cache.cached(cache.diversity_path(root, d, task, rid, ck),
                     lambda: div.run(model, tok, task, d.problems, d.samples, d.temperature, d.top_p, d.seed, d.batch_size,
                                     d.max_new_tokens))
        print(f"[study] analysis: diversity {i}/{len(div_todo)} ({task}, {'base model' if ck is None else ck.parent.parent.name}) "
              f"{time.time() - t0:.0f} s", flush=True)


def run(study: Study, root: Path, runs: list[PlannedRun]) -> None:
    """Compute what the study's `analysis:` block asks for and is not cached yet. No block: nothing."""
    if study.analysis is None:
        return
    todo, div_todo = _todo(study, root, runs)
    if not (todo or div_todo):
        return
    from .. import models

    base, tok = models.load(study.model)
    _weights(study, root, base, todo)
    _diversity(study, root, base, tok, div_todo)
