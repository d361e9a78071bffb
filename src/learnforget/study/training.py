"""The study's training stage, local executor: the runs not done, one after another in this process."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Study
from .cost import dry_run
from .plan import PlannedRun, status


def train_all(study: Study, runs: list[PlannedRun]) -> None:
    """Train what is not done (a killed run resumes from its last checkpoint), printing an ETA."""
    from .. import train

    pending = [r for r in runs if status(r.config.out) != "done"]
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
