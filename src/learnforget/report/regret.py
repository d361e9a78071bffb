"""The *LoRA Without Regret* rules (Schulman et al., Thinking Machines, 2025) as findings (h)-(k): where each
method's best learning rate lies (h: LoRA about 10x full fine-tuning; i: about independent of the rank at a
fixed alpha), which layers LoRA should adapt (j: attention-only learns less at matched parameters), and when a
low rank runs out of capacity (k). Every interval is a paired bootstrap over the held-out target documents of
one experiment (stats.boot: the same unit indices for every system of the experiment)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .. import stats
from ..config import TARGET_PRESETS
from .context import Analysis
from .findings import LR_RATIO, PARAMS_FACTOR, RANK_BAND, RULES, Finding
from .schema import Point, Series

MIN_LRS = 3  # learning rates a method needs for its optimum to be located
ALPHA_REF = 32.0  # (i) learning rates normalised to this alpha: lr_eff = lr * alpha / 32
OPEN = 100.0  # |log10 ratio| standing for 0 / inf (an optimum beyond its grid) inside the percentile interval
LR_BAND = (LR_RATIO / np.sqrt(10), LR_RATIO * np.sqrt(10))  # (h) within half a decade of 10x


# ----------------------------------------------------------------------------- locating an optimum learning rate

def vertex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x (L,) ascending log10 learning rates, y (L, B) losses (B resamples): per column, the vertex of the
    parabola through the lowest point and its two neighbours (the three end points when the lowest is at an end).
    Censored, not dropped: -inf / +inf where the optimum lies beyond the low / high end of the grid (the vertex
    falls outside it, or the fit is not convex and the lowest point is that end); NaN where a loss in the three is
    not finite (a diverged run: no parabola through it) or the three are flat."""
    finite = np.isfinite(y)
    i = np.argmin(np.where(finite, y, np.inf), axis=0)
    j, cols = np.clip(i, 1, len(x) - 2), np.arange(y.shape[1])
    x0, x1, x2 = x[j - 1], x[j], x[j + 1]
    y0, y1, y2 = y[j - 1, cols], y[j, cols], y[j + 1, cols]
    with np.errstate(all="ignore"):
        s01, s12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        a = (s12 - s01) / (x2 - x0)  # p(x) = y0 + s01 (x - x0) + a (x - x0)(x - x1)
        v = np.where(a > 0, (x0 + x1) / 2 - s01 / (2 * a), np.nan)
    fit = finite[j - 1, cols] & finite[j, cols] & finite[j + 1, cols]
    low = fit & ((v < x[0]) | ((a <= 0) & (i == 0) & (y0 < y2)))
    high = fit & ((v > x[-1]) | ((a <= 0) & (i == len(x) - 1) & (y2 < y0)))
    inside = fit & (a > 0) & ~low & ~high
    return np.where(inside, v, np.where(low, -np.inf, np.where(high, np.inf, np.nan)))


@dataclass
class Optimum:
    label: str
    sweep: list[Series]  # every learning rate tried, ascending (failed ones included: they bracket the optimum)
    log_lr: float  # log10 of the located optimum
    boot: np.ndarray  # (N_BOOT,) the optimum per resample: -inf / +inf beyond the grid's low / high end, NaN not located
    alpha: float | None
    losses: np.ndarray  # (L,) final held-out target loss per learning rate (a diverged one: the worst finite loss)
    raw: np.ndarray  # (L,) as measured (NaN / inf where a run diverged)

    @property
    def lr(self) -> float:
        return float(10 ** self.log_lr)

    @property
    def grid(self) -> str:
        out = f"{len(self.sweep)} lrs {self.sweep[0].lr:.3g}..{self.sweep[-1].lr:.3g}, best tried {self.best.lr:.3g}"
        bad = [f"{s.lr:.3g}" for s, y in zip(self.sweep, self.raw) if not np.isfinite(y)]
        return out + (f"; lr {', '.join(bad)} diverged, counted as the worst loss" if bad else "")

    @property
    def best(self) -> Series:
        return self.sweep[int(np.nanargmin(self.losses))]


def ok(s: Series) -> bool:
    """A series a verdict may rest on: it learned and did not fail (study.gather.failure)."""
    return s.learned and not s.failed


def stand_in(y: np.ndarray) -> np.ndarray:
    """Losses (L, B) with a diverged learning rate's non-finite loss counted as the worst finite loss of its column:
    a diverged lr brackets the optimum (it is worse than every lr that ran) without saying by how much."""
    finite = np.isfinite(y)
    worst = np.where(finite, y, -np.inf).max(axis=0)
    return np.where(finite, y, np.where(np.isfinite(worst), worst, np.nan))


