"""Forecasts from the first checkpoints of a run: its held-out curves fitted and extrapolated to the budget,
with bootstrap prediction intervals; and forecasts scored against later checkpoints (backtests).

Two clocks. The learning-rate area S = sum over steps of lr/peak lr x tokens per step: a pilot is the first
part of the budget's run (same warm-up, same cosine), most of a short pilot is warm-up, where tokens buy
little, and the area is known in advance for every token count of the schedule. And tokens. Which one a
curve follows past the pilot cannot be told from the pilot, so forecasts mix both (Mixture).

Each signal is a change from the base model, zero at the start: the gain in held-out target loss
(L_base - L), KL drift from the base on general text, and the change in general-text loss. Each is fitted
as c * x^b (Zhang et al. 2024, arXiv 2402.17193: fine-tuning loss is a power law in data; Kalajdzievski
2024, arXiv 2401.05605: forgetting grows as a power law in steps). c is linear given b, so the fit is exact
least squares over a grid of b, for every bootstrap replicate at once: no optimizer to fail. Past the pilot,
forgetting follows the gain (Linked).

Intervals: each replicate resamples held-out documents (the same indices for every method, so differences
between methods are paired; stats.unit_indices), seeds when a method has several, and adds training noise
between checkpoints (what documents do not carry) at the fit's residual scale, itself drawn from its
uncertainty: with 2 parameters on 4 points, the residuals say little about the noise.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import stats

MIN_POINTS = 3  # checkpoints after the base a fit needs: two parameters and one degree of freedom
LEVEL = 0.90  # prediction intervals
EXPONENTS = np.geomspace(0.05, 2.0, 240)  # the power-law exponents the fit chooses from (2: KL's early, quadratic growth)
LINK = (0.75, 1.25)  # forgetting per unit of learning beyond the pilot: exponent range (about linear; see Linked)
N_BOOT = 1000


def lr_multiplier(step: int, total: int, warmup: int) -> float:
    """transformers' get_cosine_schedule_with_warmup at optimizer step `step` (counted from 0)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule, as train.budget and train.loop make it."""

    budget_tokens: int
    step_tokens: int  # rows per step x seq_len
    warmup: float = 0.1

    @property
    def total_steps(self) -> int:
        return math.ceil(self.budget_tokens / self.step_tokens - 1e-9)

    def area(self, tokens) -> np.ndarray:
        """Learning-rate area (tokens at the peak learning rate) after `tokens` trained, for each value."""
        total = self.total_steps
        cum = np.concatenate([[0.0], np.cumsum([lr_multiplier(k, total, int(self.warmup * total)) for k in range(total)])])
        steps = np.clip(np.asarray(tokens, float) / self.step_tokens, 0, total)
        return np.interp(steps, np.arange(total + 1), cum) * self.step_tokens

    def end_area(self, budgets) -> np.ndarray:
        """Area at the end of a run of each budget (same batch and warm-up fraction): the what-if-budget clock."""
        return np.array([Schedule(int(b), self.step_tokens, self.warmup).area([b])[0] for b in np.atleast_1d(budgets)])


@dataclass
class Signal:
    """One signal of one run (or of one method's seeds) along its checkpoints: per-document sums.
    scores: (seeds, checkpoints, units); counts: (units,); base: (units,) the base model's sums (zeros for KL)."""

    key: str  # the document set, for paired resampling: every method's replicate b uses the same documents
    scores: np.ndarray
    counts: np.ndarray
    base: np.ndarray
    sign: float = 1.0  # +1: signal - base (KL, general loss change); -1: base - signal (gain in target loss)

    def values(self) -> np.ndarray:
        """(checkpoints,) change from the base, token-weighted over documents, mean over seeds."""
        return self.sign * (self.scores.mean(0) - self.base).sum(1) / self.counts.sum()

    def boot(self, n_boot: int) -> np.ndarray:
        """(n_boot, checkpoints) resampled changes: seeds, then documents (shared indices)."""
        n_s, _, n_u = self.scores.shape
        idx = stats.unit_indices(f"forecast:{self.key}", n_u, n_boot)
        if n_s > 1:
            pick = stats.seed_indices(f"forecast:{self.key}", n_s, n_boot)
            per = self.scores[pick].mean(1)  # (B, K, U)
        else:
            per = np.broadcast_to(self.scores[0], (n_boot, *self.scores.shape[1:]))
        rows = np.arange(n_boot)[:, None]
        num = (per[rows, :, idx] - self.base[idx][:, :, None]).sum(1)  # (B, K)
        return self.sign * num / self.counts[idx].sum(1)[:, None]


