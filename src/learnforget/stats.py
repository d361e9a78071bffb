"""Intervals and verdicts for the study report: item bootstrap (plain and paired), chance checks,
the minimum detectable difference, a sign-consistency rule for losses, and the Pareto front.

Bootstrap over items: every benchmark scores the same items, in the same order, for the base model
and every checkpoint. A resample is a matrix of item indices drawn once per (task, item count) from
a seeded generator, so applying the same indices to two systems gives a *paired* bootstrap of their
difference, and a score averaged over several tasks resamples each task's items independently.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

N_BOOT = 1000
SEED = 20240515
LEVEL = 0.95
Z = 1.96

REPRODUCED, NOT_REPRODUCED, NOT_SIGNIFICANT, NOT_RUN = "reproduced", "not reproduced", "not significant", "not run"


@lru_cache(maxsize=32)
def indices(key: str, n: int, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, n) item indices for resampling `n` items of `key` (a task name): seeded, shared by every system."""
    rng = np.random.default_rng(SEED + zlib.crc32(f"{key}:{n}".encode()))
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int32)


def dist(items: dict[str, np.ndarray]) -> np.ndarray:
    """Bootstrap distribution (N_BOOT,) of the mean over tasks of each task's mean item score."""
    return np.mean([np.asarray(a, float)[indices(k, len(a))].mean(axis=1) for k, a in items.items()], axis=0)


def point(items: dict[str, np.ndarray]) -> float:
    return float(np.mean([np.mean(a) for a in items.values()]))


def interval(d: np.ndarray) -> tuple[float, float]:
    a = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(d, [a, 100 - a])
    return float(lo), float(hi)


def mean_ci(items, key: str = "items") -> tuple[float, float, float]:
    """Mean of 0/1 (or fractional) item scores with its 95% bootstrap interval: (value, lo, hi)."""
    x = {key: np.asarray(items, float)}
    return (point(x), *interval(dist(x)))


def verdict(lo: float, hi: float) -> str:
    """Interval of (claimed-better minus other): clear of 0 on the claimed side → reproduced; clear of 0
    on the other side → not reproduced; covering 0 → not significant."""
    if lo > 0:
        return REPRODUCED
    if hi < 0:
        return NOT_REPRODUCED
    return NOT_SIGNIFICANT


def sign_rule(diffs, tol: float) -> str:
    """Rule for quantities without an interval (held-out losses): differences oriented so that positive
    supports the claim; reproduced if every one is > tol, not reproduced if every one is < -tol."""
    d = np.asarray(diffs, float)
    if len(d) and (d > tol).all():
        return REPRODUCED
    if len(d) and (d < -tol).all():
        return NOT_REPRODUCED
    return NOT_SIGNIFICANT


def above_chance(lo: float, hi: float, chance: float | None) -> str:
    """'above' if the interval is clear above the chance rate (null chance counts as 0), 'at chance'
    if it covers it, 'below' if clear below: only 'above' can carry a forgetting verdict."""
    c = 0.0 if chance is None else chance
    return "above" if lo > c else ("below" if hi < c else "at chance")


def min_detectable(p: float, n: int) -> float:
    """Smallest difference between two systems scored on n items at accuracy p that a 95% test detects
    (1.96 * sqrt(2 p (1-p) / n), unpaired; a paired test on correlated systems detects somewhat less)."""
    return float(Z * np.sqrt(2 * p * (1 - p) / max(n, 1)))


