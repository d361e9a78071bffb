"""Checkpoint folders that are whole or absent: written under a temporary name, renamed when complete.

Layout of one checkpoint (`<run>/checkpoints/tokens-000025000/`):
  model.safetensors + config.json     full fine-tuning (loads with from_pretrained)
  adapter_model.safetensors + ...     LoRA (loads with PeftModel.from_pretrained on the base model)
  tokenizer files
  resume/                             accelerate state: optimizer, scheduler, RNG, weights
  manifest.json                       written last, before the rename: tokens, step, files and sizes
Every reader checks the manifest first (`verify`: present, parseable, every listed file at its recorded
size) and refuses a checkpoint that fails, naming the folder and the file; a folder still named `.tmp-*`
is never read. Measured on SmolLM2-135M (fp32, 513 MiB, warm page cache, 1 thread): the check costs 0.2-0.4 ms,
0.2% of a 125-200 ms `load`; a SHA-256 of model.safetensors costs ~540 ms, 2.7x the load, so sizes are
checked, not contents (a corruption that keeps the size passes unless it breaks the format: then the load
error names the file).

`load` is the one way back from such a folder (or any full-model / PEFT-adapter folder) to a model:
evaluation merges an adapter, analysis keeps it separate. A folder that learnforget did not write (no
manifest) is accepted as it is; if it does not load, the error names the folder and the damaged file.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from . import integrity, models
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
    if final.exists():  # an identical step re-saved after a resume: swap it whole (clean_partial finishes a killed swap)
        old = final.with_name(f".old-{final.name}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def verify(path: str | Path) -> dict:
    """The manifest of a learnforget checkpoint whose every listed file is present at its recorded size;
    else a UserError naming the folder and the file."""
    path = Path(path)
    if path.name.startswith((".tmp-", ".old-")):
        raise UserError(f"checkpoint {path}: a temporary folder of an interrupted save; not read")
    try:
        before = (path / MANIFEST).stat().st_ino
    except OSError:
        before = None
    try:
        return _checked_manifest(path)
    except UserError:
        # drop_resume replaces the manifest, then deletes resume/: a reader between the two saw the old list
        if before is not None and (path / MANIFEST).exists() and (path / MANIFEST).stat().st_ino != before:
            return _checked_manifest(path)
        raise


def _checked_manifest(path: Path) -> dict:
    if not (path / MANIFEST).is_file():
        raise UserError(f"checkpoint {path}: {MANIFEST} is missing, so the checkpoint may be incomplete; not read")
    try:
        info = json.loads((path / MANIFEST).read_text())
        files = info["files"]
        ok = isinstance(files, dict) and "step" in info and all(isinstance(v, int) for v in files.values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"checkpoint {path}: {MANIFEST} is truncated or damaged (not a complete manifest); not read")
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            raise UserError(f"checkpoint {path}: {name} is missing (listed in {MANIFEST}); not read")
        if f.stat().st_size != size:
            raise UserError(f"checkpoint {path}: {name} has {f.stat().st_size:,} bytes, {MANIFEST} records {size:,} "
                            f"(truncated or damaged); not read")
    return info


def is_complete(path: Path) -> bool:
    """True if the folder has a manifest and every file it lists, at the listed size."""
    try:
        verify(path)
    except UserError:
        return False
    return True


def written_here(path: Path) -> bool:
    """A folder learnforget wrote as a checkpoint (so it must have a complete manifest): it has a manifest,
    or the name of one (`tokens-<12 digits>`), or sits in a run folder's checkpoints/."""
    return ((path / MANIFEST).exists() or bool(re.fullmatch(r"(\.tmp-|\.old-)?tokens-\d{12}", path.name))
            or (path.parent.name == "checkpoints" and (path.parent.parent / "run.json").exists()))


def complete(run_dir: Path) -> list[Path]:
    """A run's checkpoints, in token order, each verified: a damaged one is a UserError, never skipped
    (temporary folders of an interrupted save are not checkpoints: clean_partial removes them)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    found = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    for p in found:
        verify(p)
    return found


def clean_partial(run_dir: Path) -> None:
    """Remove what a killed run left half-written: `.tmp-*` folders; a `.old-*` one (a swap in commit that
    was killed) goes back into place if its checkpoint is missing."""
    root = Path(run_dir) / "checkpoints"
    for p in root.iterdir() if root.exists() else ():
        if not (p.is_dir() and p.name.startswith((".tmp-", ".old-"))):
            continue
        final = root / p.name[len(".old-"):]
        try:
            restore = p.name.startswith(".old-") and not final.exists() and bool(_checked_manifest(p))
        except UserError:
            restore = False
        if restore:
            os.replace(p, final)
        else:
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


def check(checkpoint_dir: str | Path) -> Path:
    """The folder, if it can be loaded as far as can be told without reading the weights: a complete manifest
    when learnforget wrote it (verify), a config and a weights file. Else a UserError naming folder and file."""
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a folder")
    if written_here(path):
        verify(path)
    kind = "adapter" if is_adapter(path) else "full" if (path / "config.json").is_file() else None
    if kind is None:
        raise UserError(f"checkpoint {path} has neither config.json (full model) nor adapter_config.json (LoRA adapter)")
    gone = integrity.missing_weights(path, kind)
    if gone:
        raise UserError(f"checkpoint {path}: {gone}: not a complete {'PEFT adapter' if kind == 'adapter' else 'model'} folder")
    return path


def _load_error(path: Path, e: Exception) -> UserError:
    """The error of a failed load, naming the damaged file when one can be found."""
    bad = integrity.damaged_file(path)
    if isinstance(e, UserError) and not bad:
        return e
    return UserError(f"checkpoint {path}: {bad}; not read" if bad else f"cannot load checkpoint {path}: {integrity.first_line(e)}")


def load(base: str | nn.Module, checkpoint_dir: str | Path, merge: bool) -> nn.Module:
    """The model in a checkpoint folder, float32, in eval mode; the folder is checked first (`check`).

    A full model (config.json) loads on its own: `base` is not used. A PEFT adapter (adapter_config.json)
    loads onto `base`, a model spec for `models.load` or a loaded model; a passed model is deep-copied
    first, because PEFT injects its layers in place and callers usually still need the untouched base.
    The result is a PeftModel, or with `merge` the plain model with the adapter merged into its weights
    (the same outputs, without the adapter's extra matmuls)."""
    path = check(checkpoint_dir)
    if is_adapter(path):
        from peft import PeftModel

        model = copy.deepcopy(base) if isinstance(base, nn.Module) else models.load(base)[0]
        try:
            tuned = PeftModel.from_pretrained(model, str(path))
        except Exception as e:  # any library error of a folder that passed check: name the folder and the file
            raise _load_error(path, e) from None
        return (tuned.merge_and_unload() if merge else tuned).eval()
    from transformers import AutoModelForCausalLM

    # fp32 whatever the checkpoint's dtype: ΔW is a small difference, and evaluation casts only afterwards
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    except Exception as e:
        raise _load_error(path, e) from None


def tokenizer(base: str, checkpoint_dir: str | Path):
    """The tokenizer to use with a checkpoint: a full model's own if the folder has one, else the base's."""
    path = Path(checkpoint_dir).expanduser()
    if not is_adapter(path) and any((path / f).exists() for f in ("tokenizer_config.json", "tokenizer.json")):
        try:
            return models.tokenizer(str(path))
        except Exception as e:
            raise _load_error(path, e) from None
    return models.tokenizer(base)
