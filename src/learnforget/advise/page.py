"""The forecast page of `learnforget advise`, from its result dict (forecast.json) alone:

    write(out_dir, result)  ->  out_dir/{forecast.md, forecast.html, forecast.png}

Markdown and HTML carry the same blocks (headings, paragraphs, lists, tables, the figure, code); the HTML
is self-contained (inline CSS, the PNG as a base64 data: URI)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..report.render import to_html, to_markdown

SIGNALS = ("target_loss", "kl", "general_loss")
TITLE = {"target_loss": "Held-out target loss", "kl": "KL drift from the base (general text)",
         "general_loss": "Held-out general-text loss"}
YLABEL = {"target_loss": "target loss (nats/token)", "kl": "KL(base || tuned) (nats/token)",
          "general_loss": "general-text loss (nats/token)"}
SHORT = {"target_loss": "target loss", "kl": "KL", "general_loss": "general loss"}
EXTRA_CSS = "pre{background:#f6f6f6;padding:8px;overflow-x:auto}.rec{font-size:16px}"
METHOD = ("How the forecast is made: the gain in held-out target loss over the base model is fitted as c·x^b on two "
          "clocks, mixed equally: x the learning-rate area of the pilot's checkpoints (the sum over steps of the learning "
          "rate relative to its peak times the tokens per step; the pilot is the first part of the budget's own schedule, "
          "so the area is known in advance up to the budget) and x the tokens. KL drift from the base on general text and "
          "the general-text loss are fitted the same way within the pilot and, past it, follow the gain with an exponent "
          "between 0.75 and 1.25 (forgetting is about linear in learning). The 90% intervals are the central 90% of 1,000 "
          "bootstrap replicates that resample held-out documents (the same documents for every method, so comparisons are "
          "paired), seeds when a method has several, and training noise between checkpoints at the fit's residual scale.")


def _num_at(x: float, scale: float) -> str:
    """x to 4 decimals, or to 3 significant digits of `scale` when it is below 0.01 (KL drift can be)."""
    d = 4 if scale >= 0.01 or scale == 0 else min(8, 2 - math.floor(math.log10(scale)))
    return f"{x:.{d}f}"


def _num(x: float) -> str:
    return _num_at(x, abs(x))


def interval(f: dict | None) -> str:
    """A forecast as "mid [lo, hi]" (one format for the three numbers), its reason if it has none, "–" if absent."""
    if not f:
        return "–"
    if "mid" not in f:
        return f"no forecast: {f.get('reason', 'no reason given')}"
    scale = max(abs(f["mid"]), abs(f["lo"]), abs(f["hi"]))
    return f"{_num_at(f['mid'], scale)} [{_num_at(f['lo'], scale)}, {_num_at(f['hi'], scale)}]"


def _approx(t: float) -> str:
    """Tokens to two significant digits: 247,311 -> 250,000."""
    if t <= 0:
        return f"{t:,.0f}"
    return f"{round(t, 1 - math.floor(math.log10(t))):,.0f}"


def _minutes(cost: dict) -> str:
    s = (cost.get("here") or {}).get("seconds")
    return "–" if s is None else f"{s / 60:.1f}"


def _gb(cost: dict) -> str:
    mb = (cost.get("here") or {}).get("peak_rss_mb")
    return "–" if mb is None else f"{mb / 1024:.2f}"


def _gpus(result: dict) -> list[str]:
    return list(dict.fromkeys(g["gpu"] for m in result["methods"].values() for g in (m.get("cost") or {}).get("gpus", [])))


def _gpu_cell(m: dict, gpu: str) -> str:
    for g in (m.get("cost") or {}).get("gpus", []):
        if g["gpu"] == gpu:
            return f"{g['gpu_hours']:.3g}" + (f" ({g['memory_gb']:.1f} GB)" if g.get("memory_gb") is not None else "")
    return "–"


def measured_at_budget(m: dict, sig: str, budget: int) -> tuple[str, str]:
    """(value, inside?) of the measured checkpoint at the budget, or at the largest measured tokens below it;
    inside? compares with the forecast's 90% interval there (the curve's band, log-interpolated, off the budget)."""
    meas = m.get("measured") or {}
    pts = [(t, v) for t, v in zip(meas.get("tokens", []), meas.get(sig) or []) if v is not None]
    if not pts:
        return "–", "–"
    at = [p for p in pts if p[0] == budget]
    t, v = at[0] if at else max(pts)
    value = _num(v) + ("" if t == budget else f" (at {int(t):,} tokens)")
    f, curve = (m.get("forecast") or {}).get(sig) or {}, (m.get("curve") or {}).get(sig)
    if t == budget and "lo" in f:
        lo, hi = f["lo"], f["hi"]
    elif curve and t > 0:
        x = np.asarray(m["curve"]["tokens"], float)
        ok = x > 0
        lo, hi = (float(np.interp(np.log(t), np.log(x[ok]), np.asarray(curve[k], float)[ok])) for k in ("lo", "hi"))
    else:
        return value, "–"
    return value, "yes" if lo <= v <= hi else "no"


def _forecast_table(result: dict) -> tuple:
    budget, gpus = result["budget_tokens"], _gpus(result)
    has_meas = any(m.get("measured") for m in result["methods"].values())
    head = ["method", "lr", "seeds", "trainable params", *(f"{SHORT[s]} at the budget [90%]" for s in SIGNALS),
            f"wall time here (min, {result.get('machine', 'this machine')})", "peak memory here (GB)",
            *(f"GPU-hours on {g} (memory)" for g in gpus)]
    if has_meas:
        head += [f"measured {SHORT[s]} at budget" if k == 0 else f"measured {SHORT[s]} inside 90%?"
                 for s in ("target_loss", "kl") for k in (0, 1)]
    rows = []
    for key, m in result["methods"].items():
        cost, fc = m.get("cost") or {}, m.get("forecast") or {}
        row = [m.get("label", key), f"{m['lr']:g}", ", ".join(map(str, m.get("seeds", []))) or "–",
               f"{m['trainable']:,}" if m.get("trainable") is not None else "–", *(interval(fc.get(s)) for s in SIGNALS),
               _minutes(cost), _gb(cost), *(_gpu_cell(m, g) for g in gpus)]
        if has_meas:
            row += [c for s in ("target_loss", "kl") for c in measured_at_budget(m, s, m.get("budget_tokens", budget))]
        rows.append(row)
    return ("table", head, rows)


def crossover_line(c: dict, budget: int) -> str:
    a, b, share = c["a"], c["b"], c.get("share")
    share_s = "?" if share is None else f"{share:.0%}"
    verb = ("overtakes", "overtake") if c["kind"] == "full overtakes" else ("falls one loss margin behind",
                                                                             "fall one loss margin behind")
    if c.get("from_start", 0) > 0.5:
        return (f"{a} {verb[0]} {b} already at the smallest budget searched ({_approx(c.get('start_tokens') or 0)} tokens) in "
                f"{c['from_start']:.0%} of replicates.")
    if c.get("tokens") is None:
        return f"{a} does not {verb[1]} {b} within 10x the budget ({share_s} of replicates do)."
    lo = "–" if c.get("lo") is None else _approx(c["lo"])
    hi = f">{10 * budget:,}" if c.get("hi") is None else _approx(c["hi"])
    return f"{a} {verb[0]} {b} at ~{_approx(c['tokens'])} tokens [{lo}, {hi}] ({share_s} of replicates within 10x the budget)."


def _recommendation_blocks(rec: dict) -> list[tuple]:
    out = [("bold", rec.get("text") or ("No recommendation." if not rec.get("decided") else f"Use {rec.get('method')}."))]
    if rec.get("reasons"):
        out.append(("ul", list(rec["reasons"])))
    if rec.get("leader"):
        out.append(("p", f"Lowest forecast target loss at the budget: {rec['leader']}."))
    if rec.get("comparisons"):
        out.append(("table", ["method", "vs", "target loss difference [90%]", "verdict"],
                    [[c["method"], c["vs"], f"{c['loss_diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]", c["verdict"]]
                     for c in rec["comparisons"]]))
    if rec.get("skipped"):
        out.append(("p", "Not considered: " + "; ".join(f"{k}: {v}" for k, v in rec["skipped"].items()) + "."))
    return out


def _bracket_table(result: dict) -> tuple:
    rows = [[m.get("label", key), f"{r['lr']:g}", "–" if r.get("rung_tokens") is None else f"{int(r['rung_tokens']):,}",
             "–" if r.get("rung_loss") is None else _num(r["rung_loss"]), r.get("note") or ("yes" if r.get("kept") else "no")]
            for key, m in result["methods"].items() for r in m.get("lr_bracket") or []]
    return ("table", ["method", "lr", "rung (tokens)", "target loss at the rung", "kept"], rows)


def _backtest_blocks(bt: dict) -> list[tuple]:
    rows, by_sig = [], {}
    for r in bt.get("summary", []):
        r = {**r, "signal": SHORT.get(r["signal"], r["signal"])}
        lr = "–" if r.get("lr") is None else f"{r['lr']:g}"
        if "reason" in r:
            rows.append([r["run"], lr, r.get("seed", "–"), r["signal"], "–", "–", "–", f"no backtest: {r['reason']}"])
            continue
        last = (f"{_num(r['last_error'])} at {int(r['last_tokens']):,} tokens"
                + ("" if r.get("last_covered") is None else f" ({'inside' if r['last_covered'] else 'outside'} the interval)"))
        rows.append([r["run"], lr, r.get("seed", "–"), r["signal"], r["checkpoints"], _num(r["mae"]), f"{r['coverage']:.0%}", last])
        by_sig.setdefault(r["signal"], []).append((r["checkpoints"], r["mae"], r["coverage"]))
    overall = [f"{s}: mean absolute error {_num(sum(n * e for n, e, _ in v) / sum(n for n, _, _ in v))}, coverage "
               f"{sum(n * c for n, _, c in v) / sum(n for n, _, _ in v):.0%} over {sum(n for n, _, _ in v)} checkpoints"
               for s, v in by_sig.items() if sum(n for n, _, _ in v)]
    frac = bt.get("fraction")
    return [("h2", "Backtest"),
            ("p", (f"Forecasts fitted on the first {frac:.1%} of each run's tokens" if frac else "Forecasts fitted on each "
                   "run's first checkpoints") + ", scored against its later checkpoints: mean absolute error (nats/token) and "
                  "the share of checkpoints inside the 90% interval (coverage; 90% is right)."),
            ("table", ["run", "lr", "seed", "signal", "checkpoints", "MAE", "coverage", "last checkpoint: error"], rows),
            ("p", "Overall, per signal (weighted by checkpoints):"), ("ul", overall or ["no checkpoint was scored"])]


def blocks(result: dict) -> list[tuple]:
    budget = result["budget_tokens"]
    B = [("h1", f"learnforget advise: {result['model']} on {result['data']} ({result['regime']}), budget {budget:,} tokens"),
         *_recommendation_blocks(result.get("recommendation") or {}),
         ("table", ["model", "data", "regime", "budget (tokens)", "pilot (tokens)", "costs for", "machine", "advise took (min)",
                    "created"],
          [[result["model"], result["data"], result["regime"], f"{budget:,}",
            f"{result['pilot_tokens']:,} ({result['pilot_fraction']:.1%})", result.get("hardware", "here"),
            result.get("machine", "–"), "–" if result.get("wall_seconds") is None else f"{result['wall_seconds'] / 60:.1f}",
            result.get("created", "–")]]),
         ("h2", "Forecast at the budget"),
         ("p", "Per method: each signal forecast at the budget as mid [lo, hi], the 90% prediction interval (nats/token); "
               "cost to train the budget here and on each GPU."), _forecast_table(result),
         ("h2", "Crossovers"),
         ("ul", [crossover_line(c, budget) for c in result.get("crossovers") or []] or ["None computed."]),
         ("h2", "Learning-rate bracket (successive halving)"), _bracket_table(result),
         ("h2", "Curves"),
         ("fig", "forecast", "Pilot points (filled), fitted curve with its 90% band to the budget, measured later "
                             "checkpoints (hollow); dashed: the pilot's end.")]
    if result.get("backtest"):
        B += _backtest_blocks(result["backtest"])
    cmds = result.get("commands") or {}
    if cmds:
        B.append(("h2", "Next"))
        for k, v in cmds.items():
            B += [("p", f"To {k}:" if k == "continue" else f"{k}:"), ("code", v)]
        if "continue" in cmds:
            B.append(("p", "Then the same learnforget advise command again: it trains nothing more and shows the measured "
                           "checkpoints beside the forecasts."))
    return B + [("note", METHOD)]


def _panel(ax, result: dict, sig: str, colors: dict) -> None:
    base, none = None, []
    for key, m in result["methods"].items():
        col, pts = colors[key], (m.get("points") or {}).get(sig) or {}
        xy = [(t, v) for t, v in zip(pts.get("tokens", []), pts.get("value", [])) if v is not None]
        base = base if base is not None else next((v for t, v in xy if t == 0), None)
        xy = [(t, v) for t, v in xy if t > 0]
        if xy:
            ax.plot(*zip(*xy), "o", color=col, ms=5)
        curve = (m.get("curve") or {}).get(sig)
        if curve:
            x = np.asarray(m["curve"]["tokens"], float)
            ok = x > 0
            ax.plot(x[ok], np.asarray(curve["mid"], float)[ok], "-", color=col, lw=1.6)
            ax.fill_between(x[ok], np.asarray(curve["lo"], float)[ok], np.asarray(curve["hi"], float)[ok], color=col, alpha=0.18, lw=0)
        else:
            none.append(m.get("label", key))
        meas = m.get("measured") or {}
        mxy = [(t, v) for t, v in zip(meas.get("tokens", []), meas.get(sig) or []) if v is not None and t > 0]
        if mxy:
            ax.plot(*zip(*mxy), "o", mfc="white", mec=col, mew=1.5, ms=7)
    if base is not None and sig != "kl":
        ax.axhline(base, color="0.4", ls=":", lw=1)
    ax.axvline(result["pilot_tokens"], color="0.3", ls="--", lw=1)
    ax.set(xscale="log", xlabel="training tokens (log)", ylabel=YLABEL[sig], title=TITLE[sig])
    if none:
        ax.text(0.01, 0.01, "no forecast: " + ", ".join(none), transform=ax.transAxes, fontsize=8, color="0.35")
    if not (ax.lines or ax.collections):
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")


def figure(result: dict) -> bytes:
    """One panel per signal, every method in its own colour; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    keys = list(result["methods"])
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(keys)}
    fig, axes = plt.subplots(1, len(SIGNALS), figsize=(15, 4.6), squeeze=False)
    fig.suptitle(f"{result['model']} on {result['data']} ({result['regime']}): pilot of {result['pilot_tokens']:,} tokens, "
                 f"forecast to {result['budget_tokens']:,}", fontsize=12)
    first = [t for m in keys for s in SIGNALS for t in ((result["methods"][m].get("points") or {}).get(s) or {}).get("tokens", [])
             if t > 0]
    for ax, sig in zip(axes[0], SIGNALS):
        _panel(ax, result, sig, colors)
        ax.set_xlim(min(first, default=result["pilot_tokens"]) / 1.3, result["budget_tokens"] * 1.3)
    handles = [Line2D([], [], color=colors[k], lw=2, label=result["methods"][k].get("label", k)) for k in keys]
    handles += [Line2D([], [], marker="o", ls="", color="0.2", label="pilot checkpoints"),
                Patch(color="0.2", alpha=0.2, label="forecast, 90% band"),
                Line2D([], [], marker="o", ls="", mfc="white", mec="0.2", label="measured later"),
                Line2D([], [], color="0.3", ls="--", label="end of the pilot"),
                Line2D([], [], color="0.4", ls=":", label="base model")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * (len(handles) > 5) + 0.045 * (len(handles) > 10), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write(out_dir: Path, result: dict) -> Path:
    """Write out_dir/forecast.md, forecast.html (figure embedded) and forecast.png; return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = figure(result)
    (out_dir / "forecast.png").write_bytes(png)
    B = blocks(result)
    (out_dir / "forecast.md").write_text(to_markdown(B))
    (out_dir / "forecast.html").write_text(to_html(B, {"forecast": png}, EXTRA_CSS))
    return out_dir / "forecast.html"