def pareto(xs, ys) -> list[int]:
    """Indices of the points not dominated when both x and y are better larger, ordered by x."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = [i for i in range(len(xs))
            if not np.any((xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i])))]
    return sorted(keep, key=lambda i: xs[i])


# ----------------------------------------------------------------------------- the paper's claims
# Each claim gives rows {claim, text, group, comparison, signal, verdict, estimate, ci, numbers, rule},
# computed from `A` (report.analyse): series of checkpoints at the best learning rate per method.

LOSS_TOL = 0.01  # nats/token: held-out loss differences smaller than this count as no difference
SPECTRUM_RATIO = 10.0  # the paper: the full-FT update's rank@90% is 10-100x the LoRA ranks
DIVERSITY_TOL = 0.10  # without per-problem scores: a difference under 10% of the larger value is no difference
CLAIMS = {
    "a": "Full fine-tuning learns more per token than LoRA",
    "b": "LoRA forgets less than full fine-tuning",
    "c": "At matched learning, LoRA forgets less than dropout / weight-decay regularized full fine-tuning",
    "d": "Longer training favours full fine-tuning (its learning lead over LoRA grows with tokens)",
    "e": "LoRA is more sensitive to the learning rate than full fine-tuning",
    "f": f"The full fine-tuning update needs a rank@90% far above (>= {SPECTRUM_RATIO:g}x) the LoRA ranks",
    "g": "Full fine-tuning collapses the distinct correct solutions more than LoRA",
}
RULES = {
    "paired": "paired bootstrap over items (both systems resampled on the same items, 1000 resamples), difference "
              "averaged over matched checkpoints: reproduced if its 95% interval is above 0, not reproduced if below 0",
    "loss": f"held-out losses have no interval: reproduced if the difference favours the claim by more than {LOSS_TOL} "
            f"nats/token at every compared point, not reproduced if it opposes it by more than that at every one",
    "spread": "spread = best minus worst final score over the learning rates tried; paired bootstrap of "
              "(LoRA spread - full spread) for accuracies, the loss rule for losses",
    "spectrum": f"median rank@90% of the full-FT update matrices / LoRA rank, one row per rank in the study, bootstrap "
                f"over matrices: reproduced if the 95% interval is above {SPECTRUM_RATIO:g}, not reproduced if below "
                f"(the paper's 10-100x is against the usual ranks, 16-64, on 4096-wide matrices; a rank close to the "
                f"matrix width cannot be exceeded 10x)",
    "diversity": f"paired bootstrap over problems when per-problem scores are given, else: reproduced if LoRA's distinct "
                 f"correct solutions exceed full FT's by more than {DIVERSITY_TOL:.0%} of the larger value",
}
LOWER_BETTER = {"target", "general"}
SIGNAL_NAME = {"metric": "learning task", "target": "held-out target loss", "signal": "forgetting score (tasks above chance)",
               "paper": "paper's 3-task mean", "general": "held-out general loss"}


def _row(claim, group, comparison, signal, verdict, estimate=None, ci=None, numbers="", rule=""):
    return {"claim": claim, "text": CLAIMS[claim], "group": group, "comparison": comparison, "signal": signal,
            "verdict": verdict, "estimate": estimate, "ci": ci, "numbers": numbers, "rule": rule}


def signal_tasks(ctx, sig, domain) -> list[str]:
    """The tasks behind a task-based signal: the domain's learning task, or the signal / paper forgetting sets."""
    return ctx["metric_" + domain] if sig == "metric" else ctx.get(sig, [])


def subset(tasks: dict, names: list[str]) -> dict | None:
    """{task: items} for `names`, or None if any is missing (a score is never averaged over fewer tasks)."""
    return {t: tasks[t] for t in names} if names and all(t in tasks for t in names) else None


def _items(p, names):
    return subset(p["tasks"], names)


def _pairs(a, b, names=None):
    """Checkpoints of a and b at the same token count (> 0), both scored on `names` if given."""
    pb = {p["tokens"]: p for p in b["points"]}
    return [(p, pb[p["tokens"]]) for p in a["points"] if p["tokens"] > 0 and p["tokens"] in pb
            and (names is None or (_items(p, names) and _items(pb[p["tokens"]], names)))]


def _who(s):
    return f"{s['label']} (lr {s['lr']:g})"


def _fmt_loss_pairs(pairs, sig, a, b):
    toks = "/".join(f"{pa['tokens']:,}" for pa, _ in pairs)
    va = "/".join(f"{pa[sig]:.3f}" for pa, _ in pairs)
    vb = "/".join(f"{pb[sig]:.3f}" for _, pb in pairs)
    return f"at {toks} tokens: {a['label']} {va} vs {b['label']} {vb}"


