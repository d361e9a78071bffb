"""The study report, read from a study's results.json alone (schema version 1, written by study.py):

    learnforget report <study-dir>   ->  <study-dir>/report/{report.html, report.md, *.png, summary.json}

results.json: {"version": 1, "study": {name, model, model_note, created, hardware, config},
  "base": {"tasks": {task: TaskResult}, "heldout": {"general" | "<regime>-<domain>": {loss, tokens}}},
  "runs": [{id, label, family (full | lora | full-regularized), regime (cpt | ift), domain (code | math),
            lr, rank, targets, seed, trainable_params, total_params, peak_rss_mb, tokens_per_s,
            checkpoints: [{tokens, budget, flops, heldout: {target, general: {loss, tokens}},
                           tasks: {task: TaskResult}}]}],
  "analysis": {spectrum: [...], intruders: [...], diversity: [...]}   (optional; written by study_analysis.py)}
analysis rows: spectrum {run_id, tokens, module_type, layer, rank90, full_rank} per weight matrix; intruders
{run_id, tokens, k, eps, count[, directions]} per eps; diversity {run_id ("base" for the base model), tokens, task,
n (samples per problem), distinct, distinct_correct (means over problems), pass_at_k {k: value}[, items]}.
TaskResult = {metric, value, stderr, n, chance, items: one score per item, in an order shared by
the base model and every checkpoint}. Runs with the same (regime, domain, label, lr) and different
seeds are averaged item by item. Learning: HumanEval pass@1 (code) / GSM8K (math) when the base
model was scored on it, else the held-out target loss. Forgetting: the paper's three-task mean
(kept for comparability), a "signal" score over the forgetting tasks whose base score is clear of
chance (a task at chance cannot show forgetting), and the held-out general-text loss.
base.heldout keys: "general" (general text) and "<regime>-<domain>" (e.g. "cpt-code": the base model on that
experiment's held-out target split); a missing one only drops a reference line (the report notes it).
A diversity row may carry "items": per-problem distinct-correct counts, in a problem order shared by every
row of that task; then claim (g) gets a paired bootstrap instead of a tolerance rule.
"""

from __future__ import annotations

import base64
import io
import html
import json
from pathlib import Path

import numpy as np

from . import stats
from .errors import UserError

LEARNING_TASK = {"code": "humaneval", "math": "gsm8k"}
PAPER_TASKS = ("hellaswag", "winogrande", "arc_challenge")
FAMILY_ORDER = {"full": 0, "full-regularized": 1, "lora": 2}
HIGHER_BETTER = {"metric": True, "signal": True, "paper": True, "target": False, "general": False}
TITLE = {"metric": "learning task", "target": "held-out target loss", "signal": "forgetting score (tasks above chance)",
         "paper": "paper's 3-task mean", "general": "held-out general-text loss"}
YLABEL = {"target": "held-out target loss (nats/token)", "general": "held-out general loss (nats/token)",
          "signal": "forgetting score: mean accuracy\n(tasks above chance)", "paper": "paper's 3-task mean accuracy"}
# ----------------------------------------------------------------------------- validation


def _need(obj, keys, where: str) -> None:
    if not isinstance(obj, dict):
        raise UserError(f"results.json: '{where or 'top level'}' must be a mapping, got {type(obj).__name__}")
    for k in keys:
        if k not in obj:
            raise UserError(f"results.json: missing field '{where + '.' if where else ''}{k}'")


def _task(tr, where: str, n_base: int | None = None) -> None:
    _need(tr, ("metric", "value", "stderr", "n", "chance", "items"), where)
    if len(tr["items"]) != tr["n"]:
        raise UserError(f"results.json: '{where}.items' has {len(tr['items'])} scores but n = {tr['n']}")
    if n_base is not None and tr["n"] != n_base:
        raise UserError(f"results.json: '{where}' has {tr['n']} items but the base model has {n_base}: items must be shared")


def _one_of(value, allowed, where: str) -> None:
    if value not in allowed:
        raise UserError(f"results.json: '{where}' must be one of {list(allowed)}, got {value!r}")


