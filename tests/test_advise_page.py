"""The advise forecast page on a synthetic forecast.json: the three files are written, the numbers, reasons,
crossovers and backtest errors appear formatted, and the HTML is self-contained and escaped."""

import base64
import re

import numpy as np
import pytest

from learnforget.advise import page

BUDGET, PILOT = 100_000, 12_500
PILOT_TOKENS = [0, 1024, 2048, 4096, 8192, 12500]
GRID = [float(t) for t in np.geomspace(1024, BUDGET, 12)]
ODD = "lora-r16<all>"  # a label that must be escaped in HTML


def _points(base, gain, b):
    return {"tokens": PILOT_TOKENS, "value": [base - gain * (t / PILOT) ** b for t in PILOT_TOKENS]}


def _curve(base, gain, b, width):
    mid = [base - gain * (t / PILOT) ** b for t in GRID]
    return {"mid": mid, "lo": [m - width for m in mid], "hi": [m + width for m in mid]}


def _method(label, lr, target, kl, general, seconds, rss, hours, trainable, k=1.0):
    """target/kl/general: (mid, lo, hi) at the budget, or a reason string; k scales the curves' changes."""
    shapes = {"target_loss": (2.2328, 0.03 * k, 0.5), "kl": (0.0, -0.004 * k, 0.8), "general_loss": (2.9, 0.001 * k, 0.5)}
    m = {"label": label, "lr": lr, "seeds": [0], "fitted_on_tokens": PILOT, "budget_tokens": BUDGET,
         "points": {sig: _points(*shape) for sig, shape in shapes.items()},
         "forecast": {}, "curve": {"tokens": GRID}, "fit": {}, "trainable": trainable,
         "lr_bracket": [{"lr": lr / 2, "rung_tokens": 4096, "rung_loss": 2.2301, "kept": False},
                        {"lr": lr, "rung_tokens": 4096, "rung_loss": 2.2211, "kept": True}],
         "cost": {"here": {"seconds": seconds, "peak_rss_mb": rss, "tokens_per_s": 60.0},
                  "gpus": [{"gpu": "H100 SXM", "gpu_hours": hours, "memory_gb": 3.2},
                           {"gpu": "H200", "gpu_hours": hours * 0.8, "memory_gb": 3.2}]}}
    for sig, f in (("target_loss", target), ("kl", kl), ("general_loss", general)):
        base, gain, b = shapes[sig]
        if isinstance(f, str):
            m["forecast"][sig] = {"reason": f}
            continue
        m["forecast"][sig] = dict(zip(("mid", "lo", "hi"), f))
        m["curve"][sig] = _curve(base, gain, b, (f[2] - f[1]) / 2)
        m["fit"][sig] = {"c": gain, "exponent": b, "area_ref": 5000.0, "residual_sd": 0.001}
    return m


REASON = "2 checkpoint(s) after the base, a fit needs 3"
TEXT = "No recommendation yet: full and lora-r1-all are not told apart at this budget; run the study."