@dataclass(frozen=True)
class Query:
    """Where to predict: token counts and the learning-rate areas there (along one run's schedule, or at the end
    of runs of those budgets: Schedule.end_area)."""

    tokens: np.ndarray
    area: np.ndarray

    @staticmethod
    def along(sch: "Schedule", tokens) -> "Query":
        t = np.atleast_1d(np.asarray(tokens, float))
        return Query(t, sch.area(t))


@dataclass
class Fit:
    """c * (x / s_ref)^b fitted to one signal on one clock (x: the learning-rate area or tokens), with replicates
    for intervals (or `reason` why there is none)."""

    reason: str = ""  # non-empty: no forecast, and why
    clock: str = "area"  # area | tokens
    c: float = 0.0
    b: float = 0.0
    s_ref: float = 1.0
    boot_c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    boot_b: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual_sd: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reason

    def _x(self, q: Query) -> np.ndarray:
        return (q.area if self.clock == "area" else q.tokens) / self.s_ref

    def predict(self, q: Query) -> np.ndarray:
        return self.c * self._x(q) ** self.b

    def predict_boot(self, q: Query) -> np.ndarray:
        """(n_boot, len(q)) replicate predictions."""
        return self.boot_c[:, None] * self._x(q)[None, :] ** self.boot_b[:, None]


@dataclass
class Mixture:
    """Power laws on both clocks, equally weighted: which clock a curve follows past the pilot is not knowable from
    the pilot. In the learning-rate area the warm-up is discounted (a step at lr 0 buys nothing); in tokens it is
    not, and development runs of SmolLM2-135M on python-code followed a power law in tokens (exponent ~2 from 1/50
    to 1/3 of the budget) where the area's exponent rose from 0.8 to 1.5 past the pilot. Replicate b comes from
    the first clock for b < n/2 and from the second after, with the same documents for every method."""

    fits: list

    ok = True
    reason = ""

    def predict(self, q: Query) -> np.ndarray:
        return np.mean([f.predict(q) for f in self.fits], axis=0)

    def predict_boot(self, q: Query) -> np.ndarray:
        draws = [f.predict_boot(q) for f in self.fits]
        n = len(draws[0])
        cut = [round(i * n / len(draws)) for i in range(len(draws) + 1)]
        return np.concatenate([d[cut[i]:cut[i + 1]] for i, d in enumerate(draws)])


