"""Intervals and verdicts: one paired bootstrap for every signal, over the units it was measured on.

A signal is measured on *units* shared by every system: benchmark items (a 0/1 or fractional score
each), or held-out documents (a loss or KL sum and a token count each; a document split across rows
is one unit per row). A system's value is a ratio of sums, sum(score) / sum(count), i.e. the
token-weighted mean for losses and the plain mean for items; a signal over several tasks is the mean
of its tasks' values. With several seeds, a unit's score is given per seed.

Each replicate draws the two sources of noise a verdict must cover (DESIGN.md §2):
  - seeds: a seed fixes the data order for every system, so systems pair by seed. Replicate b weighs the
    S seeds by w_b = 1/S + (z_b - mean z_b) * t_b / sqrt(S (S - 1)), z_b standard normal and t_b =
    sqrt((S-1) / chi2_{S-1}); the same weights for every system with those seeds (one seed draw per
    replicate, shared by all signals and checkpoints). For any paired difference d_s this gives
    sum_s w_s d_s - mean(d) = s_d / sqrt(S) * T with T ~ Student t, S - 1 degrees of freedom: the
    percentile interval is the t interval of the seed-to-seed spread, calibrated at S = 3..5 where
    resampling seeds with replacement is far too narrow (tests/test_calibration.py);
  - units: one index matrix per (unit set, unit count), drawn from a seeded generator and applied to
    *every* system, so differences are paired over the same documents or items.
So the difference of two systems' replicates is a paired interval of their difference, and any function of
several systems' values (a spread over learning rates, an interpolation at matched learning) is resampled
jointly, replicate by replicate. A plain difference on shared seeds (compare, compare_many) has a closed form
instead, the random-effects t interval of seeds_interval, which counts the run-by-document noise once (adding the
document resampling to the seed weights counts it twice: 98% coverage where 95% is asked, tests/test_calibration.py).

A difference is decided in one of four ways (oriented so that positive supports the claim):
reproduced (95% interval above 0), not reproduced (below 0), equivalent (inside +-margin: the two
differ by less than what the study declared to matter), or not significant (wider than the margin
and covering 0; the row then states the smallest difference this study could have detected).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

N_BOOT = 1000
SEED = 20240515
LEVEL = 0.95
Z = 1.96
Z_POWER = 1.96 + 0.84  # two-sided 5% test with 80% power: the smallest detectable difference is 2.8 standard errors

REPRODUCED, NOT_REPRODUCED, EQUIVALENT, NOT_SIGNIFICANT, NOT_RUN, ONE_RUN = (
    "reproduced", "not reproduced", "equivalent", "not significant", "not run", "one run")
DECIDED = (REPRODUCED, NOT_REPRODUCED, EQUIVALENT)


@lru_cache(maxsize=256)
def unit_indices(key: str, n: int, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, n) unit indices for resampling the `n` units of `key` (a task or held-out set): seeded,
    the same for every system, so differences are paired."""
    rng = np.random.default_rng(SEED + zlib.crc32(f"{key}:{n}".encode()))
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int32)


@lru_cache(maxsize=1024)
def seed_indices(key: str, n: int, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, n) seed indices drawn with replacement (advise's forecasts resample their pilots' seeds this way)."""
    rng = np.random.default_rng(SEED + 1 + zlib.crc32(f"seeds:{key}:{n}".encode()))
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int32)


@lru_cache(maxsize=1024)
def seed_weights(seeds: tuple, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, S) weights of S seeds per replicate (module docstring): a multivariate t draw around 1/S whose weighted
    mean of any per-seed values spreads as their t interval. Keyed by the seeds, so systems with the same seeds get the
    same weights (paired by seed) and systems with other seeds independent ones."""
    S = len(seeds)
    rng = np.random.default_rng(SEED + 1 + zlib.crc32(f"seeds:{seeds}".encode()))
    z = rng.standard_normal((n_boot, S))
    t = np.sqrt((S - 1) / rng.chisquare(S - 1, size=(n_boot, 1)))
    return 1.0 / S + (z - z.mean(1, keepdims=True)) * t / np.sqrt(S * (S - 1))


