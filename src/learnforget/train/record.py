"""The run folder's records: run.json (written atomically), metrics.jsonl, TensorBoard, and what they
note about the machine (package versions, this run's peak memory)."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
from pathlib import Path

import torch

from .. import checkpoint
from ..errors import UserError


def reset_peak_rss() -> None:
    """Count this run's peak memory afresh (Linux: writing 5 to clear_refs resets VmHWM), so that runs sharing
    one process, as a study's do, each report their own peak and not the largest so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: ru_maxrss, the process's peak
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "learnforget": __import__("learnforget").__version__}


def read_run(out: Path) -> dict | None:
    """A run folder's run.json, or None if there is none yet."""
    record = Path(out) / "run.json"
    if not record.exists():
        return None
    try:
        return json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{record}: not valid JSON (damaged); delete it to start the run afresh, or choose another --out") from None


def finished(out: Path, resolved: dict) -> dict | None:
    """The record of this same run if it is done (then there is nothing to train), else None."""
    previous = read_run(out)
    if previous and previous.get("status") == "done" and previous.get("config") == json.loads(json.dumps(resolved)):
        return previous
    return None


def paused(out: Path, resolved: dict, stop_tokens: int | None) -> dict | None:
    """The record of this same run if it is paused at or after stop_tokens (nothing to train before that), else None."""
    previous = read_run(out)
    if (stop_tokens is not None and previous and previous.get("status") == "paused"
            and previous.get("config") == json.loads(json.dumps(resolved)) and previous["paused_at"]["tokens"] >= stop_tokens):
        return previous
    return None


def trained(out: Path) -> bool:
    """True if the folder keeps anything of training: a checkpoint, or a metrics row after step 0."""
    root = out / "checkpoints"
    if root.exists() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return True
    return any(row.get("step", 0) > 0 for row in read_metrics(out / "metrics.jsonl"))


# what a run writes in its folder: removed whole when a run that never trained a step is replaced
RUN_FILES = ("run.json", "metrics.jsonl", "tb", "reference", "pissa-init", "checkpoints")


def prepare_run_dir(out: Path, resolved: dict) -> None:
    """Create the run folder, or check that an existing one holds this same run (then we resume). A folder
    whose run stopped before its first step (a failed start) holds nothing to keep: a new config replaces it."""
    previous = read_run(out)
    resolved = json.loads(json.dumps(resolved))
    if previous is not None and previous.get("config") != resolved:
        if trained(out):
            raise UserError(f"{out}: holds a different run (its run.json config differs); choose another --out or delete it")
        print(f"[learnforget] {out}: replacing a run that stopped before training a step "
              f"(status {previous.get('status', 'running')}, a different config)", flush=True)
        for name in RUN_FILES:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.clean_partial(out)
    write_json_atomic(out / "run.json", {"status": "running", "config": resolved, "versions": versions()})


def mark_failed(out: Path, resolved: dict, error: BaseException) -> None:
    """run.json of a run that stopped on an error: status failed, and the error (its checkpoints stay resumable)."""
    message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    write_json_atomic(out / "run.json", {"status": "failed", "error": message, "config": json.loads(json.dumps(resolved)),
                                         "versions": versions()})


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict]:
    """metrics.jsonl's rows (up to a step, if given); a half-written last line (killed mid-write) is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if upto_step is None or row.get("step", 0) <= upto_step:
                rows.append(row)
    return rows


def tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a soft dependency: metrics.jsonl has everything
        return None
    return SummaryWriter(str(out / "tb"))