def validate(res: dict) -> dict:
    """Check every field the report reads; raise UserError naming the first missing or wrong one."""
    _need(res, ("version", "study", "base", "runs"), "")
    if res["version"] != 1:
        raise UserError(f"results.json: 'version' is {res['version']!r}; this report reads version 1")
    _need(res["study"], ("name", "model", "model_note", "created", "hardware", "config"), "study")
    _need(res["base"], ("tasks", "heldout"), "base")
    base = res["base"]["tasks"]
    for t, tr in base.items():
        _task(tr, f"base.tasks.{t}")
    for k, h in res["base"]["heldout"].items():
        _need(h, ("loss", "tokens"), f"base.heldout.{k}")
    if not isinstance(res["runs"], list) or not res["runs"]:
        raise UserError("results.json: 'runs' must be a non-empty list")
    for i, r in enumerate(res["runs"]):
        w = f"runs[{i}]"
        _need(r, ("id", "label", "family", "regime", "domain", "lr", "rank", "targets", "seed", "trainable_params",
                  "total_params", "peak_rss_mb", "tokens_per_s", "checkpoints"), w)
        _one_of(r["family"], FAMILY_ORDER, f"{w}.family")
        _one_of(r["regime"], ("cpt", "ift"), f"{w}.regime")
        _one_of(r["domain"], LEARNING_TASK, f"{w}.domain")
        if not r["checkpoints"]:
            raise UserError(f"results.json: '{w}.checkpoints' is empty")
        for j, c in enumerate(r["checkpoints"]):
            wc = f"{w}.checkpoints[{j}]"
            _need(c, ("tokens", "budget", "flops", "heldout", "tasks"), wc)
            _need(c["heldout"], ("target", "general"), f"{wc}.heldout")
            for k in ("target", "general"):
                _need(c["heldout"][k], ("loss", "tokens"), f"{wc}.heldout.{k}")
            for t, tr in c["tasks"].items():
                _task(tr, f"{wc}.tasks.{t}", base[t]["n"] if t in base else None)
    fields = {"spectrum": ("run_id", "tokens", "module_type", "layer", "rank90", "full_rank"),
              "intruders": ("run_id", "tokens", "k", "eps", "count"),
              "diversity": ("run_id", "tokens", "task", "n", "distinct", "distinct_correct", "pass_at_k")}
    for key, need in fields.items():
        for i, row in enumerate((res.get("analysis") or {}).get(key, [])):
            _need(row, need, f"analysis.{key}[{i}]")
    return res