def optimum(A: Analysis, group: str, label: str) -> Optimum | str:
    """The optimum learning rate of one method label in one experiment, or why it cannot be located."""
    sweep = [s for s in A.series if s.group == group and s.label == label]
    if len(sweep) < MIN_LRS:
        return f"{label}: {len(sweep)} learning rate(s), needs >= {MIN_LRS} to locate an optimum"
    sigs = [A.signal(s.points[-1], "target", s.domain) for s in sweep]
    if not all(sigs):
        return f"{label}: no held-out target loss at a final checkpoint"
    if not any(ok(s) for s in sweep):
        return (f"{label} did not learn at any learning rate ({', '.join(f'{s.lr:.3g}' for s in sweep)}: final held-out "
                f"target loss not below the base model's)")
    alphas = {s.alpha for s in sweep if s.alpha is not None}
    if len(alphas) > 1:
        return f"{label}: runs with different alphas ({', '.join(f'{a:g}' for a in sorted(alphas))}) share the label"
    x, raw = np.log10([s.lr for s in sweep]), np.array([[stats.value(u)] for u in sigs])
    y = stand_in(raw)
    v = float(vertex(x, y)[0])
    if not np.isfinite(v):
        i = int(np.nanargmin(y[:, 0]))
        if i in (0, len(sweep) - 1):
            return f"{label}: optimum not bracketed: best at the edge of the grid (lr {sweep[i].lr:.3g})"
        return f"{label}: no convex fit around the best lr {sweep[i].lr:.3g}"
    return Optimum(label, sweep, v, vertex(x, stand_in(np.stack([stats.boot(u) for u in sigs]))), next(iter(alphas), None), y[:, 0],
                   raw[:, 0])


def band_verdict(lo: float, hi: float, band: tuple[float, float]) -> str:
    """Reproduced if [lo, hi] lies inside the band, not reproduced if entirely outside it, else not significant."""
    if band[0] <= lo and hi <= band[1]:
        return stats.REPRODUCED
    return stats.NOT_REPRODUCED if hi < band[0] or lo > band[1] else stats.NOT_SIGNIFICANT


def _ratio(claim: str, group: str, comp: str, what: str, num: Optimum, den: Optimum, scale: float,
           band: tuple[float, float], rule: str, extra: str = "") -> Finding:
    """A row deciding scale * lr*_num / lr*_den against a band. A resample whose optimum lies beyond its grid gives
    a ratio of 0 or inf: kept, so that the interval opens on that side (it is not narrowed by leaving them out)
    and such an interval can say "not reproduced" but never "reproduced". Resamples without a ratio (no fit, or
    both optima beyond the same end) are dropped and counted."""
    with np.errstate(all="ignore"):
        d = scale * 10 ** (num.boot - den.boot)
    ok = ~np.isnan(d)
    est = float(scale * 10 ** (num.log_lr - den.log_lr))
    nums = (f"optimum lr {num.label} {num.lr:.3g} ({num.grid}) vs {den.label} {den.lr:.3g} ({den.grid}){extra}; "
            f"band [{band[0]:.3g}, {band[1]:.3g}]")
    dropped = 1.0 - float(ok.mean())
    if dropped > 0.5:
        return Finding(claim, group, comp, what, stats.NOT_RUN, numbers=nums + f"; no ratio in {dropped:.0%} of resamples "
                       f"(no convex fit, or both optima beyond the same end of their grids)", rule=rule)
    with np.errstate(divide="ignore"):
        lo, hi = 10 ** np.array(stats.interval(np.clip(np.log10(d[ok]), -OPEN, OPEN)))
    lo, hi = (0.0 if lo < 10 ** -(OPEN / 2) else float(lo)), (np.inf if hi > 10 ** (OPEN / 2) else float(hi))
    verdict = band_verdict(lo, hi, band)
    notes = [f"{dropped:.1%} of resamples without a ratio, dropped"] if dropped else []
    beyond = float(np.mean((d[ok] == 0) | np.isinf(d[ok])))
    if beyond:
        notes.append(f"in {beyond:.1%} an optimum lies beyond its grid" + (": the interval is open on that side" if lo == 0 or hi == np.inf else ""))
    if dropped > 1 - stats.LEVEL and verdict != stats.NOT_SIGNIFICANT:
        verdict = stats.NOT_SIGNIFICANT
        notes.append(f"more than {1 - stats.LEVEL:.0%} dropped, so the 95% interval is not known")
    return Finding(claim, group, comp, what, verdict, est, (lo, hi), nums, rule, "; ".join(notes))


def _labels(A: Analysis, group: str, family: str) -> list[str]:
    return sorted({s.label for s in A.series if s.group == group and s.family == family})