def compare(claim, A, better, worse, sig):
    """Rows for 'better beats worse on sig' at matched tokens (the claimed-better system first)."""
    g, comp, what = better["group"], f"{_who(better)} vs {_who(worse)}", SIGNAL_NAME[sig]
    if sig in LOWER_BETTER:
        pairs = _pairs(better, worse)
        if not pairs:
            return [_row(claim, g, comp, what, NOT_RUN, numbers="no checkpoints at matched tokens")]
        d = [pw[sig] - pb[sig] for pb, pw in pairs]
        base = A["ctx"]["base"][g][sig]
        ref = f" (base {base[0]:.3f})" if base else ""
        return [_row(claim, g, comp, what + f" ({worse['label']} - {better['label']})", sign_rule(d, LOSS_TOL),
                     float(np.mean(d)), None, _fmt_loss_pairs(pairs, sig, better, worse) + ref, RULES["loss"])]
    names = signal_tasks(A["ctx"], sig, better["domain"])
    if sig == "metric" and names:
        what = f"{names[0]} {A['ctx']['tasks'][names[0]]['metric']}"
    if not names:
        why = "no forgetting task is above chance for the base model" if sig == "signal" else "task not evaluated"
        return [_row(claim, g, comp, what, NOT_RUN, numbers=why)]
    pairs = _pairs(better, worse, names)
    if not pairs:
        return [_row(claim, g, comp, what, NOT_RUN, numbers="no matched checkpoints scored on " + ", ".join(names))]
    d = np.mean([dist(_items(pb, names)) - dist(_items(pw, names)) for pb, pw in pairs], axis=0)
    vb, vw = (np.mean([point(_items(p, names)) for p in ps]) for ps in zip(*pairs))
    lo, hi = interval(d)
    base = A["ctx"]["base"][g][sig]
    ref = f"; base {base[0]:.3f} (change: {better['label']} {vb - base[0]:+.3f}, {worse['label']} {vw - base[0]:+.3f})" if base else ""
    at_chance = [t for t in names if A["ctx"]["tasks"][t]["status"] != "above"]
    note = f"; includes task(s) at chance: {', '.join(at_chance)}" if sig == "paper" and at_chance else ""
    toks = "/".join(f"{pb['tokens']:,}" for pb, _ in pairs)
    nums = (f"{better['label']} {vb:.3f} vs {worse['label']} {vw:.3f} (mean over {len(pairs)} checkpoint(s) at {toks} "
            f"tokens; tasks: {', '.join(names)}){ref}{note}")
    return [_row(claim, g, comp, what + f" ({better['label']} - {worse['label']})", verdict(lo, hi), float(vb - vw), [lo, hi], nums, RULES["paired"])]


def _fam(A, g, fam):
    return [s for s in A["best"] if s["group"] == g and s["family"] == fam]


def _learn_sigs(A, g):
    return ["metric", "target"] if A["learn"][g] == "metric" else ["target"]


def growth(A, F, L):
    """Claim d: (full - LoRA learning gap at the last matched checkpoint) - (gap at the first)."""
    g, comp, rows = F["group"], f"{_who(F)} vs {_who(L)}", []
    for sig in _learn_sigs(A, g):
        names = None if sig == "target" else signal_tasks(A["ctx"], sig, F["domain"])
        pairs = _pairs(F, L, names)
        if len(pairs) < 2:
            rows.append(_row("d", g, comp, SIGNAL_NAME[sig], NOT_RUN, numbers="fewer than 2 matched checkpoints"))
            continue
        (f0, l0), (f1, l1) = pairs[0], pairs[-1]
        span = f"{f0['tokens']:,} -> {f1['tokens']:,} tokens"
        if sig == "target":
            g0, g1 = l0["target"] - f0["target"], l1["target"] - f1["target"]
            rows.append(_row("d", g, comp, "held-out target loss gap (LoRA - full), last - first", sign_rule([g1 - g0], LOSS_TOL),
                             g1 - g0, None, f"gap {g0:+.3f} -> {g1:+.3f} nats/token over {span}", RULES["loss"]))
            continue
        it = [_items(p, names) for p in (f0, l0, f1, l1)]
        d = (dist(it[2]) - dist(it[3])) - (dist(it[0]) - dist(it[1]))
        g0, g1 = point(it[0]) - point(it[1]), point(it[2]) - point(it[3])
        lo, hi = interval(d)
        rows.append(_row("d", g, comp, f"{names[0]} gap (full - LoRA), last - first", verdict(lo, hi), g1 - g0, [lo, hi],
                         f"gap {g0:+.3f} -> {g1:+.3f} over {span}", RULES["paired"]))
    return rows


def _spread(A, g, label, sig):
    """(estimate, bootstrap dist or None, text) of best-minus-worst final score across one label's lrs."""
    ss = [s for s in A["series"] if s["group"] == g and s["label"] == label]
    fins = [s["points"][-1] for s in ss]
    lrs = ", ".join(f"{s['lr']:g}" for s in ss)
    if sig == "target":
        v = [p["target"] for p in fins]
        return max(v) - min(v), None, f"{label}: lr {lrs} -> {', '.join(f'{x:.3f}' for x in v)}", len(ss)
    names = signal_tasks(A["ctx"], sig, ss[0]["domain"])
    its = [_items(p, names) for p in fins]
    if not all(its):
        return None, None, "", len(ss)
    v = [point(i) for i in its]
    ds = np.array([dist(i) for i in its])
    return max(v) - min(v), ds.max(0) - ds.min(0), f"{label}: lr {lrs} -> {', '.join(f'{x:.3f}' for x in v)}", len(ss)


