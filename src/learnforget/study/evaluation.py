"""The study's evaluation stages, cached under <study>/evals/: the base model on the held-out sets
(before training), and benchmark tasks per checkpoint (after).

Held-out losses and KL drift (target domain and general text) come from the training runs, which score
them per document at every checkpoint against the base model's top-k distributions; those, and the base
model's own per-document losses, are made here once per experiment before any run trains. Benchmark
tasks are scored once per (checkpoint, evaluation spec).
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from ..config import Study
from ..errors import UserError
from . import cache
from .gather import base_results, mark_best, run_row
from .plan import PlannedRun


def _evaluate(model, tok, study: Study, tasks: list[str]) -> dict:
    from ..evaluate import runner

    results = runner.evaluate_tasks(model, tok, tasks, limit=study.eval.limit, generation_limit=study.eval.generation_limit,
                                    seed=study.eval.seed, batch_size=study.eval.batch_size)
    for r in results.values():
        if isinstance(r, dict):
            r.pop("samples", None)  # per-item generations stay out of the study cache; items (0/1) are kept
    return results


def chosen_runs(study: Study, root: Path, runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs that get benchmark tasks: all, or (tasks_runs: best_lr) each method's best learning rate
    (gather.mark_best on what is scored so far, never a failed run; before any task, the held-out target loss decides)."""
    if study.eval.tasks_runs == "all":
        return list(runs)
    trained = [r for r in runs if (Path(r.config.out) / "metrics.jsonl").exists()]
    best = mark_best([run_row(study, root, r) for r in trained], base_results(study, root, runs))
    return [r for r in runs if r.id in best]


def _score_heldout(model, tok, cfg) -> dict:
    """The base model's per-document held-out scores; its top-k distributions saved as the runs' KL references."""
    from ..train.heldout import heldout_sets, reference_dir, score_sets

    folder = reference_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    return score_sets(model, heldout_sets(cfg, tok), tok.eos_token_id, cfg.train.eval_batch, {}, keep_reference_in=folder)


def _reference_complete(r: PlannedRun) -> bool:
    names = ["target", *(["select"] if r.config.data.heldout_selection else []), *r.config.train.extra_eval]
    return all((Path(r.config.train.kl_reference) / f"{n}.safetensors").exists() for n in names)


def base_heldout(study: Study, root: Path, runs: list[PlannedRun]) -> None:
    """Before training: the base model's held-out scores and KL references, once per experiment."""
    from .. import models

    todo = [r for r in cache.first_per_experiment(runs) if r.config.train.eval_tokens
            and not (cache.heldout_path(root, r).exists() and _reference_complete(r))]
    if not todo:
        return
    base, tok = models.load(study.model)
    for r in todo:
        print(f"[study] base model: held-out losses and KL reference for {r.experiment.name}", flush=True)
        path = cache.heldout_path(root, r)
        path.unlink(missing_ok=True)  # a reference is only made together with the scores it belongs to
        try:
            cache.cached(path, lambda: _score_heldout(base, tok, r.config))
        except UserError as e:  # bad data: its runs fail in training with the same error, named; the others go on
            print(f"[study] base model: no held-out scores for {r.experiment.name}: {e}", flush=True)


def evaluate_all(study: Study, root: Path, runs: list[PlannedRun]) -> None:
    """Benchmark tasks for the base model (once per task set) and each chosen run's chosen checkpoints."""
    from tqdm.auto import tqdm

    from .. import models

    todo = []
    for domain in sorted({r.experiment.domain for r in runs}):
        tasks = cache.tasks_for(study, domain)
        if tasks:
            todo.append(("base", None, tasks))
    for r in chosen_runs(study, root, runs):
        tasks = cache.tasks_for(study, r.experiment.domain)
        cks = checkpoint.complete(Path(r.config.out))
        chosen = cks if study.eval.tasks_at == "all" else cks[-1:]
        todo += [(r.id, ck, tasks) for ck in chosen if tasks]
    pending = [t for t in todo if not cache.eval_path(root, study, *t).exists()]
    if not pending:
        return
    base, tok = models.load(study.model)
    for rid, ck, tasks in tqdm(pending, desc="[study] evaluating checkpoints", unit="ckpt"):
        path = cache.eval_path(root, study, rid, ck, tasks)
        if ck is None:
            cache.cached(path, lambda: _evaluate(base, tok, study, tasks))
        else:
            merged = checkpoint.is_adapter(ck)  # merged: same numbers, faster scoring; recorded as adapter_merged
            model = checkpoint.load(base, ck, merge=True)
            cache.cached(path, lambda: {**_evaluate(model, tok, study, tasks), "_adapter_merged": merged})
