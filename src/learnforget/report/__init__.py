"""The study report, read from a study's results.json alone (schema: report/schema.py):

    learnforget report <study-dir>   ->  <study-dir>/report/{report.html, report.md, *.png, summary.json}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .claims import findings as _findings
from .context import Analysis, analyse
from .figures import figures
from .findings import RULES, Finding
from .answer import stability
from .render import blocks, checkpoint_rows, scale, to_html, to_markdown
from .schema import load, validate

__all__ = ["Analysis", "Finding", "analyse", "findings", "load", "summary", "validate", "write"]


def findings(results: dict) -> list[dict]:
    """The paper's claims with verdicts computed from `results` (a results.json dict)."""
    return [f.as_dict() for f in _findings(analyse(validate(results)))]


def summary(A: Analysis, found: list[Finding]) -> dict:
    """The report's computed tables, as JSON-ready data (written to report/summary.json)."""
    return {"study": A.res["study"]["name"], "scale": scale(A)[0],
            "base_tasks": {t: {**vars(v), "verdict": v.verdict} for t, v in A.tasks.items()},
            "best_lr": [{"group": s.group, "label": s.label, "lr": s.lr, "learned": s.learned} for s in A.best],
            "checkpoints": checkpoint_rows(A), "stability": stability(found), "design": A.res.get("design"),
            "findings": [f.as_dict() for f in found], "rules": RULES}


def write(study_dir: Path) -> Path:
    """Write <study_dir>/report/ (report.html with embedded figures, report.md, PNGs, summary.json);
    return the HTML path."""
    study_dir = Path(study_dir)
    A = analyse(load(study_dir))
    found = _findings(A)
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    pngs = figures(A)
    for name, data in pngs.items():
        (out / f"{name}.png").write_bytes(data)
    B = blocks(A, found)
    (out / "report.md").write_text(to_markdown(B))
    (out / "summary.json").write_text(json.dumps(summary(A, found), indent=1, default=_json))
    (out / "report.html").write_text(to_html(B, pngs))
    return out / "report.html"


def _json(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)
