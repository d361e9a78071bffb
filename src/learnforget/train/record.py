"""The run folder's records: run.json (written atomically), metrics.jsonl, TensorBoard, and what they
note about the machine (package versions, this run's peak memory)."""

from __future__ import annotations

import json
import os
import platform
import resource
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


def prepare_run_dir(out: Path, resolved: dict) -> None:
    """Create the run folder, or check that an existing one holds this same run (then we resume)."""
    record = out / "run.json"
    if record.exists():
        previous = json.loads(record.read_text()).get("config")
        if previous != json.loads(json.dumps(resolved)):
            raise UserError(f"{out}: holds a different run (its run.json config differs); choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.clean_partial(out)
    if not record.exists():
        write_json_atomic(record, {"status": "running", "config": resolved, "versions": versions()})


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