@dataclass(frozen=True)
class Units:
    """One system's measurement on one unit set: `scores` (seeds, units) sums per unit, `counts` (units,)
    tokens (or 1 per benchmark item). Units are in the order shared by every system."""

    key: str  # the unit set: a task name, or a held-out set such as "general"
    scores: np.ndarray
    counts: np.ndarray
    system: str = ""  # names the system
    seeds: tuple = ()  # the seed of each row of scores (rows in this order pair with other systems'); () = 0, 1, ...

    @staticmethod
    def of(key: str, scores, counts=None, system: str = "", seeds: tuple = ()) -> "Units":
        s = np.atleast_2d(np.asarray(scores, float))
        c = np.ones(s.shape[1]) if counts is None else np.asarray(counts, float)
        if c.shape != (s.shape[1],):
            raise ValueError(f"{key}: {s.shape[1]} unit scores but {c.shape} counts")
        if seeds and len(seeds) != s.shape[0]:
            raise ValueError(f"{key}: {s.shape[0]} rows of scores but seeds {seeds}")
        return Units(key, s, c, system, tuple(seeds))

    def without_seed(self, seed: int) -> "Units":
        """The same measurement with one seed's row left out (a system without that seed is returned as it is)."""
        if seed not in self.seeds or len(self.seeds) < 2:
            return self
        keep = [i for i, s in enumerate(self.seeds) if s != seed]
        return Units(self.key, self.scores[keep], self.counts, self.system, tuple(self.seeds[i] for i in keep))

    @property
    def value(self) -> float:
        return float(self.scores.mean(0).sum() / self.counts.sum())

    def boot(self, seeds: bool = True) -> np.ndarray:
        """(N_BOOT,) resampled values: seeds (if more than one and `seeds`), then units."""
        n_s, n_u = self.scores.shape
        if n_s > 1 and seeds:
            per_unit = seed_weights(self.seeds or tuple(range(n_s))) @ self.scores  # (B, U): each replicate's seed mean per unit
        else:
            per_unit = np.broadcast_to(self.scores.mean(0), (N_BOOT, n_u))
        idx = unit_indices(self.key, n_u)
        rows = np.arange(N_BOOT)[:, None]
        return per_unit[rows, idx].sum(1) / self.counts[idx].sum(1)


Signal = dict  # {unit-set key: Units}: a value is the mean over its unit sets


def value(sig: Signal) -> float:
    return float(np.mean([u.value for u in sig.values()]))


def boot(sig: Signal, seeds: bool = True) -> np.ndarray:
    return np.mean([u.boot(seeds) for u in sig.values()], axis=0)


def interval(d: np.ndarray) -> tuple[float, float]:
    a = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(d, [a, 100 - a])
    return float(lo), float(hi)


def mean_ci(scores, key: str = "items") -> tuple[float, float, float]:
    """Mean of item scores with its 95% bootstrap interval: (value, lo, hi)."""
    u = Units.of(key, scores)
    return (u.value, *interval(u.boot()))


@dataclass
class Decision:
    """A decided (or undecidable) difference, oriented so that positive supports the claim."""

    verdict: str
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    margin: float | None = None
    detectable: float | None = None  # smallest difference this study could detect (80% power), from the bootstrap SE
    seed_share: float | None = None  # fraction of the interval's variance that is seed noise (None: one seed)
    p: float | None = None  # two-sided p-value of "no difference" from the replicates (the family rules adjust it)

    def note(self) -> str:
        """What a reader needs besides the interval: the margin test, the detectable difference, seed noise."""
        parts = []
        if self.verdict == EQUIVALENT and self.ci and (self.ci[0] > 0 or self.ci[1] < 0):
            parts.append(f"significant but inside the +-{self.margin:g} margin")
        if self.verdict == NOT_SIGNIFICANT and self.detectable is not None:
            parts.append(f"this study could detect about {self.detectable:.3g} (margin {self.margin:g})")
        if self.seed_share is not None:
            parts.append(f"{self.seed_share:.0%} of the interval's variance is seed noise")
        return "; ".join(parts)


