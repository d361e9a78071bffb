"""Where a study's stages keep their results: every file is named by the hash of what decides it, so a
re-run computes only what is missing, and a file half-written by a killed study is recomputed.

    <study>/evals/base-heldout-<experiment>-<key>.json    the base model's held-out losses
    <study>/evals/<run id>-<checkpoint>-<key>.json        benchmark tasks of a checkpoint ("base" for the base model)
    <study>/analysis/{spectrum,intruders,diversity}-...   the analysis stage's rows
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .. import checkpoint
from ..train import read_metrics
from ..config import AnalysisSpec, DiversitySpec, Study
from .plan import PlannedRun, forgetting_tasks, heldout_key, learning_tasks

FRACTION = 0.9  # the paper's rank@90%: the rows call it rank90


def key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def read(path: Path):
    """A cached result, or None when missing or half-written (a killed study): then it is recomputed."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def cached(path: Path, compute) -> dict:
    result = read(path)
    if result is not None:
        return result
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def metric_rows(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl rows that hold held-out losses (a torn last line from a kill is skipped)."""
    return [row for row in read_metrics(run_dir / "metrics.jsonl") if "eval" in row]


# ----------------------------------------------------------------------------- evaluations


def tasks_for(study: Study, domain: str) -> list[str]:
    return list(dict.fromkeys(learning_tasks(study, domain) + forgetting_tasks(study)))


def _eval_key(study: Study, tasks: list[str]) -> str:
    spec = {"tasks": sorted(tasks), "limit": study.eval.limit, "generation_limit": study.eval.generation_limit, "seed": study.eval.seed}
    if any(t.startswith("humaneval") for t in tasks):  # the prompt protocol decides the result too
        from ..evaluate.tasks.humaneval import PROMPTS_VERSION

        spec["humaneval_prompts"] = PROMPTS_VERSION
    return key(spec)


def eval_path(root: Path, study: Study, rid: str, ck: Path | None, tasks: list[str]) -> Path:
    """Cache key: the checkpoint (run id + folder) and the evaluation spec (tasks, limits, seed)."""
    name = "base" if ck is None else f"{rid}-{ck.name}"
    return root / "evals" / f"{name}-{_eval_key(study, tasks)}.json"


def first_per_experiment(runs: list[PlannedRun]) -> list[PlannedRun]:
    seen: dict[str, PlannedRun] = {}
    for r in runs:
        seen.setdefault(r.experiment.name, r)
    return list(seen.values())


def heldout_path(root: Path, r: PlannedRun) -> Path:
    """Cache key of the base model's held-out losses: everything that decides the held-out rows."""
    return root / "evals" / f"base-heldout-{r.experiment.name}-{heldout_key(r.config)}.json"


# ----------------------------------------------------------------------------- analysis


def spectrum_path(root: Path, an: AnalysisSpec, rid: str, ck: Path) -> Path:
    return root / "analysis" / f"spectrum-{rid}-{ck.name}-{key({'fraction': FRACTION, 'svd': an.svd})}.json"


def intruders_path(root: Path, an: AnalysisSpec, rid: str, ck: Path) -> Path:
    return root / "analysis" / f"intruders-{rid}-{ck.name}-{key({'k': an.k, 'eps': [float(e) for e in an.eps]})}.json"


def diversity_path(root: Path, d: DiversitySpec, task: str, rid: str, ck: Path | None) -> Path:
    spec = {"task": task, **{k: v for k, v in asdict(d).items() if k not in ("task", "runs", "base", "methods")}}
    if task == "humaneval":
        from ..evaluate.tasks.humaneval import PROMPTS_VERSION

        spec["prompts"] = PROMPTS_VERSION
    name = "base" if ck is None else f"{rid}-{ck.name}"
    return root / "analysis" / f"diversity-{name}-{key(spec)}.json"


def analysis_checkpoints(an: AnalysisSpec, r: PlannedRun) -> list[Path]:
    cks = checkpoint.complete(Path(r.config.out))
    return cks if an.checkpoints == "all" else cks[-1:]


def tokens(ck: Path) -> int:
    return int(checkpoint.manifest(ck)["tokens"])
