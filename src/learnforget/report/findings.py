"""The paper's claims (a)-(g) as findings, each decided by a paired bootstrap over the units its
signal was measured on (learnforget/stats.py): reproduced, not reproduced, equivalent, or not significant
with the difference the study could have detected. Each method is taken at its best learning rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import stats
from .context import Analysis, better
from .schema import Point, Series

SPECTRUM_RATIO = 10.0  # the paper: the full-FT update's rank@90% is 10-100x the LoRA ranks
LR_RATIO, RANK_BAND, PARAMS_FACTOR = 10.0, (0.5, 2.0), 1.5  # LoRA Without Regret, (h)-(j): report/regret.py
CLAIMS = {
    "a": "Full fine-tuning learns more per token than LoRA",
    "b": "LoRA forgets less than full fine-tuning",
    "c": "At matched learning, LoRA forgets less than dropout / weight-decay regularized full fine-tuning",
    "d": "Longer training favours full fine-tuning (its learning lead over LoRA grows with tokens)",
    "e": "LoRA is more sensitive to the learning rate than full fine-tuning",
    "f": "The full fine-tuning update is high-rank: a large fraction of each matrix's width, far above the LoRA ranks, "
         "growing with tokens",
    "g": "Full fine-tuning collapses the distinct correct solutions more than LoRA",
    "h": f"LoRA's best learning rate is about {LR_RATIO:g}x full fine-tuning's",
    "i": "With a fixed alpha, LoRA's best learning rate is about independent of rank (1/r scaling)",
    "j": "Attention-only LoRA learns less than MLP-only and all-layer LoRA at matched trainable parameters",
    "k": "A low LoRA rank tracks full fine-tuning at first and falls behind as tokens grow (capacity limit)",
}
_BOOT = f"paired bootstrap ({stats.N_BOOT} resamples of seeds, then of the shared units: benchmark items or held-out documents)"
RULES = {
    "paired": f"{_BOOT} of the difference, averaged over the checkpoints both systems have; reproduced if its 95% interval "
              f"is above 0, not reproduced if below 0, equivalent if inside +-margin, else not significant",
    "matched": f"forgetting at matched learning: at the final held-out target loss of the system that learned less (in every "
               f"resample), each system's forgetting interpolated along its checkpoint curve from the base model; "
               f"{_BOOT}, both signals resampled jointly; decided as above",
    "growth": f"(learning gap at the last matched checkpoint) - (gap at the first); {_BOOT}; decided as above",
    "spread": "sensitivity = the rise of the final score (as a loss) half a decade of learning rate away from each method's "
              "own optimum, from the parabola in log10(lr) through its best lr and two neighbours; "
              f"{_BOOT} of (LoRA rise - full rise); decided as above",
    "spectrum": f"median rank@90% of the full-FT update matrices / LoRA rank, one row per rank, bootstrap over matrices: "
                f"reproduced if the 95% interval is above the bar, not reproduced if below. The bar is {SPECTRUM_RATIO:g}x (the "
                f"paper: 10-100x ranks 16-64 on 4096-wide matrices) or, where the width makes {SPECTRUM_RATIO:g}x impossible, "
                f"the ratio the paper's width fraction gives on these matrices",
    "spectrum_fraction": "median over matrices of rank@90% / min(matrix rows, cols), bootstrap over matrices: reproduced "
                         "if the 95% interval is above the paper's 0.24 (1000 of 4096), not reproduced if below",
    "spectrum_growth": "mean over matrices of (rank@90% / width at the last analysed checkpoint) - (at the first), "
                       "paired by matrix, bootstrap over matrices: reproduced if the 95% interval is above 0, not reproduced if below",
    "diversity": "paired bootstrap over problems of the per-problem distinct correct solutions, and of the distinct outputs "
                 "(correct or not: collapse is measurable where no model solves the task)",
    "entropy": f"next-token entropy of each model on the held-out target documents (nats/token: how spread out what it would "
               f"sample is, the continuous form of generation diversity, measured where no model solves a benchmark): {_BOOT} of "
               f"(LoRA - full), at matched tokens and at matched target loss as for (b); reproduced if the 95% interval is above "
               f"0 (full fine-tuning's distribution narrower), not reproduced if below, equivalent if inside +-margin, else not significant",
    "lr-ratio": f"each method's optimum learning rate: the vertex of the parabola in log10(lr) through the lowest final held-out "
                f"target loss (seeds averaged) and its two neighbours (the three end ones when the lowest is at an end), over every lr "
                f"tried (failed ones too; a diverged one counts as the sweep's worst finite loss), >= 3 lrs; a vertex beyond the grid "
                f"is not bracketed (no verdict); {_BOOT}, the same documents for every lr, refitted per resample; a resample whose "
                f"optimum lies beyond its grid counts as a ratio of 0 or inf, so the interval opens on that side and can only say "
                f"not reproduced (resamples with no ratio dropped and counted; more than 5% dropped: at most not significant); "
                f"reproduced if the 95% interval of lr*_LoRA / lr*_full lies inside [{LR_RATIO / 10 ** 0.5:.3g}, "
                f"{LR_RATIO * 10 ** 0.5:.3g}] (half a decade around {LR_RATIO:g}x), not reproduced if entirely outside, else "
                f"not significant",
    "rank-scaling": f"optima located as for lr-ratio, per pair of LoRA labels differing only in rank (rsLoRA left out), each "
                    f"normalised to alpha 32 (lr * alpha / 32; alpha absent: 2 * rank); reproduced if the 95% interval of "
                    f"(lower rank / higher rank) lies inside [{RANK_BAND[0]:g}, {RANK_BAND[1]:g}], not reproduced if entirely "
                    f"outside, else not significant",
    "targets": f"attention-only vs MLP-only / all-layer LoRA, each at its best lr, trainable parameters within "
               f"{PARAMS_FACTOR:g}x: {_BOOT} of (attention-only - other) final held-out target loss; reproduced if the 95% "
               f"interval is above 0, not reproduced if below 0, equivalent if inside +-margin, else not significant",
    "capacity": f"lowest LoRA rank vs full fine-tuning, each at its best lr: {_BOOT} of the held-out target loss gap (LoRA - "
                f"full) at every checkpoint both have; parting = the first checkpoint whose 95% interval is above +margin; "
                f"reproduced if the first checkpoint's interval lies inside +-margin (it tracks: equivalent) and the last's is "
                f"above +margin, not reproduced if the last's lies inside +-margin or below 0, else not significant",
}
SIGNAL_NAME = {"metric": "learning task", "target": "held-out target loss", "signal": "forgetting score (tasks above chance)",
               "paper": "paper's 3-task mean", "general": "held-out general loss", "kl_general": "KL drift on general text",
               "kl_target": "KL drift on target text", "entropy_target": "next-token entropy on held-out target text"}
FORGETTING = ("signal", "paper", "general", "kl_general")


@dataclass
class Finding:
    claim: str
    group: str
    comparison: str
    signal: str
    verdict: str
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    numbers: str = ""
    rule: str = ""
    note: str = ""
    p: float | None = None  # two-sided p-value of no difference, before the family's adjustment
    family: str = "exploratory"  # primary (Holm: family-wise error <= 5% per experiment) | exploratory (Benjamini-Hochberg)
    seeds: int = 1  # training seeds behind the row: fewer than MIN_SEEDS is one run, not a verdict about the methods
    stable: bool | None = None  # primary rows: the same verdict with any one seed left out (None: not checked)

    @property
    def text(self) -> str:
        return CLAIMS[self.claim]

    def as_dict(self) -> dict:
        # an open upper bound (a ratio interval reaching past the grid: inf) is null in JSON, which has no inf
        ci = [float(c) if np.isfinite(c) else None for c in self.ci] if self.ci else None
        return {**asdict(self), "text": self.text, "ci": ci}


def _decided(claim, group, comparison, what, dec: stats.Decision, numbers, rule) -> Finding:
    return Finding(claim, group, comparison, what, dec.verdict, dec.estimate, dec.ci, numbers, rule, dec.note(), dec.p)


def _pairs(A: Analysis, a: Series, b: Series, sig: str) -> list[tuple[Point, Point]]:
    """Checkpoints of a and b at the same token count (> 0), both measured on `sig`."""
    pb = {p.tokens: p for p in b.points}
    return [(p, pb[p.tokens]) for p in a.points if p.tokens > 0 and p.tokens in pb
            and A.signal(p, sig, a.domain) and A.signal(pb[p.tokens], sig, b.domain)]


def _fmt(A: Analysis, p: Point, sig: str, domain: str) -> str:
    v = A.value(p, sig, domain)
    return "–" if v is None else f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"


def _base_ref(A: Analysis, s: Series, sig: str) -> str:
    v = A.value(A.base[s.group], sig, s.domain)
    return f"; base {v[0]:.4f}" if v and not sig.startswith("kl") else ""


def _what(A: Analysis, sig: str, domain: str) -> str:
    if sig == "metric":
        t = A.learning.get(domain)
        return f"{t} {A.tasks[t].metric}"
    return SIGNAL_NAME[sig]


def at_tokens(claim: str, A: Analysis, hi: Series, lo: Series, sig: str) -> Finding:
    """'hi beats lo on sig' at matched tokens, averaged over the checkpoints both have."""
    g, comp, what = hi.group, f"{hi.who} vs {lo.who}", _what(A, sig, hi.domain)
    if sig in ("signal", "paper", "metric") and not A.task_names(sig, hi.domain):
        why = "no forgetting task is above chance for the base model" if sig == "signal" else "task not evaluated"
        return Finding(claim, g, comp, what, stats.NOT_RUN, numbers=why)
    pairs = _pairs(A, hi, lo, sig)
    if not pairs:
        return Finding(claim, g, comp, what, stats.NOT_RUN, numbers=f"no checkpoints at matched tokens with {SIGNAL_NAME[sig]}")
    dec = stats.compare_many([(A.signal(p, sig, hi.domain), A.signal(q, sig, lo.domain)) for p, q in pairs], A.margin(sig), better(sig))
    toks = "/".join(f"{p.tokens:,}" for p, _ in pairs)
    p, q = pairs[-1]
    nums = (f"at {toks} tokens; at {p.tokens:,}: {hi.label} {_fmt(A, p, sig, hi.domain)} vs {lo.label} {_fmt(A, q, sig, lo.domain)}"
            + _base_ref(A, hi, sig))
    if sig == "paper" and any(A.tasks[t].status != "above" for t in A.paper):
        nums += "; includes task(s) at chance: " + ", ".join(t for t in A.paper if A.tasks[t].status != "above")
    return _decided(claim, g, comp, f"{what} ({hi.label} better by)", dec, nums, RULES["paired"])


def _curve(A: Analysis, s: Series, sig: str) -> list[Point]:
    """The base point, then the series' checkpoints, where both the target loss and `sig` were measured."""
    pts = [A.base[s.group], *s.points]
    return [p for p in pts if A.signal(p, "target", s.domain) and A.signal(p, sig, s.domain)]


