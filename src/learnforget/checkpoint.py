"""Checkpoint folders that are whole or absent: written under a temporary name, renamed when complete.

Layout of one checkpoint (`<run>/checkpoints/tokens-000025000/`):
  model.safetensors + config.json     full fine-tuning (loads with from_pretrained)
  adapter_model.safetensors + ...     LoRA (loads with PeftModel.from_pretrained on the base model)
  tokenizer files
  resume/                             accelerate state: optimizer, scheduler, RNG, weights
  manifest.json                       written last, before the rename: tokens, step, files and sizes
A folder without manifest.json, or still named `.tmp-*`, is never read.

`load` is the one way back from such a folder (or any full-model / PEFT-adapter folder) to a model:
evaluation merges an adapter, analysis keeps it separate.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from . import models
from .errors import UserError

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


# ---------------------------------------------------------------- loading


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder is recognised by its adapter_config.json."""
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def load(base: str | nn.Module, checkpoint_dir: str | Path, merge: bool) -> nn.Module:
    """The model in a checkpoint folder, float32, in eval mode.

    A full model (config.json) loads on its own: `base` is not used. A PEFT adapter (adapter_config.json)
    loads onto `base`, a model spec for `models.load` or a loaded model; a passed model is deep-copied
    first, because PEFT injects its layers in place and callers usually still need the untouched base.
    The result is a PeftModel, or with `merge` the plain model with the adapter merged into its weights
    (the same outputs, without the adapter's extra matmuls)."""
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a folder")
    if is_adapter(path):
        from peft import PeftModel

        model = copy.deepcopy(base) if isinstance(base, nn.Module) else models.load(base)[0]
        tuned = PeftModel.from_pretrained(model, str(path))
        return (tuned.merge_and_unload() if merge else tuned).eval()
    if not (path / "config.json").is_file():
        raise UserError(f"checkpoint {path} has neither config.json (full model) nor adapter_config.json (LoRA adapter)")
    from transformers import AutoModelForCausalLM

    # fp32 whatever the checkpoint's dtype: ΔW is a small difference, and evaluation casts only afterwards
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    except OSError as e:
        raise UserError(f"cannot load checkpoint {path}: {str(e).splitlines()[0]}") from None


def tokenizer(base: str, checkpoint_dir: str | Path):
    """The tokenizer to use with a checkpoint: a full model's own if the folder has one, else the base's."""
    path = Path(checkpoint_dir).expanduser()
    if not is_adapter(path) and any((path / f).exists() for f in ("tokenizer_config.json", "tokenizer.json")):
        return models.tokenizer(str(path))
    return models.tokenizer(base)