def sensitivity(A, g, full_label, lora_label):
    comp, rows = f"{lora_label} vs {full_label}", []
    for sig in _learn_sigs(A, g):
        (el, dl, tl, nl), (ef, df, tf, nf) = _spread(A, g, lora_label, sig), _spread(A, g, full_label, sig)
        if min(nl, nf) < 2 or el is None or ef is None:
            rows.append(_row("e", g, comp, SIGNAL_NAME[sig], NOT_RUN, numbers="needs >= 2 learning rates per method, all scored"))
            continue
        nums = f"spread {lora_label} {el:.3f} vs {full_label} {ef:.3f} ({tl}; {tf})"
        if dl is None:
            rows.append(_row("e", g, comp, "spread of final held-out target loss", sign_rule([el - ef], LOSS_TOL), el - ef, None, nums, RULES["spread"]))
        else:
            lo, hi = interval(dl - df)
            rows.append(_row("e", g, comp, "spread of final learning metric", verdict(lo, hi), el - ef, [lo, hi], nums, RULES["spread"]))
    return rows


def matched_learning(A, R, L):
    """Claim c on held-out losses: R's general loss interpolated at each LoRA checkpoint's target loss."""
    g, comp = R["group"], f"{_who(L)} vs {_who(R)}"
    pts = sorted(R["points"], key=lambda p: p["target"])
    xs, ys = [p["target"] for p in pts], [p["general"] for p in pts]
    inside = [p for p in L["points"] if xs[0] <= p["target"] <= xs[-1]]
    rule = RULES["loss"] + f"; {R['label']}'s general loss is linearly interpolated at each {L['label']} checkpoint's target loss"
    if not inside:
        return _row("c", g, comp, "held-out general loss at matched target loss", NOT_SIGNIFICANT, None, None,
                    f"learning ranges do not overlap: {L['label']} target loss {min(p['target'] for p in L['points']):.3f}-"
                    f"{max(p['target'] for p in L['points']):.3f}, {R['label']} {xs[0]:.3f}-{xs[-1]:.3f}", rule)
    d = [float(np.interp(p["target"], xs, ys)) - p["general"] for p in inside]
    nums = "; ".join(f"at target loss {p['target']:.3f}: {L['label']} {p['general']:.3f} vs {R['label']} {p['general'] + x:.3f}"
                     for p, x in zip(inside, d))
    return _row("c", g, comp, f"held-out general loss at matched target loss ({R['label']} - {L['label']})",
                sign_rule(d, LOSS_TOL), float(np.mean(d)), None, nums, rule)


def spectrum(A):
    rows = (A["res"].get("analysis") or {}).get("spectrum")
    if not rows:
        return [_row("f", "all", "", "", NOT_RUN, numbers="no analysis.spectrum in results.json")]
    fam = {rid: s for s in A["series"] for rid in s["run_ids"]}
    lora_ranks = [s["rank"] for s in A["series"] if s["family"] == "lora" and s["rank"]]
    if not lora_ranks:
        return [_row("f", "all", "", "", NOT_RUN, numbers="no LoRA runs with a rank")]
    out = []
    for s in [s for s in A["best"] if s["family"] == "full"]:
        mine = [r for r in rows if r["run_id"] in s["run_ids"]]
        if not mine:
            continue
        last = max(r["tokens"] for r in mine)
        r90 = np.array([r["rank90"] for r in mine if r["tokens"] == last], float)
        frac = np.median([r["rank90"] / r["full_rank"] for r in mine if r["tokens"] == last])
        width = min(r["full_rank"] for r in mine if r["tokens"] == last)
        rng = np.random.default_rng(SEED)
        boot = np.median(r90[rng.integers(0, len(r90), (N_BOOT, len(r90)))], axis=1)
        lora_r90 = [r["rank90"] for r in rows if r["run_id"] in fam and fam[r["run_id"]]["family"] == "lora"]
        extra = f"; LoRA updates' median rank@90% {np.median(lora_r90):.0f}" if lora_r90 else ""
        for rank in sorted(set(lora_ranks)):
            lo, hi = interval(boot / rank)
            cap = f"; at most {width / rank:.1f}x is possible on these matrices" if width < SPECTRUM_RATIO * rank else ""
            out.append(_row("f", s["group"], f"{_who(s)} vs LoRA rank {rank}", "rank@90% of the full-FT update / LoRA rank",
                            verdict(lo - SPECTRUM_RATIO, hi - SPECTRUM_RATIO), float(np.median(r90) / rank), [lo, hi],
                            f"median rank@90% {np.median(r90):.0f} over {len(r90)} matrices at {last:,} tokens "
                            f"({frac:.0%} of full rank) vs LoRA rank {rank}{cap}{extra}", RULES["spectrum"]))
    return out or [_row("f", "all", "", "", NOT_RUN, numbers="no spectrum rows for full fine-tuning runs")]