def at_matched_learning(claim: str, A: Analysis, x: Series, y: Series, sig: str) -> Finding:
    """'x forgets less than y' on sig at the same held-out target loss (the less-learned system's final one)."""
    g, comp, what = x.group, f"{x.who} vs {y.who}", f"{SIGNAL_NAME[sig]} at matched target loss"
    cx, cy = _curve(A, x, sig), _curve(A, y, sig)
    if len(cx) < 2 or len(cy) < 2:
        return Finding(claim, g, comp, what, stats.NOT_RUN, numbers="needs the base model and a checkpoint with both signals")
    sign = 1.0 if better(sig) else -1.0
    pt = lambda c, f: np.array([f(A.signal(p, "target", x.domain)) for p in c])  # noqa: E731
    ps = lambda c, f: np.array([f(A.signal(p, sig, x.domain)) for p in c])  # noqa: E731
    tx, ty, fx, fy = pt(cx, stats.boot), pt(cy, stats.boot), ps(cx, stats.boot), ps(cy, stats.boot)
    vtx, vty, vfx, vfy = pt(cx, stats.value), pt(cy, stats.value), ps(cx, stats.value), ps(cy, stats.value)
    # The level is the less-learned system's final target loss, in every replicate (and so always on both curves):
    # fixing which system learned less from the point estimate left the other's curve short of the level in the
    # replicates where the two swap, when both learned about as much.
    level = max(vtx[-1], vty[-1])
    est = sign * (float(np.interp(level, *_sorted(vtx, vfx))) - float(np.interp(level, *_sorted(vty, vfy))))
    lb = np.maximum(tx[-1], ty[-1])
    d = sign * (stats.interp_at(lb, tx, fx) - stats.interp_at(lb, ty, fy))
    along = y if vtx[-1] >= vty[-1] else x  # the one interpolated at the point estimate
    inside = np.isfinite(d)
    if inside.mean() < 0.9:
        return Finding(claim, g, comp, what, stats.NOT_RUN,
                       numbers=f"a curve does not reach target loss {level:.4f} in {1 - inside.mean():.0%} of resamples")
    dec = stats.decide(d[inside], est, A.margin(sig))
    nums = (f"at target loss {level:.4f}, the less-learned system's final one in every resample ({along.label} interpolated "
            f"along {len(cx if along is x else cy)} points from the base)")
    if not inside.all():
        nums += f"; {1 - inside.mean():.0%} of resamples outside the curve, left out"
    return _decided(claim, g, comp, f"{what} ({x.label} better by)", dec, nums, RULES["matched"])