def lr_ratio(A: Analysis) -> list[Finding]:
    """(h): lr*_LoRA / lr*_full per experiment, per (LoRA label, full label)."""
    rows = []
    for g in A.groups:
        fulls = {f: optimum(A, g, f) for f in _labels(A, g, "full")}
        for ll in _labels(A, g, "lora"):
            lo = optimum(A, g, ll)
            for fl, fo in fulls.items():
                comp, what = f"{ll} vs {fl}", "optimum learning rate ratio (LoRA / full) from the final held-out target loss"
                why = [o for o in (lo, fo) if isinstance(o, str)]
                if why:
                    rows.append(Finding("h", g, comp, what, stats.NOT_RUN, numbers="; ".join(why)))
                else:
                    rows.append(_ratio("h", g, comp, what, lo, fo, 1.0, LR_BAND, RULES["lr-ratio"]))
    return rows or [Finding("h", "all", "", "", stats.NOT_RUN, numbers="no full and LoRA sweeps in the same experiment")]


def _rank_key(label: str) -> str:
    return re.sub(r"^lora-r\d+-", "lora-", label)


def rank_scaling(A: Analysis) -> list[Finding]:
    """(i): normalised optimum of the lower rank / of the higher, per pair of LoRA labels differing only in rank."""
    rows = []
    for g in A.groups:
        rank = {s.label: s.rank for s in A.series if s.group == g and s.family == "lora" and s.rank}
        same: dict[str, list[str]] = {}
        for label in sorted(rank, key=lambda x: (rank[x], x)):
            if "rslora" not in label:  # alpha/sqrt(r) scaling: a different rule
                same.setdefault(_rank_key(label), []).append(label)
        for a, b in (p for labels in same.values() for p in combinations(labels, 2) if rank[p[0]] != rank[p[1]]):
            oa, ob = optimum(A, g, a), optimum(A, g, b)
            comp, what = f"{a} vs {b}", f"optimum lr at alpha {ALPHA_REF:g} (lr * alpha / {ALPHA_REF:g}), rank {rank[a]} / rank {rank[b]}"
            why = [o for o in (oa, ob) if isinstance(o, str)]
            if why:
                rows.append(Finding("i", g, comp, what, stats.NOT_RUN, numbers="; ".join(why)))
                continue
            extra = f"; alpha {oa.alpha:g} vs {ob.alpha:g}: normalised {oa.lr * oa.alpha / ALPHA_REF:.3g} vs {ob.lr * ob.alpha / ALPHA_REF:.3g}"
            rows.append(_ratio("i", g, comp, what, oa, ob, oa.alpha / ob.alpha, RANK_BAND, RULES["rank-scaling"], extra))
    return rows or [Finding("i", "all", "", "", stats.NOT_RUN, numbers="no two LoRA ranks with the same targets in one experiment")]


# ----------------------------------------------------------------------------- (j) targets, (k) capacity

def target_kind(targets) -> str | None:
    """attention | mlp | all for a preset or a module list; None for a mix of some attention and some MLP modules."""
    if targets in TARGET_PRESETS:
        return targets
    names = {t.strip() for t in str(targets or "").split(",") if t.strip()}
    sets = {k: set(v) for k, v in TARGET_PRESETS.items()}
    if names == sets["all"]:
        return "all"
    return next((k for k in ("attention", "mlp") if names and names <= sets[k]), None)


def _failed(claim: str, group: str, comp: str, ss: list[Series]) -> Finding:
    why = lambda s: f"{s.who} failed ({s.failed})" if s.failed else f"{s.who} did not learn (final held-out target loss not below the base model's)"  # noqa: E731
    return Finding(claim, group, comp, "", stats.NOT_RUN, numbers=" and ".join(why(s) for s in ss if not ok(s))
                   + ": a failed run is evidence of a bad learning rate, not of the claim")


def _common(A: Analysis, a: Series, b: Series) -> list[tuple[Point, Point]]:
    """Checkpoints of a and b at the same token count (> 0), both with a held-out target loss."""
    pb = {p.tokens: p for p in b.points}
    return [(p, pb[p.tokens]) for p in a.points if p.tokens > 0 and p.tokens in pb
            and A.signal(p, "target", a.domain) and A.signal(pb[p.tokens], "target", b.domain)]


def _loss(A: Analysis, p: Point, s: Series) -> float:
    return stats.value(A.signal(p, "target", s.domain))


def _factor(a: Series, b: Series) -> float:
    return max(a.trainable_params, b.trainable_params) / max(min(a.trainable_params, b.trainable_params), 1)