def _result():
    full = _method("full", 2e-5, (2.19, 2.18, 2.2), (0.0123, 0.0101, 0.0149), (2.8962, 2.8931, 2.8994), 810.0, 3900.0, 0.0012, 134515008)
    full["measured"] = {"tokens": [25_000, 50_000, BUDGET], "target_loss": [2.205, 2.197, 2.185],
                        "kl": [0.006, 0.009, 0.0162], "general_loss": [2.898, 2.897, 2.896]}
    r1 = _method("lora-r1-all", 2e-4, (2.2012, 2.1953, 2.2071), REASON, (2.8991, 2.8977, 2.9003), 420.0, 1800.0, 0.0006, 230400, k=0.6)
    r16 = _method(ODD, 2e-4, (2.1977, 2.1902, 2.2048), (0.00042, 0.00031, 0.00055), (2.8988, 2.8971, 2.9), 450.0, 1900.0, 0.0007, 3686400, k=0.8)
    return {
        "schema": "learnforget.advise/1", "created": "2025-01-01T00:00:00", "model": "smollm2-135m", "data": "python-code",
        "regime": "cpt", "budget_tokens": BUDGET, "pilot_tokens": PILOT, "pilot_fraction": 0.125, "hardware": "here",
        "machine": "x86_64 2 CPUs", "wall_seconds": 812.3,
        "methods": {"full": full, "lora-r1-all": r1, ODD: r16},
        "crossovers": [{"kind": "full overtakes", "a": "full", "b": "lora-r1-all", "share": 0.8, "tokens": 247311.7,
                        "lo": 118000.0, "hi": 812345.0},
                       {"kind": "capacity", "a": "lora-r1-all", "b": ODD, "share": 0.2, "tokens": None, "lo": None, "hi": None}],
        "recommendation": {"decided": False, "method": None, "leader": "full", "text": TEXT,
                           "reasons": ["the intervals of full and lora-r1-all overlap at the budget"],
                           "comparisons": [{"method": "lora-r1-all", "vs": "full", "loss_diff": 0.0112, "lo": -0.002,
                                            "hi": 0.024, "verdict": "not decided"}],
                           "skipped": {"lora-r1-all kl": REASON}},
        "backtest": {"fraction": 0.125, "rows": [], "summary": [
            {"run": "full", "lr": 2e-5, "seed": 0, "signal": "target_loss", "checkpoints": 3, "mae": 0.01, "coverage": 1.0,
             "last_tokens": BUDGET, "last_error": 0.0123, "last_covered": True},
            {"run": "lora-r1-all", "lr": 2e-4, "seed": 0, "signal": "target_loss", "checkpoints": 1, "mae": 0.02,
             "coverage": 0.0, "last_tokens": BUDGET, "last_error": -0.02, "last_covered": False},
            {"run": "lora-r1-all", "lr": 2e-4, "seed": 0, "signal": "kl", "reason": "no KL forecast to score"}]},
        "commands": {"continue": "learnforget study runs/advise/study.yaml --out runs/advise/study"},
    }


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("advise")
    path = page.write(out, _result())
    return out, path, (out / "forecast.md").read_text(), path.read_text()


def test_files_and_png(pages):
    out, path, _, _ = pages
    assert path == out / "forecast.html"
    assert all((out / f"forecast.{x}").is_file() for x in ("md", "html", "png"))
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_content(pages):
    _, _, md, _ = pages
    assert md.startswith("# learnforget advise: smollm2-135m on python-code (cpt), budget 100,000 tokens\n")
    assert f"**{TEXT}**" in md
    assert "- the intervals of full and lora-r1-all overlap at the budget" in md
    row = next(line for line in md.splitlines() if line.startswith("| full |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["full", "2e-05", "0", "134,515,008", "2.1900 [2.1800, 2.2000]", "0.0123 [0.0101, 0.0149]",
                         "2.8962 [2.8931, 2.8994]"]
    assert cells[7:11] == ["13.5", "3.81", "0.0012 (3.2 GB)", "0.00096 (3.2 GB)"]  # minutes, GB, H100, H200
    assert cells[11:] == ["2.1850", "yes", "0.0162", "no"]  # measured at the budget vs its 90% interval
    assert "2.2012 [2.1953, 2.2071]" in md and f"no forecast: {REASON}" in md
    assert "0.000420 [0.000310, 0.000550]" in md  # small KL: three significant digits, one format per interval
    assert ("full overtakes lora-r1-all at ~250,000 tokens [120,000, 810,000] "
            "(80% of replicates within 10x the budget).") in md
    assert f"lora-r1-all does not fall one loss margin behind {ODD} within 10x the budget (20% of replicates do)." in md
    assert "| full | 1e-05 | 4,096 | 2.2301 | no |" in md and "| full | 2e-05 | 4,096 | 2.2211 | yes |" in md
    assert "| full | 2e-05 | 0 | target loss | 3 | 0.0100 | 100% |" in md
    assert "target loss: mean absolute error 0.0125, coverage 75% over 4 checkpoints" in md  # weighted by checkpoints
    assert "no backtest: no KL forecast to score" in md
    assert "```\nlearnforget study runs/advise/study.yaml --out runs/advise/study\n```" in md
    assert "![" in md and "](forecast.png)" in md and "c·x^b on two" in md


def test_html_embeds_and_escapes(pages):
    out, _, _, doc = pages
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert m and base64.b64decode(m.group(1)) == (out / "forecast.png").read_bytes()
    assert "lora-r16&lt;all&gt;" in doc and "r16<all>" not in doc
    assert f"<strong>{TEXT}</strong>" in doc
    assert "<td>2.1900 [2.1800, 2.2000]</td>" in doc


def test_interval_formats():
    assert page.interval({"mid": 2.19, "lo": 2.18, "hi": 2.2}) == "2.1900 [2.1800, 2.2000]"
    assert page.interval({"reason": "why"}) == "no forecast: why"
    assert page.interval(None) == "–"
