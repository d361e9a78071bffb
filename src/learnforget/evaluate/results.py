"""The results folder of `learnforget eval`, in lm-eval's shape and with its metadata.

    results_<stamp>.json       "results" per task (keys like "acc,none", "acc_stderr,none"), "groups" (the
                               forgetting line), "versions" / "n-shot" / "configs" per task, "n-samples",
                               "config" (model, checkpoint, adapter_merged, dtype, batch size, limit, seed,
                               package versions, item ids, samples files), "git_hash" (null outside a git
                               checkout) and "date"
    samples_<task>_<stamp>.jsonl   one record per item
The same stamp pairs them. Written atomically: the results file appears last, complete.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

from . import tasks as registry
from .task import Task


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def git_hash() -> str | None:
    """The commit of the checkout this package runs from, or None (an installed wheel, no git)."""
    root = Path(__file__).resolve().parents[3]  # src/learnforget/evaluate/results.py -> the repository
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def package_versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {"learnforget": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def task_metadata(tasks: dict[str, Task], results: dict) -> dict:
    """lm-eval's per-task "versions", "n-shot" and "configs", for the tasks that ran."""
    meta: dict = {"versions": {}, "n-shot": {}, "configs": {}}
    for name, t in tasks.items():
        mode = results.get(name, {}).get("mode")
        forced = f"{name}:{mode}"  # `humaneval` run in instruct mode is lm-eval's humaneval_instruct
        meta["versions"][name] = registry.get(forced).version if mode and forced in registry.names() else t.version
        meta["n-shot"][name] = t.shots(mode)
        meta["configs"][name] = {"task": name, "kind": t.kind, "source": t.source, "metrics": list(t.metrics),
                                 "primary": t.primary, "role": t.role, "mode": mode, **t.config}
    return meta


def write(out_dir: Path, results: dict, config: dict, tasks: dict[str, Task]) -> Path:
    """results_<stamp>.json and samples_<task>_<stamp>.jsonl; returns the results path.

    `results` is `runner.evaluate_tasks`'s output, `config` the run's settings (model, checkpoint,
    adapter_merged, dtype, batch_size, ...), `tasks` the Task of each result by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    task_results = {k: v for k, v in results.items() if not k.startswith("_")}
    samples_files = {}
    for name, res in task_results.items():
        if res["samples"]:
            path = out_dir / f"samples_{_file_safe(name)}_{stamp}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for s in res["samples"]:
                    f.write(json.dumps(s) + "\n")
            samples_files[name] = path.name
    body = {
        "results": {k: {m: v for m, v in r.items() if m not in ("samples", "ids")} for k, r in task_results.items()},
        "groups": {"forgetting": results["_forgetting"]} if "_forgetting" in results else {},
        **task_metadata({k: tasks[k] for k in task_results}, task_results),
        "n-samples": {k: {"effective": r["n"]} for k, r in task_results.items()},
        "config": {**config, "versions": package_versions(), "item_ids": {k: r["ids"] for k, r in task_results.items()},
                   "samples_files": samples_files},
        "git_hash": git_hash(),
        "date": time.time(),
    }
    path = out_dir / f"results_{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)
    return path