def fit_clocks(q: Query, sig: "Signal", n_boot: int = N_BOOT, need_positive: bool = False):
    """The signal fitted on both clocks (a Mixture), or the one that fits, or a Fit saying why none does."""
    fits = [fit(q.area, sig, n_boot, need_positive), fit(q.tokens, sig, n_boot, need_positive, clock="tokens")]
    good = [f for f in fits if f.ok]
    return fits[0] if not good else good[0] if len(good) == 1 else Mixture(good)


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of y (R, K): the (c, b) minimising sum (y - c x^b)^2 over the exponent grid."""
    basis = x[None, :] ** EXPONENTS[:, None]  # (E, K)
    num = y @ basis.T  # (R, E)
    den = (basis ** 2).sum(1)  # (E,)
    best = np.argmax(num ** 2 / den, axis=1)  # least SSE = most explained
    return num[np.arange(len(y)), best] / den[best], EXPONENTS[best]


def fit(area: np.ndarray, sig: Signal, n_boot: int = N_BOOT, need_positive: bool = False, clock: str = "area") -> Fit:
    """Fit the signal's change from the base along a clock (the area of its checkpoints, or their tokens; 0 is the
    base). need_positive: a learning signal, which a run that did not learn cannot forecast."""
    area = np.asarray(area, float)
    keep = area > 0
    if keep.sum() < MIN_POINTS:
        return Fit(reason=f"{int(keep.sum())} checkpoint(s) after the base, a fit needs {MIN_POINTS}")
    x = area[keep] / area[keep][-1]  # scaled to the last pilot point: exponents act on O(1) numbers
    y = sig.values()[keep]
    c, b = (v[0] for v in _least_squares(x, y[None, :]))
    if need_positive and c <= 0:
        return Fit(reason=f"held-out loss did not fall below the base's (change {y[-1]:+.4f} nats/token at the last "
                          f"checkpoint): a run that does not learn has no learning curve to extrapolate")
    resid = y - c * x ** b
    n = len(y)
    dof = n - 2
    sd = math.sqrt((resid ** 2).sum() / dof) if dof > 0 else 0.0
    # Training noise between checkpoints: normal, with its sd drawn from what dof residuals say of it (scaled
    # inverse chi-square), so that a fit on 3-5 points is as unsure of the noise as those points leave it. Seeded by
    # the signal's own data: each method draws its own training noise (one seed for all made every method's noise
    # the same draws, so the paired differences between methods were too sure).
    rng = np.random.default_rng(stats.SEED + 7 + zlib.crc32(np.ascontiguousarray(sig.scores).tobytes()))
    sd_b = sd * np.sqrt(dof / rng.chisquare(max(dof, 1), size=(n_boot, 1))) if dof > 0 else np.zeros((n_boot, 1))
    yb = sig.boot(n_boot)[:, keep] + sd_b * rng.standard_normal((n_boot, n))
    bc, bb = _least_squares(x, yb)
    return Fit(clock=clock, c=float(c), b=float(b), s_ref=float(area[keep][-1]), boot_c=bc, boot_b=bb,
               residual_sd=sd)


@dataclass
class Linked:
    """A forgetting signal linked to learning beyond the pilot: its own fit up to the pilot's area s_p, then
    v(S) = v(s_p) * (g(S) / g(s_p))^gamma, g the gain in target loss. Early on KL grows as the square of the
    weights' displacement (KL ~ dtheta' F dtheta / 2) and a power law in S fitted there extrapolates that square
    far past where it holds; forgetting is close to linear in the fine-tuning loss (Kalajdzievski 2024, arXiv
    2401.05605). So gamma is about 1, drawn per replicate from LINK (1 at the middle): development runs of
    SmolLM2-135M on python-code had 0.81 (LoRA r16) and 1.02 (full) between 1/8 and 1/3 of their budget."""

    own: object  # Fit | Mixture: the signal up to the pilot
    gain: object  # the target-loss gain
    pilot: Query
    gamma: np.ndarray

    ok = True
    reason = ""

    @staticmethod
    def of(own, gain, pilot: Query, n_boot: int = N_BOOT) -> "Linked":
        rng = np.random.default_rng(stats.SEED + 11)
        return Linked(own, gain, pilot, rng.uniform(*LINK, size=n_boot))

    def _past(self, q: Query) -> Query:
        return Query(np.maximum(q.tokens, self.pilot.tokens[0]), np.maximum(q.area, self.pilot.area[0]))

    def predict(self, q: Query) -> np.ndarray:
        g_p = self.gain.predict(self.pilot)[0]
        ratio = np.clip(self.gain.predict(self._past(q)) / g_p, 0, None) if g_p > 0 else np.ones(len(q.tokens))
        return np.where(q.tokens <= self.pilot.tokens[0], self.own.predict(q), self.own.predict(self.pilot)[0] * ratio)

    def predict_boot(self, q: Query) -> np.ndarray:
        g = self.gain.predict_boot(self._past(q))  # (B, Q)
        g_p = self.gain.predict_boot(self.pilot)  # (B, 1)
        ratio = np.where(g_p > 0, np.clip(g / np.where(g_p > 0, g_p, 1.0), 0, None), 1.0) ** self.gamma[:, None]
        return np.where(q.tokens[None, :] <= self.pilot.tokens[0], self.own.predict_boot(q), self.own.predict_boot(self.pilot) * ratio)


def band(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Central `level` interval of replicate draws (axis 0)."""
    a = (1 - level) / 2
    return np.quantile(draws, a, axis=0), np.quantile(draws, 1 - a, axis=0)


def crossing(area_grid: np.ndarray, diff: np.ndarray) -> float | None:
    """First point where `diff` (along area_grid) turns from <= 0 to > 0, linearly interpolated; None if it never
    does (callers tell "never" from "from the start" by diff[0] > 0)."""
    pos = np.flatnonzero(diff > 0)
    if not len(pos) or pos[0] == 0:
        return None
    i = pos[0]
    x0, x1, d0, d1 = area_grid[i - 1], area_grid[i], diff[i - 1], diff[i]
    return float(x0 + (x1 - x0) * (-d0) / (d1 - d0)) if d1 != d0 else float(x1)