def _sorted(xs, ys):
    o = np.argsort(xs)
    return xs[o], ys[o]


def growth(A: Analysis, f: Series, lo: Series, sig: str) -> Finding:
    """Claim d: (full - LoRA learning gap at the last matched checkpoint) - (gap at the first)."""
    g, comp, what = f.group, f"{f.who} vs {lo.who}", f"{_what(A, sig, f.domain)} gap (full better by), last - first"
    pairs = _pairs(A, f, lo, sig)
    if len(pairs) < 2:
        return Finding("d", g, comp, what, stats.NOT_RUN, numbers="fewer than 2 matched checkpoints")
    sign = 1.0 if better(sig) else -1.0
    (f0, l0), (f1, l1) = pairs[0], pairs[-1]
    s = lambda p, fn: fn(A.signal(p, sig, f.domain))  # noqa: E731
    gap = lambda a, b, fn: sign * (s(a, fn) - s(b, fn))  # noqa: E731
    d = gap(f1, l1, stats.boot) - gap(f0, l0, stats.boot)
    g0, g1 = gap(f0, l0, stats.value), gap(f1, l1, stats.value)
    dec = stats.decide(d, g1 - g0, A.margin(sig))
    return _decided("d", g, comp, what, dec, f"gap {g0:+.4f} -> {g1:+.4f} over {f0.tokens:,} -> {f1.tokens:,} tokens", RULES["growth"])