def _div_rows(rows, s, task):
    mine = [r for r in rows if r["run_id"] in s["run_ids"] and r["task"] == task]
    last = max((r["tokens"] for r in mine), default=None)
    return [r for r in mine if r["tokens"] == last]


def diversity(A):
    rows = (A["res"].get("analysis") or {}).get("diversity")
    if not rows:
        return [_row("g", "all", "", "", NOT_RUN, numbers="no analysis.diversity in results.json")]
    out = []
    for g in A["groups"]:
        for F in _fam(A, g, "full"):
            for L in _fam(A, g, "lora"):
                for task in sorted({r["task"] for r in rows}):
                    f, l = _div_rows(rows, F, task), _div_rows(rows, L, task)
                    if not (f and l):
                        continue
                    vf, vl = np.mean([r["distinct_correct"] for r in f]), np.mean([r["distinct_correct"] for r in l])
                    base = [r["distinct_correct"] for r in rows if r["run_id"] == "base" and r["task"] == task]
                    nums = f"distinct correct per problem: {L['label']} {vl:.2f} vs {F['label']} {vf:.2f}" + (f" (base {np.mean(base):.2f})" if base else "")
                    if not any(r["distinct_correct"] for r in f + l) and not any(base):  # nothing to collapse
                        nums += (f"; no sample is correct for any model ({f[0]['n']} samples x {f[0].get('problems', '?')} problems): "
                                 f"the task is beyond this model, so it cannot test the claim")
                    comp, what = f"{_who(L)} vs {_who(F)}", f"{task} distinct correct ({L['label']} - {F['label']})"
                    if all("items" in r for r in f + l):
                        it = lambda rs: {"div:" + task: np.mean([np.asarray(r["items"], float) for r in rs], axis=0)}
                        lo, hi = interval(dist(it(l)) - dist(it(f)))
                        out.append(_row("g", g, comp, what, verdict(lo, hi), float(vl - vf), [lo, hi], nums, RULES["diversity"]))
                    else:
                        tol = DIVERSITY_TOL * max(vf, vl)
                        out.append(_row("g", g, comp, what, sign_rule([vl - vf], tol), float(vl - vf), None, nums, RULES["diversity"]))
    return out or [_row("g", "all", "", "", NOT_RUN, numbers="no diversity rows for both a full and a LoRA run")]


def claims(A) -> list[dict]:
    """All findings (a)-(g), in order."""
    rows = []
    for g in A["groups"]:
        for F in _fam(A, g, "full"):
            for L in _fam(A, g, "lora"):
                rows += [r for sig in _learn_sigs(A, g) for r in compare("a", A, F, L, sig)]
    for g in A["groups"]:
        for F in _fam(A, g, "full"):
            for L in _fam(A, g, "lora"):
                rows += [r for sig in ("signal", "paper", "general") for r in compare("b", A, L, F, sig)]
    regs = [s for s in A["best"] if s["family"] == "full-regularized"]
    rows += [matched_learning(A, R, L) for R in regs for L in _fam(A, R["group"], "lora")] or \
        [_row("c", "all", "", "", NOT_RUN, numbers="no full-regularized (dropout / weight decay) runs in this study")]
    for g in A["groups"]:
        for F in _fam(A, g, "full"):
            for L in _fam(A, g, "lora"):
                rows += growth(A, F, L)
    for g in A["groups"]:
        for fl in sorted({s["label"] for s in _fam(A, g, "full")}):
            for ll in sorted({s["label"] for s in _fam(A, g, "lora")}):
                rows += sensitivity(A, g, fl, ll)
    rows += spectrum(A) + diversity(A)
    have = {r["claim"] for r in rows}
    rows += [_row(c, "all", "", "", NOT_RUN, numbers="no full and LoRA runs in the same experiment") for c in "abde" if c not in have]
    return sorted(rows, key=lambda r: r["claim"])
