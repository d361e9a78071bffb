"""Checkpoint folders that are whole or absent: written under a temporary name, renamed when complete.

Layout of one checkpoint (`<run>/checkpoints/tokens-000025000/`):
  model.safetensors + config.json     full fine-tuning (loads with from_pretrained)
  adapter_model.safetensors + ...     LoRA (loads with PeftModel.from_pretrained on the base model)
  tokenizer files
  resume/                             accelerate state: optimizer, scheduler, RNG, weights
  manifest.json                       written last, before the rename: tokens, step, files and sizes
A folder without manifest.json, or still named `.tmp-*`, is never read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"


def name_for(tokens: int) -> str:
    return f"tokens-{tokens:012d}"


def staging(run_dir: Path, tokens: int) -> Path:
    """A fresh temporary folder next to where the checkpoint will live."""
    tmp = run_dir / "checkpoints" / f".tmp-{name_for(tokens)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, info: dict) -> Path:
    """Write the manifest (with every file's size) and atomically rename the folder into place."""
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({**info, "files": files}, indent=2))
    final = tmp.parent / tmp.name.removeprefix(".tmp-")
    if final.exists():  # an identical step re-saved after a resume: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def is_complete(path: Path) -> bool:
    """True if the folder has a manifest and every file it lists, at the listed size."""
    m = path / MANIFEST
    if path.name.startswith(".tmp-") or not m.exists():
        return False
    try:
        files = json.loads(m.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((path / f).exists() and (path / f).stat().st_size == size for f, size in files.items())


def complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, in token order."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and is_complete(p)), key=lambda p: p.name)


def clean_partial(run_dir: Path) -> None:
    """Remove what a killed run left half-written."""
    root = Path(run_dir) / "checkpoints"
    if root.exists():
        for p in root.iterdir():
            if p.is_dir() and not is_complete(p):
                shutil.rmtree(p)


def drop_resume(path: Path) -> None:
    """Delete a checkpoint's resume state (optimizer, RNG, a second copy of the weights): only the newest
    checkpoint of an unfinished run needs it, and it is most of a checkpoint's size. The manifest is
    rewritten first (atomically), so a kill in between leaves a complete checkpoint with a spare folder."""
    path = Path(path)
    if not (path / "resume").exists():
        return
    info = manifest(path)
    info["files"] = {f: size for f, size in info["files"].items() if not f.startswith("resume/")}
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path / MANIFEST)
    shutil.rmtree(path / "resume")


def manifest(path: Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())