def _finals(A: Analysis, group: str, label: str, sig: str) -> list[tuple[Series, stats.Signal]]:
    ss = [s for s in A.series if s.group == group and s.label == label]
    return [(s, A.signal(s.points[-1], sig, s.domain)) for s in ss]


RISE_AT = 0.5  # decades of learning rate from a method's own optimum at which (e) reads the loss rise


def curvature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x (L,) ascending log10 learning rates, y (L, B) losses: per column, the quadratic coefficient of the parabola
    through the lowest point and its two neighbours (the three end ones when the lowest is at an end); NaN where a
    loss of the three is not finite."""
    finite = np.isfinite(y)
    i = np.argmin(np.where(finite, y, np.inf), axis=0)
    j, cols = np.clip(i, 1, len(x) - 2), np.arange(y.shape[1])
    x0, x1, x2 = x[j - 1], x[j], x[j + 1]
    y0, y1, y2 = y[j - 1, cols], y[j, cols], y[j + 1, cols]
    a = ((y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)) / (x2 - x0)
    return np.where(finite[j - 1, cols] & finite[j, cols] & finite[j + 1, cols], a, np.nan)


def sensitivity(A: Analysis, group: str, full_label: str, lora_label: str, sig: str) -> Finding:
    """Claim e: how fast each method's final score worsens away from its own optimum: the rise of the parabola in log10(lr)
    through its best lr and neighbours at RISE_AT decades, LoRA's minus full fine-tuning's. A property of the methods,
    not of where the grids were placed (the spread over a grid grows with the grid's width)."""
    comp = f"{lora_label} vs {full_label}"
    what = f"rise of final {_what(A, sig, group.split('/')[1])} {RISE_AT:g} decade from each method's optimum"
    fl, ff = _finals(A, group, lora_label, sig), _finals(A, group, full_label, sig)
    if min(len(fl), len(ff)) < 3 or not all(u for _, u in fl + ff):
        return Finding("e", group, comp, what, stats.NOT_RUN, numbers="needs >= 3 learning rates per method, all scored")
    worse = -1.0 if better(sig) else 1.0  # as a loss: larger is worse

    def rise(fs, fn):
        fs = sorted(fs, key=lambda t: t[0].lr)
        x = np.log10([s.lr for s, _ in fs])
        y = np.array([np.atleast_1d(worse * fn(u)) for _, u in fs], float)
        return curvature(x, y) * RISE_AT ** 2

    d = rise(fl, stats.boot) - rise(ff, stats.boot)
    el, ef = float(rise(fl, stats.value)[0]), float(rise(ff, stats.value)[0])
    show = lambda fs: ", ".join(f"lr {s.lr:g}: {stats.value(u):.4f}" for s, u in sorted(fs, key=lambda t: t[0].lr))  # noqa: E731
    nums = f"rise {lora_label} {el:+.4f} ({show(fl)}) vs {full_label} {ef:+.4f} ({show(ff)})"
    ok = np.isfinite(d)
    if ok.mean() < 0.9 or not np.isfinite(el - ef):
        return Finding("e", group, comp, what, stats.NOT_RUN, numbers=nums + "; a diverged run among the three around an optimum")
    dec = stats.decide(d[ok], el - ef, A.margin(sig))
    return _decided("e", group, comp, what, dec, nums, RULES["spread"])


def learned(A: Analysis, s: Series) -> bool:
    """A run learned if its final held-out target loss is below the base model's (interval clear of it), read on the
    selection documents where the study has them (they, not the verdict documents, rule runs in and out)."""
    sig = "select" if s.points and A.signal(s.points[-1], "select", s.domain) else "target"
    base, fin = A.signal(A.base[s.group], sig, s.domain), A.signal(s.points[-1], sig, s.domain)
    if not base or not fin:
        return True  # no base reference: cannot tell, do not withhold the verdicts
    return stats.interval(stats.boot(base) - stats.boot(fin))[0] > 0