def load(study_dir: Path) -> dict:
    p = Path(study_dir) / "results.json"
    if not p.exists():
        raise UserError(f"{p}: no results.json (run `learnforget study <config>` first)")
    try:
        return validate(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------- series and values


def _series(res: dict) -> list[dict]:
    """One series per (regime, domain, label, lr): checkpoints by tokens, seeds averaged item by item."""
    groups: dict[tuple, list] = {}
    for r in res["runs"]:
        groups.setdefault((r["regime"], r["domain"], r["label"], float(r["lr"])), []).append(r)
    out = []
    for (regime, domain, label, lr), runs in groups.items():
        by_tok: dict[int, list] = {}
        for r in runs:
            for c in r["checkpoints"]:
                by_tok.setdefault(int(c["tokens"]), []).append(c)
        points = []
        for tok, cs in sorted(by_tok.items()):
            names = [t for t in cs[0]["tasks"] if all(t in c["tasks"] for c in cs)]
            points.append({"tokens": tok, "flops": float(np.mean([c["flops"] for c in cs])),
                           "target": float(np.mean([c["heldout"]["target"]["loss"] for c in cs])),
                           "general": float(np.mean([c["heldout"]["general"]["loss"] for c in cs])),
                           "tasks": {t: np.mean([np.asarray(c["tasks"][t]["items"], float) for c in cs], axis=0) for t in names}})
        r0 = runs[0]
        out.append({"regime": regime, "domain": domain, "group": f"{regime}/{domain}", "label": label, "lr": lr,
                     "family": r0["family"], "rank": r0["rank"], "trainable_params": r0["trainable_params"],
                     "total_params": r0["total_params"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                     "seeds": sorted(r["seed"] for r in runs), "run_ids": [r["id"] for r in runs], "points": points})
    return sorted(out, key=lambda s: (s["group"], FAMILY_ORDER[s["family"]], s["label"], s["lr"]))


def _value(tasks: dict, names: list[str]):
    """(value, lo, hi) of the mean over `names` with its bootstrap interval, or None if a task is missing."""
    it = stats.subset(tasks, names)
    return (stats.point(it), *stats.interval(stats.dist(it))) if it else None


def _context(res: dict) -> dict:
    base, heldout = res["base"]["tasks"], res["base"]["heldout"]
    tasks = {}
    for t, tr in base.items():
        v, lo, hi = stats.mean_ci(tr["items"], t)
        role = "learning" if t in LEARNING_TASK.values() else "forgetting"
        tasks[t] = {"task": t, "metric": tr["metric"], "n": tr["n"], "value": v, "lo": lo, "hi": hi, "chance": tr["chance"],
                    "status": stats.above_chance(lo, hi, tr["chance"]), "mdd": stats.min_detectable(v, tr["n"]), "role": role}
    forgetting = [t for t in tasks if tasks[t]["role"] == "forgetting"]
    for t in forgetting:
        tasks[t]["verdict"] = "carries a verdict" if tasks[t]["status"] == "above" else "cannot carry a verdict"
    items = {t: np.asarray(tr["items"], float) for t, tr in base.items()}
    ctx = {"tasks": tasks, "signal": [t for t in forgetting if tasks[t]["status"] == "above"],
           "paper": [t for t in PAPER_TASKS if t in tasks], "base": {}}
    for domain, t in LEARNING_TASK.items():
        ctx["metric_" + domain] = [t] if t in tasks else []
    for regime in ("cpt", "ift"):
        for domain in LEARNING_TASK:
            tgt = heldout.get(f"{regime}-{domain}")
            ctx["base"][f"{regime}/{domain}"] = {
                "metric": _value(items, ctx["metric_" + domain]), "signal": _value(items, ctx["signal"]),
                "paper": _value(items, ctx["paper"]), "target": (tgt["loss"], None, None) if tgt else None,
                "general": (heldout["general"]["loss"], None, None) if "general" in heldout else None}
    return ctx


def _fill_values(series: list[dict], ctx: dict) -> None:
    for s in series:
        for p in s["points"]:
            p["v"] = {sig: _value(p["tasks"], stats.signal_tasks(ctx, sig, s["domain"])) for sig in ("metric", "signal", "paper")}
            p["v"]["target"], p["v"]["general"] = (p["target"], None, None), (p["general"], None, None)


def _best(series: list[dict]) -> list[dict]:
    """Per (regime, domain, label): the lr with the best target metric at the final checkpoint (ties / no
    metric: the lower held-out target loss)."""
    best: dict[tuple, dict] = {}
    for s in series:
        fin = s["points"][-1]
        s["score"] = (fin["v"]["metric"][0] if fin["v"]["metric"] else -np.inf, -fin["target"])
        key = (s["group"], s["label"])
        if key not in best or s["score"] > best[key]["score"]:
            best[key] = s
    for s in series:
        s["best"] = best[(s["group"], s["label"])] is s
    return [s for s in series if s["best"]]


def analyse(res: dict) -> dict:
    """Everything the report shows, computed from a validated results dict."""
    ctx = _context(res)
    series = _series(res)
    _fill_values(series, ctx)
    best = _best(series)
    groups = sorted({s["group"] for s in series})
    learn = {g: "metric" if any(p["v"]["metric"] for s in best if s["group"] == g for p in s["points"]) else "target"
             for g in groups}
    A = {"res": res, "ctx": ctx, "series": series, "best": best, "groups": groups, "learn": learn}
    A["findings"] = stats.claims(A)
    return A


def findings(results: dict) -> list[dict]:
    """The paper's claims with verdicts computed from `results` (a results.json dict)."""
    return analyse(validate(results))["findings"]


# ----------------------------------------------------------------------------- figures


def _colors(A) -> dict:
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(s["label"] for s in sorted(A["series"], key=lambda s: (FAMILY_ORDER[s["family"]], s["label"]))))
    cmap = plt.get_cmap("tab10")
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def _ylabel(A, g, sig) -> str:
    if sig != "metric":
        return YLABEL[sig]
    t = A["ctx"]["metric_" + g.split("/")[1]]
    return f"{t[0]} {A['ctx']['tasks'][t[0]]['metric']} (accuracy)" if t else "learning task (none evaluated)"


def _grid(A, cols: list[str], title: str):
    import matplotlib.pyplot as plt

    w = max(5.4 * len(cols), 9) if len(cols) < 3 else 4.5 * len(cols)
    fig, axes = plt.subplots(len(A["groups"]), len(cols), figsize=(w, 3.7 * len(A["groups"])), squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, axes


def _legend_or_empty(ax) -> None:
    """A legend if the panel has lines, else say plainly that nothing was measured there."""
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")


def _vs_tokens(A, cols: list[str], title: str):
    """One panel per (group, signal): best-lr series per label against tokens, 95% bands, base as a dashed line."""
    col = _colors(A)
    fig, axes = _grid(A, cols, title)
    for gi, g in enumerate(A["groups"]):
        tmax = max(p["tokens"] for s in A["series"] if s["group"] == g for p in s["points"])
        for ci, sig in enumerate(cols):
            ax = axes[gi][ci]
            mine = [s for s in A["best"] if s["group"] == g]
            for k, s in enumerate(mine):
                pts = [(p["tokens"], *p["v"][sig]) for p in s["points"] if p["v"][sig]]
                if not pts:
                    continue
                x, y, lo, hi = zip(*pts)
                if len(x) == 1:  # single points at the same tokens: dodge sideways so the error bars do not overlap
                    x = (x[0] + (k - (len(mine) - 1) / 2) * 0.015 * tmax,)
                c = col[s["label"]]
                ax.plot(x, y, "o-", color=c, label=f"{s['label']} (lr {s['lr']:g})", ms=4)
                if lo[0] is not None and len(x) > 1:
                    ax.fill_between(x, lo, hi, color=c, alpha=0.18, lw=0)
                elif lo[0] is not None:  # one scored checkpoint (e.g. benchmarks at the final one only): an error bar
                    ax.errorbar(x, y, yerr=[[y[0] - lo[0]], [hi[0] - y[0]]], color=c, capsize=4)
            base = A["ctx"]["base"][g][sig]
            if base:
                ax.axhline(base[0], color="0.3", ls="--", lw=1, label="base model")
            ax.set(xlabel="training tokens", ylabel=_ylabel(A, g, sig), title=f"{g}: {TITLE[sig]}", xlim=(0, 1.05 * tmax))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            _legend_or_empty(ax)
    fig.tight_layout()
    return fig


def _scatter(ax, A, g, xsig, ysig, col):
    pts = [(s, p) for s in A["series"] if s["group"] == g for p in s["points"] if p["v"][xsig] and p["v"][ysig]]
    if not pts:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")
        return
    tmax = max(p["tokens"] for _, p in pts)
    for lab in dict.fromkeys(s["label"] for s, _ in pts):
        mine = [(s, p) for s, p in pts if s["label"] == lab]
        ax.scatter([p["v"][xsig][0] for _, p in mine], [p["v"][ysig][0] for _, p in mine], s=[15 + 110 * p["tokens"] / tmax for _, p in mine],
                   color=col[lab], alpha=[0.9 if s["best"] else 0.35 for s, _ in mine], label=lab, edgecolor="k", lw=0.4)
    base = A["ctx"]["base"][g]
    if base[xsig] and base[ysig]:
        ax.scatter([base[xsig][0]], [base[ysig][0]], marker="*", s=160, color="0.2", label="base model")
    sx, sy = (1 if HIGHER_BETTER[xsig] else -1), (1 if HIGHER_BETTER[ysig] else -1)
    idx = stats.pareto([sx * p["v"][xsig][0] for _, p in pts], [sy * p["v"][ysig][0] for _, p in pts])
    ax.plot([pts[i][1]["v"][xsig][0] for i in idx], [pts[i][1]["v"][ysig][0] for i in idx], "k:", lw=1.2, label="Pareto front")
    if not HIGHER_BETTER[xsig]:
        ax.invert_xaxis()
    if not HIGHER_BETTER[ysig]:
        ax.invert_yaxis()
    ax.legend(fontsize=8)


def fig_tradeoff(A):
    col = _colors(A)
    fig, axes = _grid(A, ["l", "t"], "Learning vs forgetting: each point a checkpoint (size = tokens; faded = not the best lr); "
                      "better is up and right")
    for gi, g in enumerate(A["groups"]):
        lx = A["learn"][g]
        for ci, (xs, ys) in enumerate([("target", "general"), (lx, "signal")]):
            ax = axes[gi][ci]
            _scatter(ax, A, g, xs, ys, col)
            ax.set(xlabel=_ylabel(A, g, xs) + (" (axis inverted)" if not HIGHER_BETTER[xs] else ""),
                   ylabel=_ylabel(A, g, ys) + (" (inverted)" if not HIGHER_BETTER[ys] else ""), title=f"{g}")
    fig.tight_layout()
    return fig


def fig_cost(A):
    col = _colors(A)
    fig, axes = _grid(A, ["f", "p"], "Learning against compute and against trainable parameters (best lr per method)")
    for gi, g in enumerate(A["groups"]):
        sig = A["learn"][g]
        for s in [s for s in A["best"] if s["group"] == g]:
            pts = [(p["flops"], p["v"][sig][0]) for p in s["points"] if p["v"][sig]]
            if pts:
                axes[gi][0].plot(*zip(*pts), "o-", color=col[s["label"]], label=s["label"], ms=4)
                axes[gi][1].scatter([s["trainable_params"]], [pts[-1][1]], color=col[s["label"]], s=60, label=f"{s['label']} ({s['peak_rss_mb']:.0f} MB peak)")
        for ax, xl in zip(axes[gi], ["training compute (FLOPs)", "trainable parameters"]):
            ax.set(xscale="log", xlabel=xl, ylabel=_ylabel(A, g, sig) + ("" if HIGHER_BETTER[sig] else "\n(axis inverted: better is up)"),
                   title=f"{g}" + (": final checkpoint" if "param" in xl else ""))
            if not HIGHER_BETTER[sig]:
                ax.invert_yaxis()
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_lr(A):
    col = _colors(A)
    cols = ["metric", "target"] if "metric" in A["learn"].values() else ["target"]
    fig, axes = _grid(A, cols, "Learning-rate sensitivity: final checkpoint vs learning rate (filled marker = best lr)")
    for gi, g in enumerate(A["groups"]):
        for ci, sig in enumerate(cols):
            ax = axes[gi][ci]
            for lab in dict.fromkeys(s["label"] for s in A["series"] if s["group"] == g):
                ss = [s for s in A["series"] if s["group"] == g and s["label"] == lab and s["points"][-1]["v"][sig]]
                if not ss:
                    continue
                v = [s["points"][-1]["v"][sig] for s in ss]
                err = None if v[0][1] is None else np.array([[x[0] - x[1] for x in v], [x[2] - x[0] for x in v]])
                ax.errorbar([s["lr"] for s in ss], [x[0] for x in v], yerr=err, fmt="o-", color=col[lab], label=lab, ms=4, capsize=3, mfc="white")
                b = next(s for s in ss if s["best"]) if any(s["best"] for s in ss) else None
                if b:
                    ax.plot([b["lr"]], [b["points"][-1]["v"][sig][0]], "o", color=col[lab], ms=7, zorder=5)
            ax.set(xscale="log", xlabel="learning rate", ylabel=_ylabel(A, g, sig), title=f"{g}: {TITLE[sig]}")
            _legend_or_empty(ax)
    fig.tight_layout()
    return fig


def _spectrum_series(A) -> list[tuple[dict, int, list[dict]]]:
    """(best-lr series, its last analysed tokens, its spectrum rows there) for every series with spectrum rows."""
    rows = (A["res"].get("analysis") or {}).get("spectrum") or []
    out = []
    for s in A["best"]:
        mine = [r for r in rows if r["run_id"] in s["run_ids"]]
        if mine:
            last = max(r["tokens"] for r in mine)
            out.append((s, last, [r for r in mine if r["tokens"] == last]))
    return out


def fig_spectrum(A):
    """Per experiment: median rank@90% of ΔW over layers per module type (bars; whiskers = min-max over
    layers), for full fine-tuning and each LoRA, against the LoRA ranks (dashed)."""
    import matplotlib.pyplot as plt

    col, found = _colors(A), _spectrum_series(A)
    groups = [g for g in A["groups"] if any(s["group"] == g for s, _, _ in found)]
    fig, axes = plt.subplots(1, len(groups), figsize=(max(7.0, 6.5 * len(groups)), 4.2), squeeze=False)
    fig.suptitle("Rank needed for 90% of the update's energy (rank@90% of ΔW) per module type\n"
                 "best lr per method, last analysed checkpoint; dashed: LoRA ranks", fontsize=11)
    for ax, g in zip(axes[0], groups):
        mine = [(s, last, rows) for s, last, rows in found if s["group"] == g]
        types = sorted({r["module_type"] for _, _, rows in mine for r in rows}, key=_type_key)
        width = 0.8 / len(mine)
        for i, (s, last, rows) in enumerate(mine):
            xs, med, lo, hi = [], [], [], []
            for j, t in enumerate(types):
                v = [r["rank90"] for r in rows if r["module_type"] == t]
                if v:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    med.append(float(np.median(v)))
                    lo.append(med[-1] - min(v))
                    hi.append(max(v) - med[-1])
            ax.bar(xs, med, width, yerr=[lo, hi], color=col[s["label"]], capsize=2, label=f"{s['label']} (lr {s['lr']:g}, {last:,} tokens)")
        for r in sorted({s["rank"] for s, _, _ in mine if s["rank"]}):
            ax.axhline(r, color="0.3", ls="--", lw=0.9)
            ax.text(-0.55, r, f"r={r}", va="bottom", ha="left", fontsize=8, color="0.3")
        full = {t: max(r["full_rank"] for _, _, rows in mine for r in rows if r["module_type"] == t) for t in types}
        ax.set_xticks(range(len(types)), [f"{t}\n(of {full[t]})" for t in types])
        ax.set(yscale="log", ylabel="rank@90% of ΔW (log)", title=f"{g}", xlim=(-0.6, len(types) - 0.4))
        ax.set_ylim(top=ax.get_ylim()[1] * 3)  # headroom for the legend above the bars
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def _type_key(t: str) -> tuple[int, str]:
    order = ("q", "k", "v", "o", "gate", "up", "down")  # the paper's order; other architectures' names after
    return (order.index(t), "") if t in order else (len(order), t)


def figures(A) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn_cols = ["metric", "target"] if "metric" in A["learn"].values() else ["target"]
    makers = {"learning": lambda: _vs_tokens(A, learn_cols, "Learning vs training tokens (best lr per method; band = 95% bootstrap interval)"),
              "forgetting": lambda: _vs_tokens(A, ["signal", "paper", "general"], "Forgetting vs training tokens (best lr per method)"),
              "tradeoff": lambda: fig_tradeoff(A), "cost": lambda: fig_cost(A), "lr_sensitivity": lambda: fig_lr(A)}
    if _spectrum_series(A):  # only when results.json has spectrum rows for a best-lr series
        makers["spectrum"] = lambda: fig_spectrum(A)
    out = {}
    for name, make in makers.items():
        fig = make()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------- tables and pages


def _ci(v) -> str:
    if not v:
        return "–"
    return f"{v[0]:.3f}" if v[1] is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def checkpoint_rows(A) -> list[dict]:
    """Every run x checkpoint (plus the base model per experiment) with 95% intervals."""
    rows = []
    for g in A["groups"]:
        b = A["ctx"]["base"][g]
        rows.append({"group": g, "label": "base", "lr": None, "best": None, "tokens": 0, "flops": 0.0, **{k: b[k] for k in HIGHER_BETTER}})
        for s in [s for s in A["series"] if s["group"] == g]:
            for p in s["points"]:
                rows.append({"group": g, "label": s["label"], "lr": s["lr"], "best": s["best"], "tokens": p["tokens"],
                             "flops": p["flops"], **{k: p["v"][k] for k in HIGHER_BETTER}})
    return rows


def _scale(A) -> tuple[dict, str]:
    res, ctx = A["res"], A["ctx"]
    toks = int(max(c["tokens"] for r in res["runs"] for c in r["checkpoints"]))
    forg = [t for t, v in ctx["tasks"].items() if v["role"] == "forgetting"]
    items = {t: v["n"] for t, v in ctx["tasks"].items()}
    mdd = min((ctx["tasks"][t]["mdd"] for t in ctx["signal"]), default=None)
    scale = {"runs": len(res["runs"]), "max_tokens_per_run": toks, "items_per_task": items, "signal_tasks": ctx["signal"],
             "forgetting_tasks": forg, "smallest_detectable_accuracy_difference": mdd}
    text = (f"This study trained {len(res['runs'])} runs for at most {toks:,} tokens each (the paper: up to 20 billion) and scored "
            f"{', '.join(f'{t} on {n} items' for t, n in items.items()) or 'no benchmark items'}. "
            f"{len(ctx['signal'])} of {len(forg)} forgetting tasks {'is' if len(ctx['signal']) == 1 else 'are'} clearly above chance for the base model"
            + (f"; between two systems, accuracy differences below about {mdd:.2f} cannot be told from noise at these item counts. "
               if mdd else ". ")
            + "A study this small can show the direction of the learning/forgetting trade-off in the held-out losses and large "
              "accuracy differences; it cannot confirm or refute the paper's effect sizes at its scale, and 'not significant' "
              "below means this study is too small to tell, not that the effect is absent.")
    return scale, text


def _count(xs) -> list[tuple[str, int]]:
    xs = list(xs)
    return [(v, xs.count(v)) for v in dict.fromkeys(xs)]


def _blocks(A) -> list[tuple]:
    res, ctx, st = A["res"], A["ctx"], A["res"]["study"]
    scale, sentence = _scale(A)
    B = [("h1", f"learnforget study report: {st['name']}"),
         ("table", ["model", "model note", "created", "hardware"], [[st["model"], st["model_note"], st["created"], st["hardware"]]]),
         ("p", sentence), ("h2", "Findings")]
    verdicts = lambda c: ", ".join(f"{n} {v}" for v, n in _count(f["verdict"] for f in A["findings"] if f["claim"] == c))
    B.append(("ul", [f"({c}) {t}: {verdicts(c)}" for c, t in stats.CLAIMS.items()]))
    B.append(("table", ["claim", "experiment", "comparison", "signal", "verdict", "estimate [95% CI]", "numbers"],
              [[f"({f['claim']})", f["group"], f["comparison"], f["signal"], f["verdict"],
                "–" if f["estimate"] is None else (f"{f['estimate']:+.3f}" + (f" [{f['ci'][0]:+.3f}, {f['ci'][1]:+.3f}]" if f["ci"] else "")),
                f["numbers"]] for f in A["findings"]]))
    B.append(("p", "How the verdicts are computed (each method at its best learning rate: best learning metric at the final "
                   "checkpoint; ties, and studies without a learning task: lowest held-out target loss):"))
    B.append(("ul", [f"{k}: {v}" for k, v in stats.RULES.items()]))
    B += [("h2", "Learning vs tokens"), ("fig", "learning", "Learning task metric and held-out target loss vs training tokens."),
          ("h2", "Forgetting vs tokens"),
          ("fig", "forgetting", "Forgetting score over the tasks where the base model is above chance, the paper's three-task mean "
                                "(kept for comparability, includes tasks at chance for small models), and held-out general loss."),
          ("h2", "Learning-forgetting trade-off"), ("fig", "tradeoff", "Each point a checkpoint; dotted line: Pareto front over all runs."),
          ("fig", "cost", "Learning vs training FLOPs, and vs trainable parameters at the final checkpoint (legend: peak memory)."),
          ("h2", "Learning-rate protocol"), ("fig", "lr_sensitivity", "Final learning metric vs learning rate per method (log x).")]
    B.append(("table", ["experiment", "method", "lrs tried", "best lr", "final learning metric", "final target loss"],
              [[s["group"], s["label"], ", ".join(f"{x['lr']:g}" for x in A["series"] if x["group"] == s["group"] and x["label"] == s["label"]),
                f"{s['lr']:g}", _ci(s["points"][-1]["v"]["metric"]), f"{s['points'][-1]['target']:.3f}"] for s in A["best"]]))
    B += [("h2", "Base model: which tasks can carry a verdict"),
          ("table", ["task", "metric", "role", "n", "value [95% CI]", "chance", "vs chance", "verdict", "min. detectable difference"],
           [[t, v["metric"], v["role"], v["n"], _ci((v["value"], v["lo"], v["hi"])), "–" if v["chance"] is None else f"{v['chance']:.3f}",
             v["status"], v.get("verdict", "learning task"), f"{v['mdd']:.3f}"] for t, v in ctx["tasks"].items()]),
          ("p", "Held-out losses of the base model (nats/token): " + (", ".join(f"{k} {h['loss']:.3f} ({h['tokens']:,} tokens)"
                                                                        for k, h in res["base"]["heldout"].items()) or "none recorded") + "."),
          ("h2", "Every run and checkpoint (95% bootstrap intervals over items)"),
          ("table", ["experiment", "method", "lr", "best lr?", "tokens", "FLOPs", "learning metric", "target loss", "general loss",
                     "forgetting score", "paper 3-task"],
           [[r["group"], r["label"], "–" if r["lr"] is None else f"{r['lr']:g}", {True: "yes", False: "", None: ""}[r["best"]],
             f"{r['tokens']:,}", f"{r['flops']:.2e}", *(_ci(r[k]) for k in ("metric", "target", "general", "signal", "paper"))]
            for r in checkpoint_rows(A)])]
    return B + _analysis_blocks(A) + _notes(A)


def _run_names(A) -> dict:
    """run id -> "label (lr x[, seed s])", so the analysis tables name runs as the rest of the report does."""
    runs = A["res"]["runs"]
    seeds = len({r["seed"] for r in runs}) > 1
    names = {r["id"]: f"{r['regime']}/{r['domain']} {r['label']} (lr {r['lr']:g}"
             + (f", seed {r['seed']})" if seeds else ")") for r in runs}
    return {**names, "base": "base model"}


def _analysis_blocks(A) -> list[tuple]:
    an, B, name = A["res"].get("analysis") or {}, [], _run_names(A)
    if an.get("spectrum"):
        agg: dict = {}
        for r in an["spectrum"]:
            agg.setdefault((name.get(r["run_id"], r["run_id"]), r["tokens"], r["module_type"]), []).append((r["rank90"], r["full_rank"]))
        keys = sorted(agg, key=lambda k: (k[0], k[1], _type_key(k[2])))
        B += [("h2", "Spectrum of the weight updates"),
              ("p", "rank@90%: the number of singular directions holding 90% of the update's squared singular values "
                    "(ΔW = tuned - base; for LoRA ΔW = B·A·scale, so it cannot exceed the LoRA rank). Median over layers."),
              ("table", ["run", "tokens", "module", "median rank@90%", "full rank", "fraction of full rank"],
               [[k[0], f"{k[1]:,}", k[2], f"{np.median([x[0] for x in agg[k]]):.0f}", f"{np.median([x[1] for x in agg[k]]):.0f}",
                 f"{np.median([x[0] / x[1] for x in agg[k]]):.3f}"] for k in keys])]
        if _spectrum_series(A):
            B.append(("fig", "spectrum", "Median rank@90% of ΔW over layers per module type (whiskers: min-max over layers), "
                                         "full fine-tuning and LoRA at their best learning rates; dashed: the LoRA ranks."))
    if an.get("intruders"):
        eps = sorted({float(r["eps"]) for r in an["intruders"]})
        piv: dict = {}
        for r in an["intruders"]:
            key = (name.get(r["run_id"], r["run_id"]), r["tokens"], r["k"], r.get("directions"))
            piv.setdefault(key, {})[float(r["eps"])] = r["count"]
        B += [("h2", "Intruder dimensions"),
              ("p", "Among the top-k singular directions of each tuned weight, the number whose largest |cosine| with any "
                    "singular direction of the base weight is below eps (arXiv 2410.21228), summed over the weights."),
              ("table", ["run", "tokens", "k", "directions checked"] + [f"eps {e:g}" for e in eps],
               [[k[0], f"{k[1]:,}", k[2], "–" if k[3] is None else k[3]] + [piv[k].get(e, "–") for e in eps] for k in sorted(piv)])]
    if an.get("diversity"):
        B += [("h2", "Diversity of sampled solutions"),
              ("p", "Per problem, means over problems: n samples, correct ones, distinct ones and distinct correct ones "
                    "(HumanEval: distinct after normalising the code's syntax tree; GSM8K: distinct reasoning text), unbiased pass@k."),
              ("table", ["run", "tokens", "task", "n", "correct", "distinct", "distinct correct [95% CI]", "pass@k"],
              [[name.get(r["run_id"], r["run_id"]), f"{r['tokens']:,}", r["task"], r["n"],
                "–" if r.get("correct") is None else f"{r['correct']:.2f}", f"{r['distinct']:.2f}",
                f"{r['distinct_correct']:.2f}" + (f" [{r['distinct_correct_ci'][0]:.2f}, {r['distinct_correct_ci'][1]:.2f}]"
                                                  if r.get("distinct_correct_ci") else ""),
                ", ".join(f"@{k} {v:.2f}" for k, v in r["pass_at_k"].items())] for r in an["diversity"]])]
    return B


def _notes(A) -> list[tuple]:
    miss = [g for g in A["groups"] if not A["ctx"]["base"][g]["target"]]
    if not miss and A["ctx"]["base"][A["groups"][0]]["general"]:
        return []
    txt = [f"base.heldout has no '{g.replace('/', '-')}' entry: no base reference for that target loss" for g in miss]
    if not A["ctx"]["base"][A["groups"][0]]["general"]:
        txt.append("base.heldout has no 'general' entry: no base reference for the general loss")
    return [("h2", "Notes"), ("p", "; ".join(txt) + ".")]


VERDICT_CLASS = {stats.REPRODUCED: "yes", stats.NOT_REPRODUCED: "no", stats.NOT_SIGNIFICANT: "ns", stats.NOT_RUN: "nr"}
CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
       "th{background:#f2f2f2}img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:13px}"
       ".yes{background:#d9f2d9;font-weight:bold}.no{background:#f8d7d7;font-weight:bold}.ns{background:#eee}.nr{color:#888}")


def _html(B, pngs: dict) -> str:
    e, out = (lambda x: html.escape(x, quote=False)), []
    for b in B:
        if b[0] in ("h1", "h2"):
            out.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "fig":
            out.append(f'<figure><img alt="{b[1]}" src="data:image/png;base64,{base64.b64encode(pngs[b[1]]).decode()}">'
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
        else:
            cell = lambda c: f'<td class="{VERDICT_CLASS[c]}">{e(c)}</td>' if c in VERDICT_CLASS else f"<td>{e(str(c))}</td>"
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in b[2]) + "</table>")
    return f'<!doctype html><html><head><meta charset="utf-8"><title>{e(B[0][1])}</title><style>{CSS}</style></head><body>\n' \
           + "\n".join(out) + "\n</body></html>\n"


