"""The report's figures (matplotlib, PNG bytes): learning and forgetting against tokens, the
learning-forgetting trade-off, cost, learning-rate sensitivity and the update spectrum."""

from __future__ import annotations

import io

import numpy as np

from .. import stats
from .context import Analysis, better
from .findings import SIGNAL_NAME

YLABEL = {"target": "held-out target loss (nats/token)", "general": "held-out general loss (nats/token)",
          "signal": "forgetting score: mean accuracy\n(tasks above chance)", "paper": "paper's 3-task mean accuracy",
          "kl_general": "KL(base || tuned) on general text\n(nats/token)", "kl_target": "KL(base || tuned) on target text\n(nats/token)"}
TYPE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")  # the paper's order; other architectures' names after


def type_key(t: str) -> tuple[int, str]:
    return (TYPE_ORDER.index(t), "") if t in TYPE_ORDER else (len(TYPE_ORDER), t)


def _colors(A: Analysis) -> dict:
    import matplotlib.pyplot as plt

    from .schema import FAMILY_ORDER

    labels = list(dict.fromkeys(s.label for s in sorted(A.series, key=lambda s: (FAMILY_ORDER[s.family], s.label))))
    cmap = plt.get_cmap("tab10")
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def _ylabel(A: Analysis, g: str, sig: str) -> str:
    if sig != "metric":
        return YLABEL[sig]
    t = A.task_names("metric", g.split("/")[1])
    return f"{t[0]} {A.tasks[t[0]].metric} (accuracy)" if t else "learning task (none evaluated)"