def attention_only(A: Analysis) -> list[Finding]:
    """(j): attention-only LoRA vs MLP-only / all-layer LoRA, each at its best lr, final held-out target loss, for
    every pair matched in trainable parameters; one "not run" row for an attention-only run with no such partner."""
    rows = []
    for g in A.groups:
        lora = [(s, target_kind(s.targets)) for s in A.of_family(g, "lora")]
        for att in [s for s, k in lora if k == "attention"]:
            others = [(o, k) for o, k in lora if k in ("mlp", "all")]
            matched = [(o, k) for o, k in others if _factor(att, o) <= PARAMS_FACTOR]
            rows += [_targets_row(A, att, o, k) for o, k in matched]
            if others and not matched:
                sizes = ", ".join(f"{o.label} {o.trainable_params:,} ({_factor(att, o):.1f}x)" for o, _ in others)
                rows.append(Finding("j", g, att.who, "", stats.NOT_RUN, numbers=f"trainable parameters {att.label} "
                                    f"{att.trainable_params:,} vs {sizes}: none within {PARAMS_FACTOR:g}x, not matched"))
    return rows or [Finding("j", "all", "", "", stats.NOT_RUN, numbers="no attention-only and MLP-only / all-layer LoRA runs in one experiment")]


def _targets_row(A: Analysis, att: Series, o: Series, kind: str) -> Finding:
    g, comp = att.group, f"{att.who} vs {o.who}"
    what = f"final held-out target loss (attention-only worse than {kind} by)"
    params = f"trainable parameters {att.label} {att.trainable_params:,} vs {o.label} {o.trainable_params:,}"
    if not (ok(att) and ok(o)):
        return _failed("j", g, comp, [att, o])
    pairs = _common(A, att, o)
    if not pairs:
        return Finding("j", g, comp, what, stats.NOT_RUN, numbers=f"{params}; no checkpoint at matched tokens with a target loss")
    p, q = pairs[-1]
    dec = stats.compare(A.signal(q, "target", o.domain), A.signal(p, "target", att.domain), A.margin("target"), higher_better=False)
    nums = f"{params}; at {p.tokens:,} tokens: {att.label} {_loss(A, p, att):.4f} vs {o.label} {_loss(A, q, o):.4f}"
    return Finding("j", g, comp, what, dec.verdict, dec.estimate, dec.ci, nums, RULES["targets"], dec.note())


def capacity(A: Analysis) -> list[Finding]:
    """(k): the lowest LoRA rank of each experiment vs full fine-tuning, both at their best lr, checkpoint by checkpoint."""
    rows = []
    for g in A.groups:
        # the lowest rank, all-layer if there is one (as study/regret_plan.py plans it)
        low = min((s for s in A.of_family(g, "lora") if s.rank), key=lambda s: (s.rank, s.targets != "all", s.label), default=None)
        rows += [_capacity_row(A, low, f) for f in A.of_family(g, "full")] if low else []
    return rows or [Finding("k", "all", "", "", stats.NOT_RUN, numbers="no full and LoRA runs in the same experiment")]


def _capacity_row(A: Analysis, lo: Series, f: Series) -> Finding:
    g, comp, m = lo.group, f"{lo.who} vs {f.who}", A.margin("target")
    what = "held-out target loss gap (LoRA - full) at the last checkpoint"
    if not (ok(lo) and ok(f)):
        return _failed("k", g, comp, [lo, f])
    pairs = _common(A, lo, f)
    if len(pairs) < 2:
        return Finding("k", g, comp, what, stats.NOT_RUN, numbers="fewer than 2 checkpoints at matched tokens with a target loss")
    gaps = []
    for p, q in pairs:
        d = stats.boot(A.signal(p, "target", lo.domain)) - stats.boot(A.signal(q, "target", f.domain))
        gaps.append((p.tokens, _loss(A, p, lo) - _loss(A, q, f), *stats.interval(d)))
    parted = next((t for t, _, low, _ in gaps if low > m), None)
    (_, _, lo0, hi0), (t1, g1, lo1, hi1) = gaps[0], gaps[-1]
    if -m < lo0 and hi0 < m and lo1 > m:  # tracks first (equivalent within the margin), then apart
        verdict = stats.REPRODUCED
    elif (-m < lo1 and hi1 < m) or hi1 < 0:
        verdict = stats.NOT_REPRODUCED
    else:
        verdict = stats.NOT_SIGNIFICANT
    nums = ("gap per checkpoint: " + "; ".join(f"{t:,}: {e:+.4f} [{a:+.4f}, {b:+.4f}]" for t, e, a, b in gaps)
            + (f"; parted at {parted:,} tokens" if parted is not None else f"; did not part within {t1:,} tokens")
            + f" (margin {m:g})")
    note = ("apart from the first checkpoint on: no tracking phase to see" if lo0 > m else
            "" if -m < lo0 and hi0 < m else "the first checkpoint's interval is not inside the margin: tracking not shown")
    return Finding("k", g, comp, what, verdict, g1, (lo1, hi1), nums, RULES["capacity"], note)


def regret(A: Analysis) -> list[Finding]:
    """Findings (h)-(k), in order (expects `Series.learned` set, as claims.findings does)."""
    return lr_ratio(A) + rank_scaling(A) + attention_only(A) + capacity(A)
