"""The study's training stage, local executor: the runs not done, one after another in this process, or
(`executor.workers: N`) N at a time, each in its own process with an equal share of the cores.

A run that asks for several processes (train.processes > 1) is launched (learnforget.train.launch.run: accelerate
launch on this machine) instead of trained in this process; it writes the same run folder, so caching and
resume are the same. Under `workers: N` such runs train after the parallel ones, one at a time: each needs
the cores its processes share, which the parallel runs hold until they finish."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from ..config import RunConfig, Study
from ..errors import UserError
from .cost import dry_run
from .plan import PlannedRun, status


def train_all(study: Study, runs: list[PlannedRun], stop_tokens: int | None = None) -> None:
    """Train what is not done (a killed run resumes from its last checkpoint), printing an ETA. With stop_tokens,
    each run pauses at its first checkpoint at or after that many tokens (advise's pilots), to be resumed later."""
    pending = [r for r in runs if status(r.config.out) != "done" and not paused_at(r.config, stop_tokens)]
    if study.executor.workers > 1 and len(pending) > 1:
        return _train_parallel(runs, pending, study.executor.workers, stop_tokens)
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
            _train_here(r.config, stop_tokens)
            spent, spent_est = spent + time.time() - tic, spent_est + est[r.id]


def paused_at(cfg: RunConfig, stop_tokens: int | None) -> bool:
    """True if the run is paused at or after stop_tokens: nothing to train before that."""
    from ..train import record

    return record.paused(Path(cfg.out), cfg.to_dict(), stop_tokens) is not None


def _train_here(cfg: RunConfig, stop_tokens: int | None = None) -> None:
    """One run from this process: trained in it, or launched in cfg.train.processes processes (a failed launch
    named, as the error of a run trained here is not: its message is the launcher's)."""
    if cfg.train.processes == 1:
        from .. import train

        train.run(cfg, stop_tokens)
        return
    if stop_tokens is not None:
        raise UserError(f"run {Path(cfg.out).name}: a launched multi-process run cannot pause (advise's pilots train one process each)")
    from ..train import launch

    try:
        launch.run(cfg)
    except UserError as e:
        raise UserError(f"run {Path(cfg.out).name}: {e}") from None


def _worker_init(threads: int) -> None:
    import torch

    from .. import quiet

    torch.set_num_threads(threads)
    quiet.libraries(bars=False)
    os.environ["TQDM_DISABLE"] = "1"  # learnforget's own step bars too (train.loop reads it)


def _train_one(config: dict, stop_tokens: int | None = None) -> None:
    from .. import train

    train.run(RunConfig.from_dict(config), stop_tokens)


def worker_threads(workers: int) -> int:
    """Threads each of `workers` parallel runs gets: an equal share of this process's cores."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def _train_parallel(runs: list[PlannedRun], pending: list[PlannedRun], workers: int, stop_tokens: int | None = None) -> None:
    """Pending runs `workers` at a time in spawned processes, then the multi-process ones one at a time (each
    launched with all the cores); a failed run is named at the end, the others finish."""
    from .. import models
    from ..train import launch

    for model in sorted({r.config.model for r in pending}):  # convert an embedded model once, not in every worker
        if model in models.EMBEDDED:
            models.resolve(model)
    multi = [r for r in pending if r.config.train.processes > 1]
    single = [r for r in pending if r.config.train.processes == 1]
    threads = worker_threads(workers)
    print(f"[study] {len(pending)} runs to train ({len(runs) - len(pending)} cached), {workers} at a time with "
          f"{threads} thread(s) each" + (f"; then {len(multi)} multi-process run(s), one at a time" if multi else ""), flush=True)
    t0, failed, finished = time.time(), [], 0

    def report(r: PlannedRun, error: BaseException | None) -> None:
        nonlocal finished
        finished += 1
        name = Path(r.config.out).name
        progress = f"[study] {finished}/{len(pending)} trained (study elapsed {(time.time() - t0) / 60:.1f} min)"
        if error is None:
            print(f"{progress}: {name}", flush=True)
            return
        line = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        failed.append((name, line.splitlines()[0] if line else ""))
        print(f"{progress}: {name} FAILED: {line}", file=sys.stderr, flush=True)

    if single:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)) as pool:
            futs: dict[Future, PlannedRun] = {pool.submit(_train_one, r.config.to_dict(), stop_tokens): r for r in single}
            left = set(futs)
            while left:
                done, left = wait(left, return_when=FIRST_COMPLETED)
                for f in done:
                    report(futs[f], f.exception())
    for r in multi:
        try:
            if stop_tokens is not None:
                raise UserError("a launched multi-process run cannot pause (advise's pilots train one process each)")
            launch.run(r.config)
            report(r, None)
        except UserError as e:  # the launch's own failure, in one line; anything else is a bug here: raised
            report(r, e)
    if failed:  # as with --executor ray: the others finished and are cached
        lines = "\n".join(f"  {name}: {line}" for name, line in failed)
        raise UserError(f"{len(failed)} of {len(pending)} training runs failed (the others are done and cached; "
                        f"fix the cause and re-run the study to train only what is missing):\n{lines}")