def _grid(A: Analysis, cols: list[str], title: str):
    import matplotlib.pyplot as plt

    w = max(5.4 * len(cols), 9) if len(cols) < 3 else 4.5 * len(cols)
    fig, axes = plt.subplots(len(A.groups), len(cols), figsize=(w, 3.7 * len(A.groups)), squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, axes


def _legend_or_empty(ax) -> None:
    """A legend if the panel has lines, else say plainly that nothing was measured there."""
    if ax.lines or ax.collections:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")


def _vs_tokens(A: Analysis, cols: list[str], title: str):
    """One panel per (group, signal): best-lr series per label against tokens from the base model, 95% bands."""
    col = _colors(A)
    fig, axes = _grid(A, cols, title)
    for gi, g in enumerate(A.groups):
        tmax = max(p.tokens for s in A.series if s.group == g for p in s.points)
        for ci, sig in enumerate(cols):
            ax = axes[gi][ci]
            base = A.base[g]
            for s in [s for s in A.best if s.group == g]:
                pts = [(p.tokens, *v) for p in [base, *s.points] if (v := A.value(p, sig, s.domain))]
                if len(pts) < 2:
                    continue
                x, y, lo, hi = zip(*pts)
                ax.plot(x, y, "o-" if s.learned else "o:", color=col[s.label], label=s.who + ("" if s.learned else " (did not learn)"), ms=4)
                ax.fill_between(x, lo, hi, color=col[s.label], alpha=0.18, lw=0)
            bv = A.value(base, sig, g.split("/")[1])
            if bv and not sig.startswith("kl"):
                ax.axhline(bv[0], color="0.3", ls="--", lw=1, label="base model")
            ax.set(xlabel="training tokens", ylabel=_ylabel(A, g, sig), title=f"{g}: {SIGNAL_NAME[sig]}", xlim=(0, 1.05 * tmax))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            _legend_or_empty(ax)
    fig.tight_layout()
    return fig


def _tradeoff_panel(ax, A: Analysis, g: str, ysig: str, col: dict) -> None:
    """Each method's best-lr curve from the base point (x: target loss falling to the right, y: forgetting),
    the Pareto front over the runs that learned; runs that did not learn are listed, not drawn."""
    base, domain, front = A.base[g], g.split("/")[1], []
    left_out = []
    for s in [s for s in {id(x): x for x in A.series + A.best}.values() if s.group == g]:  # sweeps and verdict runs
        pts = [(A.value(p, "target", domain), A.value(p, ysig, domain)) for p in [base, *s.points]]
        pts = [(x[0], y[0]) for x, y in pts if x and y]
        if len(pts) < 2:
            continue
        if not s.learned:
            left_out.append(s.who)
            continue
        front += pts[1:]
        ax.plot(*zip(*pts), "o-" if s.best else "o:", color=col[s.label], alpha=1.0 if s.best else 0.35, ms=4,
                label=s.who if s.best else None)
    bx, by = A.value(base, "target", domain), A.value(base, ysig, domain)
    if bx and by:
        ax.scatter([bx[0]], [by[0]], marker="*", s=160, color="0.2", label="base model", zorder=5)
    if front:
        xs, ys = zip(*front)
        idx = stats.pareto([-x for x in xs], [y if better(ysig) else -y for y in ys])
        ax.plot([xs[i] for i in idx], [ys[i] for i in idx], "k:", lw=1.2, label="Pareto front")
    ax.invert_xaxis()
    if not better(ysig):
        ax.invert_yaxis()
    if left_out:
        ax.text(0.01, 0.01, "not drawn (did not learn): " + ", ".join(left_out), transform=ax.transAxes, fontsize=7, color="0.4")
    _legend_or_empty(ax)


def fig_tradeoff(A: Analysis):
    col = _colors(A)
    cols = ["general", "kl_general"] + (["signal"] if A.above else [])
    fig, axes = _grid(A, cols, "Learning vs forgetting: each method's checkpoints from the base model (faded: other learning "
                               "rates); better is up and right")
    for gi, g in enumerate(A.groups):
        for ci, ysig in enumerate(cols):
            ax = axes[gi][ci]
            _tradeoff_panel(ax, A, g, ysig, col)
            ax.set(xlabel=YLABEL["target"] + " (axis inverted)", ylabel=YLABEL[ysig] + ("" if better(ysig) else " (inverted)"), title=g)
    fig.tight_layout()
    return fig


def _per_seed(sig: dict) -> np.ndarray:
    """(seeds,) a signal's value in each seed's run (the mean over its unit sets)."""
    return np.mean([u.scores.sum(1) / u.counts.sum() for u in sig.values()], axis=0)


def fig_differences(A: Analysis):
    """What the verdicts rest on: each best-lr method minus full fine-tuning at every checkpoint, paired by seed and
    document, with the interval the verdicts use (stats.compare), one faint line per seed, and the +-margin band."""
    col = _colors(A)
    cols = (["metric"] if "metric" in A.learn.values() else []) + ["target", "general", "kl_general"]
    fig, axes = _grid(A, cols, "Each method minus full fine-tuning, paired by seed and document (bar: 95% interval; faint: "
                               "one seed each; grey band: +-margin)")
    for gi, g in enumerate(A.groups):
        full = next((s for s in A.of_family(g, "full")), None)
        others = [s for s in A.best if s.group == g and s is not full]
        for ci, sig in enumerate(cols):
            ax = axes[gi][ci]
            m = A.margin(sig)
            ax.axhspan(-m, m, color="0.85", lw=0)
            ax.axhline(0, color="0.3", lw=0.8)
            for k, s in enumerate(others if full else []):
                pf = {p.tokens: p for p in full.points}
                pts = [(p.tokens, A.signal(p, sig, s.domain), A.signal(pf[p.tokens], sig, s.domain)) for p in s.points if p.tokens in pf]
                pts = [(t, a, b) for t, a, b in pts if a and b]
                if not pts:
                    continue
                shift = (k - (len(others) - 1) / 2) * 0.02 * max(t for t, _, _ in pts)
                xs = np.array([t for t, _, _ in pts], float) + shift
                decs = [stats.compare(a, b, m, higher_better=True) for _, a, b in pts]
                est = np.array([d.estimate for d in decs])
                err = np.array([[d.estimate - d.ci[0] for d in decs], [d.ci[1] - d.estimate for d in decs]])
                ax.errorbar(xs, est, yerr=err, fmt="o", color=col[s.label], capsize=3, ms=5, label=f"{s.label} - {full.label}")
                seeds = [_per_seed(a) - _per_seed(b) for _, a, b in pts]
                if all(len(x) == len(seeds[0]) > 1 for x in seeds):
                    for line in np.array(seeds).T:
                        ax.plot(np.r_[0, xs], np.r_[0, line], "-", color=col[s.label], alpha=0.25, lw=0.8)
            ax.set(xlabel="training tokens", ylabel="difference from full fine-tuning\n" + YLABEL.get(sig, sig).split("\n")[0],
                   title=f"{g}: {SIGNAL_NAME[sig]}" + (" (higher is better)" if better(sig) else " (lower is better)"))
            ax.set_xlim(left=0)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            else:
                ax.text(0.5, 0.5, "no method beside full fine-tuning", ha="center", va="center", transform=ax.transAxes, color="0.5")
    fig.tight_layout()
    return fig


def fig_cost(A: Analysis):
    col = _colors(A)
    fig, axes = _grid(A, ["f", "p"], "Learning against compute and against trainable parameters (best lr per method)")
    for gi, g in enumerate(A.groups):
        sig = A.learn[g]
        for s in [s for s in A.best if s.group == g]:
            pts = [(p.flops, v[0]) for p in s.points if (v := A.value(p, sig, s.domain))]
            if pts:
                axes[gi][0].plot(*zip(*pts), "o-", color=col[s.label], label=s.label, ms=4)
                axes[gi][1].scatter([s.trainable_params], [pts[-1][1]], color=col[s.label], s=60,
                                    label=f"{s.label} ({s.peak_rss_mb:.0f} MB peak)")
        for ax, xl in zip(axes[gi], ["training compute (FLOPs)", "trainable parameters"]):
            ax.set(xscale="log", xlabel=xl, ylabel=_ylabel(A, g, sig) + ("" if better(sig) else "\n(axis inverted: better is up)"),
                   title=f"{g}" + (": final checkpoint" if "param" in xl else ""))
            if not better(sig):
                ax.invert_yaxis()
            _legend_or_empty(ax)
    fig.tight_layout()
    return fig


def fig_lr(A: Analysis):
    col = _colors(A)
    cols = ["metric", "target"] if "metric" in A.learn.values() else ["target"]
    fig, axes = _grid(A, cols, "Learning-rate sensitivity: final checkpoint vs learning rate (filled = best lr, red x = failed run)")
    for gi, g in enumerate(A.groups):
        for ci, sig in enumerate(cols):
            ax = axes[gi][ci]
            chosen = {(b.label, b.lr) for b in A.best if b.group == g}
            for lab in dict.fromkeys(s.label for s in A.series if s.group == g):
                ss = [(s, v) for s in A.series if s.group == g and s.label == lab and (v := A.value(s.points[-1], sig, s.domain))]
                if not ss:
                    continue
                err = np.array([[v[0] - v[1] for _, v in ss], [v[2] - v[0] for _, v in ss]])
                ax.errorbar([s.lr for s, _ in ss], [v[0] for _, v in ss], yerr=err, fmt="o-", color=col[lab], label=lab, ms=4,
                            capsize=3, mfc="white")
                for s, v in ss:
                    if (s.label, s.lr) in chosen:
                        ax.plot([s.lr], [v[0]], "o", color=col[lab], ms=7, zorder=5)
                    if s.failed:  # apart: a failed run is no evidence about its method
                        ax.plot([s.lr], [v[0]], "x", color="red", ms=10, mew=2, zorder=6)
            base = A.value(A.base[g], sig, g.split("/")[1])
            if base:
                ax.axhline(base[0], color="grey", ls=":", lw=1, label="base model")
            ax.set(xscale="log", xlabel="learning rate", ylabel=_ylabel(A, g, sig), title=f"{g}: {SIGNAL_NAME[sig]}")
            _legend_or_empty(ax)
    fig.tight_layout()
    return fig


def spectrum_series(A: Analysis) -> list[tuple]:
    """(best-lr series, its last analysed tokens, its spectrum rows there) for every series with spectrum rows."""
    rows = (A.res.get("analysis") or {}).get("spectrum") or []
    out = []
    for s in A.best:
        mine = [r for r in rows if r["run_id"] in s.run_ids]
        if mine:
            last = max(r["tokens"] for r in mine)
            out.append((s, last, [r for r in mine if r["tokens"] == last]))
    return out


def fig_spectrum(A: Analysis):
    """Per experiment: median rank@90% of ΔW over layers per module type (bars; whiskers = min-max over
    layers), for full fine-tuning and each LoRA, against the LoRA ranks (dashed)."""
    import matplotlib.pyplot as plt

    col, found = _colors(A), spectrum_series(A)
    groups = [g for g in A.groups if any(s.group == g for s, _, _ in found)]
    fig, axes = plt.subplots(1, len(groups), figsize=(max(7.0, 6.5 * len(groups)), 4.2), squeeze=False)
    fig.suptitle("Rank needed for 90% of the update's energy (rank@90% of ΔW) per module type\n"
                 "best lr per method, last analysed checkpoint; dashed: LoRA ranks", fontsize=11)
    for ax, g in zip(axes[0], groups):
        mine = [(s, last, rows) for s, last, rows in found if s.group == g]
        types = sorted({r["module_type"] for _, _, rows in mine for r in rows}, key=type_key)
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
            ax.bar(xs, med, width, yerr=[lo, hi], color=col[s.label], capsize=2, label=f"{s.who}, {last:,} tokens")
        for r in sorted({s.rank for s, _, _ in mine if s.rank}):
            ax.axhline(r, color="0.3", ls="--", lw=0.9)
            ax.text(-0.55, r, f"r={r}", va="bottom", ha="left", fontsize=8, color="0.3")
        full = {t: max(r["full_rank"] for _, _, rows in mine for r in rows if r["module_type"] == t) for t in types}
        ax.set_xticks(range(len(types)), [f"{t}\n(of {full[t]})" for t in types])
        ax.set(yscale="log", ylabel="rank@90% of ΔW (log)", title=f"{g}", xlim=(-0.6, len(types) - 0.4))
        ax.set_ylim(top=ax.get_ylim()[1] * 3)  # headroom for the legend above the bars
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def figures(A: Analysis) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn_cols = ["metric", "target"] if "metric" in A.learn.values() else ["target"]
    forget_cols = (["signal"] if A.above else []) + ["general", "kl_general"]
    makers = {"differences": lambda: fig_differences(A), "learning": lambda: _vs_tokens(A, learn_cols, "Learning vs training tokens (best lr per method; band = 95% interval)"),
              "forgetting": lambda: _vs_tokens(A, forget_cols, "Forgetting vs training tokens (best lr per method; band = 95% interval)"),
              "tradeoff": lambda: fig_tradeoff(A), "cost": lambda: fig_cost(A), "lr_sensitivity": lambda: fig_lr(A)}
    if spectrum_series(A):
        makers["spectrum"] = lambda: fig_spectrum(A)
    out = {}
    for name, make in makers.items():
        fig = make()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[name] = buf.getvalue()
    return out