def _md(B) -> str:
    out = []
    for b in B:
        if b[0] in ("h1", "h2"):
            out.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join("- " + x for x in b[1]))
        elif b[0] == "fig":
            out.append(f"![{b[2]}]({b[1]}.png)\n\n*{b[2]}*")
        else:
            c = lambda x: str(x).replace("|", "\\|").replace("\n", " ")
            out.append("\n".join(["| " + " | ".join(map(c, b[1])) + " |", "|" + "---|" * len(b[1])]
                                 + ["| " + " | ".join(map(c, row)) + " |" for row in b[2]]))
    return "\n\n".join(out) + "\n"


def summary(A) -> dict:
    """The report's computed tables, as JSON-ready data (written to report/summary.json)."""
    tasks = {t: {k: v for k, v in row.items()} for t, row in A["ctx"]["tasks"].items()}
    return {"study": A["res"]["study"]["name"], "scale": _scale(A)[0], "base_tasks": tasks,
            "best_lr": [{"group": s["group"], "label": s["label"], "lr": s["lr"]} for s in A["best"]],
            "checkpoints": checkpoint_rows(A), "findings": A["findings"], "rules": stats.RULES}


def write(study_dir: Path) -> Path:
    """Write <study_dir>/report/ (report.html with embedded figures, report.md, PNGs, summary.json);
    return the HTML path."""
    study_dir = Path(study_dir)
    A = analyse(load(study_dir))
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    pngs = figures(A)
    for name, data in pngs.items():
        (out / f"{name}.png").write_bytes(data)
    B = _blocks(A)
    (out / "report.md").write_text(_md(B))
    (out / "summary.json").write_text(json.dumps(summary(A), indent=1, default=_json))
    (out / "report.html").write_text(_html(B, pngs))
    return out / "report.html"


def _json(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)