def decide(d: np.ndarray, estimate: float, margin: float, d_units_only: np.ndarray | None = None, floor: float = 0.0) -> Decision:
    """Verdict for a bootstrap distribution `d` of a difference (positive supports the claim).
    `d_units_only`: the same difference resampled without seeds, to say how much of the width is seed noise.
    `floor`: the least half-width the interval may have (discrete units, see `item_floor`)."""
    lo, hi = interval(d)
    lo, hi = min(lo, estimate - floor), max(hi, estimate + floor)
    verdict = _verdict(lo, hi, margin)
    share = None
    if d_units_only is not None:
        v_all, v_units = float(np.var(d)), float(np.var(d_units_only))
        share = max(0.0, 1.0 - v_units / v_all) if v_all > 0 else 0.0
    return Decision(verdict, float(estimate), (lo, hi), margin, float(Z_POWER * np.std(d)), share, p_value(d))


def p_value(d: np.ndarray) -> float:
    """Two-sided p-value of 0 from replicates of a difference: twice the smaller tail at 0, (count + 1) / (B + 1)."""
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    if not len(d):
        return 1.0
    tail = min((d <= 0).sum(), (d >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (len(d) + 1)))


def holm(ps: list[float], alpha: float = 1 - LEVEL) -> list[bool]:
    """Holm's step-down: which of a family's hypotheses are rejected with family-wise error at most alpha."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [False] * len(ps)
    for k, i in enumerate(order):
        if ps[i] > alpha / (len(ps) - k):
            break
        out[i] = True
    return out


def benjamini_hochberg(ps: list[float], q: float = 1 - LEVEL) -> list[bool]:
    """Benjamini-Hochberg: which hypotheses are rejected with false-discovery rate at most q."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    last = max((k for k, i in enumerate(order, 1) if ps[i] <= q * k / m), default=0)
    rank = {i: k for k, i in enumerate(order, 1)}
    return [rank[i] <= last for i in range(m)]


def compare(better: Signal, worse: Signal, margin: float, higher_better: bool) -> Decision:
    """Paired decision of 'better beats worse' on one signal (both measured on the same units)."""
    return compare_many([(better, worse)], margin, higher_better)


def compare_many(pairs: list[tuple[Signal, Signal]], margin: float, higher_better: bool) -> Decision:
    """Paired decision of 'better beats worse', the difference averaged over several (better, worse) pairs
    (e.g. matched checkpoints), every pair on the same units. With several seeds shared by both sides (seeds_interval)
    a random-effects t interval; with one seed, the paired bootstrap over units."""
    sign = 1.0 if higher_better else -1.0
    est = sign * float(np.mean([value(b) - value(w) for b, w in pairs]))
    floor = max((item_floor(u) for b, _ in pairs for u in b.values()), default=0.0)
    seeded = seeds_interval(pairs, sign)
    if seeded is not None:
        return decide_t(est, *seeded, margin, floor)
    diff = lambda seeds: sign * np.mean([boot(b, seeds) - boot(w, seeds) for b, w in pairs], axis=0)  # noqa: E731
    return decide(diff(True), est, margin, None, floor)


def seeds_interval(pairs: list[tuple[Signal, Signal]], sign: float) -> tuple[float, int, float] | None:
    """(standard error, degrees of freedom, seed share of the variance) of the mean paired difference over S seeds and
    U units per unit set, by the two-way random-effects decomposition of d[s, u] (the per-unit contributions to
    each seed's difference): Var = var_s(d_s) / S (seed-to-seed spread, which already holds the run-by-unit noise)
    + sigma2_unit / U (units that differ in their difference, from the two-way mean squares, noise removed), with
    S - 1 degrees of freedom. None when the two sides do not share S >= 2 seeds (a deterministic side, the base
    model, pairs with every seed)."""
    per_set: dict[str, list[np.ndarray]] = {}
    S = None
    for b, w in pairs:
        for key in b:
            ub, uw = b[key], w[key]
            n_b, n_w = ub.scores.shape[0], uw.scores.shape[0]
            if max(n_b, n_w) < 2 or (min(n_b, n_w) > 1 and (n_b != n_w or (ub.seeds and uw.seeds and ub.seeds != uw.seeds))):
                return None
            s_n = max(n_b, n_w)
            if S not in (None, s_n):
                return None
            S = s_n
            per_set.setdefault(key, []).append(sign * (ub.scores - uw.scores) * len(ub.counts) / ub.counts.sum())  # (S, U)
    K = len(per_set)
    d_s = np.zeros(S)
    unit_var = 0.0
    for key, ds in per_set.items():
        y = np.mean(ds, axis=0)  # (S, U): averaged over the pairs (checkpoints) on these units
        U = y.shape[1]
        d_s += y.mean(1) / K
        if U > 1:
            resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
            ms_unit = S * np.var(y.mean(0), ddof=1)
            ms_err = float((resid ** 2).sum() / ((S - 1) * (U - 1)))
            unit_var += max(0.0, ms_unit - ms_err) / (S * U) / K ** 2
    seed_var = float(np.var(d_s, ddof=1) / S)
    total = seed_var + unit_var
    return float(np.sqrt(total)), S - 1, (seed_var / total if total > 0 else 0.0)


