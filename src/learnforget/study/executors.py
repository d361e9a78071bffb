"""Where a study's training runs execute.

  local  (default) one run after another in this process: training.train_all.
  ray    every run not yet done becomes a Ray task that calls train.run(config) on a worker; Ray
         schedules them over the CPUs/GPUs of a local instance or of a cluster (--ray-address).
         A run with train.processes = P > 1 is a task that asks for P times the executor's per-process
         resources and launches the run's P processes on its node (learnforget.train.launch.run): DDP/FSDP
         stays on one machine, where Ray put the task.

Ray is the engine: no scheduler of our own. A run is already resumable and idempotent (its folder
is named by the hash of its config, train.run resumes from the last checkpoint or returns at once
when done), so a task needs nothing but the run's config, and a task that Ray retries after a lost
worker just resumes. Every run writes its own folder under the study folder, which is why that
folder must be on a filesystem every worker sees (NFS, a mounted bucket, ...) when the cluster has
more than one machine. Evaluation stays on the driver (evaluation.evaluate_all), after training.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import ExecutorSpec, RunConfig
from ..errors import UserError
from .plan import PlannedRun, status

KINDS = ("local", "ray")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray: pip install "learnforget[ray]"') from None
    return ray


def _train_one(config: dict) -> str:
    """The Ray task: one training run, rebuilt from its config dict (plain data crosses the wire)."""
    from .. import quiet, train

    quiet.libraries()
    cfg = RunConfig.from_dict(config)
    train.run(cfg)
    return cfg.out


def _launch_one(config: dict, threads: int) -> str:
    """The Ray task of a multi-process run: the launcher started on this node, `threads` torch threads a process
    (on CPU). Ray has set this task's CUDA_VISIBLE_DEVICES to the GPUs it reserved, which the launcher inherits."""
    from .. import quiet
    from ..train import launch

    quiet.libraries()
    cfg = RunConfig.from_dict(config)
    launch.run(cfg, threads=threads)
    return cfg.out


def resources(spec: ExecutorSpec, processes: int) -> dict:
    """What a run of `processes` processes asks Ray for: the executor's per-process CPUs, GPUs and memory, times
    `processes` (all on one node: a task is never split)."""
    options = {"num_cpus": spec.num_cpus * processes, "num_gpus": spec.num_gpus * processes}
    if spec.memory_gb:
        options["memory"] = int(spec.memory_gb * processes * 1024**3)
    return options


def _submit(ray, r: PlannedRun, spec: ExecutorSpec):
    """One pending run as a Ray task: train.run in the worker, or (processes > 1) a launch from it."""
    p = r.config.train.processes
    if p == 1:
        return ray.remote(_train_one).options(**resources(spec, 1)).remote(r.config.to_dict())
    return ray.remote(_launch_one).options(**resources(spec, p)).remote(r.config.to_dict(), max(1, int(spec.num_cpus)))


def _describe(error: Exception) -> tuple[str, str | None]:
    """(one line for the summary, the full remote traceback or None) of a failed task's error."""
    ray = sys.modules["ray"]
    cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else None
    if isinstance(cause, UserError):  # bad input: the message says it all, no traceback
        return f"{cause}", None
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}", str(error)
    # the worker died (out of memory, node lost, ...) or the task was cancelled
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}", str(error)


def train_ray(runs: list[PlannedRun], spec: ExecutorSpec, address: str | None = None) -> None:
    """Train every run that is not done as a Ray task; wait for all; raise a UserError naming the failed ones.

    Uses the Ray instance this process is already connected to, if any
    (a test, a notebook); else connects to `address` ("auto", "ray://host:10001", ...) or, when None,
    starts a local instance with this machine's CPUs and GPUs and shuts it down at the end.
    """
    ray = _import_ray()
    # A local instance's workers start in this directory; a cluster's start elsewhere, on other machines.
    if address is not None and any(not Path(r.config.out).is_absolute() for r in runs):
        raise UserError(f"--executor ray --ray-address {address}: give --out as an absolute path that every "
                        f"machine of the cluster sees (a shared filesystem); the workers write the run folders there")
    pending = [r for r in runs if status(r.config.out) != "done"]
    cached = len(runs) - len(pending)
    if not pending:
        print(f"[study] ray: all {len(runs)} runs are done (cached); nothing to train", flush=True)
        return
    # Convert an embedded model (GGUF -> cached fp32 folder) once, here: workers on this machine
    # starting together would each convert it.
    from .. import models

    for model in sorted({r.config.model for r in pending}):
        if model in models.EMBEDDED:
            models.resolve(model)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"--ray-address {address}: cannot start or reach Ray ({str(e).strip().splitlines()[0]})") from None
    try:
        res = ray.cluster_resources()
        print(f"[study] ray: {len(pending)} runs to train ({cached} cached) on a cluster with "
              f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; each run asks for {spec.num_cpus:g} CPUs, "
              f"{spec.num_gpus:g} GPUs" + (f", {spec.memory_gb:g} GB" if spec.memory_gb else "")
              + (" per process" if any(r.config.train.processes > 1 for r in pending) else ""), flush=True)
        # Ray's default retries (3) apply to lost workers and nodes only, not to exceptions raised by
        # train.run: a retried run resumes from its last checkpoint, a failing one fails once.
        refs = {_submit(ray, r, spec): r for r in pending}
        failed: list[tuple[str, str]] = []
        t0, finished = time.time(), 0
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                r = refs.pop(ref)
                name = Path(r.config.out).name
                finished += 1
                progress = f"[study] ray: {cached + finished}/{len(runs)} runs done (elapsed {(time.time() - t0) / 60:.1f} min)"
                try:
                    ray.get(ref)
                    print(f"{progress}: {name} trained", flush=True)
                except ray.exceptions.RayError as e:
                    line, trace = _describe(e)
                    failed.append((name, line))
                    print(f"{progress}: {name} FAILED: {line}", file=sys.stderr, flush=True)
                    if trace:
                        print(trace, file=sys.stderr, flush=True)
    finally:
        if started_here:
            ray.shutdown()
    if failed:
        lines = "\n".join(f"  {name}: {line}" for name, line in failed)
        raise UserError(f"{len(failed)} of {len(pending)} training runs failed (the others are done and cached; "
                        f"fix the cause and re-run the study to train only what is missing):\n{lines}")
