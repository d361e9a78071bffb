"""Which file of a model folder is damaged: the diagnosis behind a failed load, so the error names the folder
and the file instead of ending in a library traceback (SafetensorError, HFValidationError, JSONDecodeError).

Nothing here runs on a load that succeeds: the checks are called after one fails (the manifest check of a
learnforget checkpoint, checkpoint.verify, is the one made before every load)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

WEIGHTS = {  # the files a folder of each kind needs, any one of them (transformers' and PEFT's names)
    "full": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    "adapter": ("adapter_model.safetensors", "adapter_model.bin"),
}


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be read whole (reads its header only), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            return f"{size} bytes, shorter than a header"
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            return f"header of {n:,} bytes in a file of {size:,}: truncated"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "header is not valid JSON"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{size:,} bytes where its header needs {8 + n + end:,}: truncated"
    return None


def json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"not valid JSON ({e})"
    return None


def missing_weights(folder: Path, kind: str) -> str | None:
    """A one-line complaint when a full-model / adapter folder has none of its weight files, else None."""
    names = WEIGHTS[kind]
    if any((folder / n).is_file() for n in names):
        index = next((folder / n for n in names if n.endswith(".index.json") and (folder / n).is_file()), None)
        if index is not None and not json_problem(index):
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            gone = [s for s in shards if not (folder / s).is_file()]
            if gone:
                return f"{gone[0]} is missing (listed in {index.name})"
        return None
    return f"no weights file ({' or '.join(names[:1] + names[2:3] if kind == 'full' else names)})"


def damaged_file(folder: Path) -> str | None:
    """'<file>: <why>' for the first file of the folder that cannot be read whole, or None if none is found."""
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        why = safetensors_problem(p) if p.suffix == ".safetensors" else json_problem(p) if p.suffix == ".json" else None
        if why:
            return f"{p.name}: {why}"
    return None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__