def decide_t(estimate: float, se: float, df: int, seed_share: float, margin: float, floor: float = 0.0) -> Decision:
    """Verdict from a t interval: estimate +- t(df) se (at least +-floor), as `decide` reads an interval."""
    from scipy import stats as st

    q = float(st.t.ppf(0.5 + LEVEL / 2, df))
    half = max(q * se, floor)
    lo, hi = estimate - half, estimate + half
    p = float(2 * st.t.sf(abs(estimate) / se, df)) if se > 0 else (0.0 if estimate else 1.0)
    verdict = _verdict(lo, hi, margin)
    return Decision(verdict, float(estimate), (lo, hi), margin, float((q + 0.84) * se), seed_share, p)


def _verdict(lo: float, hi: float, margin: float) -> str:
    if -margin < lo and hi < margin:
        return EQUIVALENT
    if lo > 0:
        return REPRODUCED
    if hi < 0:
        return NOT_REPRODUCED
    return NOT_SIGNIFICANT


def item_floor(u: Units) -> float:
    """Least half-width of a paired interval over benchmark items: 3/n. When two systems answer (almost) every
    item alike, the bootstrap interval shrinks to a point, yet with no item differing out of n the rate of
    items that would differ can still be 3/n (the rule of three, 95%); 50 items cannot show a difference
    below 0.06 to be absent. Held-out documents (token counts) are continuous: no floor."""
    return 3.0 / len(u.counts) if np.all(u.counts == 1) and np.isin(u.scores, (0.0, 1.0)).all() else 0.0


def above_chance(lo: float, hi: float, chance: float | None) -> str:
    """'above' if the interval is clear above the chance rate (null chance counts as 0), 'at chance'
    if it covers it, 'below' if clear below: only 'above' can carry a forgetting verdict."""
    c = 0.0 if chance is None else chance
    return "above" if lo > c else ("below" if hi < c else "at chance")


def min_detectable(p: float, n: int) -> float:
    """Smallest accuracy difference between two systems on n items at accuracy p that a 5% test detects
    with 80% power (2.8 * sqrt(2 p (1-p) / n), unpaired: a paired test on correlated systems detects less)."""
    return float(Z_POWER * np.sqrt(2 * p * (1 - p) / max(n, 1)))


def loss_detectable(scores, counts) -> float:
    """Smallest difference in token-weighted mean loss between two systems on these units that a 5% test
    detects with 80% power, from one system's per-unit losses (unpaired: an upper bound; pairing removes the
    variance the systems share, which after short fine-tuning is most of it)."""
    s, c = np.asarray(scores, float), np.asarray(counts, float)
    mean = s.sum() / c.sum()
    n = len(c)
    se = np.sqrt(n / max(n - 1, 1) * np.sum((s - mean * c) ** 2)) / c.sum()  # ratio-estimator standard error
    return float(Z_POWER * np.sqrt(2) * se)


def interp_at(x_target: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per replicate b: y interpolated at x_target[b] along the curve (xs[:, b], ys[:, b]) (points in curve
    order, e.g. by tokens); NaN where x_target[b] is outside the curve's range."""
    out = np.full(xs.shape[1], np.nan)
    for b in range(xs.shape[1]):
        order = np.argsort(xs[:, b])
        x, y = xs[order, b], ys[order, b]
        if x[0] <= x_target[b] <= x[-1]:
            out[b] = np.interp(x_target[b], x, y)
    return out


def pareto(xs, ys) -> list[int]:
    """Indices of the points not dominated when both x and y are better larger, ordered by x."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = [i for i in range(len(xs))
            if not np.any((xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i])))]
    return sorted(keep, key=lambda i: xs[i])
