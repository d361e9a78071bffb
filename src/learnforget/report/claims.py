"""All findings (a)-(k) of a study, in order, and their families (Holm for the primary rows, Benjamini-Hochberg for the rest)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import stats
from .context import Analysis
from .findings import FORGETTING, RULES, Finding, at_matched_learning, at_tokens, growth, learned, sensitivity
from .regret import regret
from .schema import Point, Series
from .spectral import spectrum


def _learn_sigs(A: Analysis, g: str) -> list[str]:
    return ["metric", "target"] if A.learn[g] == "metric" else ["target"]


def _failed(claim: str, a: Series, b: Series) -> Finding:
    who = " and ".join(s.who for s in (a, b) if not s.learned)
    return Finding(claim, a.group, f"{a.who} vs {b.who}", "", stats.NOT_RUN,
                   numbers=f"{who} did not learn (final held-out target loss not below the base model's): a failed run is "
                           f"evidence of a bad learning rate, not of the claim")


def _full_lora_pairs(A: Analysis):
    for g in A.groups:
        for f in A.of_family(g, "full"):
            for lo in A.of_family(g, "lora"):
                yield g, f, lo


def _a_b(A: Analysis) -> list[Finding]:
    rows = []
    for g, f, lo in _full_lora_pairs(A):
        if not (f.learned and lo.learned):
            rows += [_failed("a", f, lo), _failed("b", lo, f)]
            continue
        rows += [at_tokens("a", A, f, lo, sig) for sig in _learn_sigs(A, g)]
        scored = any(t.role == "forgetting" for t in A.tasks.values())  # no forgetting task in the study: no task rows
        rows += [at_tokens("b", A, lo, f, sig) for sig in FORGETTING if scored or sig not in ("signal", "paper")]
        rows += [at_matched_learning("b", A, lo, f, sig) for sig in ("general", "kl_general")]
    return rows


def _c(A: Analysis) -> list[Finding]:
    rows = [at_matched_learning("c", A, lo, r, sig) for r in A.best if r.family == "full-regularized"
            for lo in A.of_family(r.group, "lora") for sig in ("general", "kl_general")]
    return rows or [Finding("c", "all", "", "", stats.NOT_RUN, numbers="no full-regularized (dropout / weight decay) runs in this study")]


def _d_e(A: Analysis) -> list[Finding]:
    rows = []
    for g, f, lo in _full_lora_pairs(A):
        rows += [growth(A, f, lo, sig) if f.learned and lo.learned else _failed("d", f, lo) for sig in _learn_sigs(A, g)]
    for g in A.groups:
        for fl in sorted({s.label for s in A.of_family(g, "full")}):
            for ll in sorted({s.label for s in A.of_family(g, "lora")}):
                rows += [sensitivity(A, g, fl, ll, sig) for sig in _learn_sigs(A, g)]
    return rows


def _last_rows(rows: list[dict], s: Series, task: str) -> list[dict]:
    mine = [r for r in rows if r["run_id"] in s.run_ids and r["task"] == task]
    last = max((r["tokens"] for r in mine), default=None)
    return [r for r in mine if r["tokens"] == last]


def _units(rs: list[dict], key: str, field: str, who: str) -> dict:
    return {key: stats.Units.of(key, [r[field] for r in rs], system=who)}


def _distinct_outputs(f: Series, lo: Series, fr: list[dict], lr_: list[dict], task: str) -> list[Finding]:
    """Collapse without correctness: distinct normalised outputs per problem, paired over problems."""
    if not all("distinct_items" in r for r in fr + lr_):
        return []
    key = f"div-distinct:{task}"
    dec = stats.compare(_units(lr_, key, "distinct_items", lo.who), _units(fr, key, "distinct_items", f.who), margin=0.0, higher_better=True)
    nums = (f"distinct outputs per problem of {fr[0]['n']} samples: {lo.label} {np.mean([r['distinct'] for r in lr_]):.2f} vs "
            f"{f.label} {np.mean([r['distinct'] for r in fr]):.2f}")
    return [Finding("g", f.group, f"{lo.who} vs {f.who}", f"{task} distinct outputs, correct or not ({lo.label} - {f.label})",
                    dec.verdict, dec.estimate, dec.ci, nums, RULES["diversity"], dec.note())]


def _diversity_rows(rows, f: Series, lo: Series, task: str) -> list[Finding]:
    fr, lr_ = _last_rows(rows, f, task), _last_rows(rows, lo, task)
    if not (fr and lr_):
        return []
    correct, distinct = _diversity_row(f, lo, fr, lr_, rows, task), _distinct_outputs(f, lo, fr, lr_, task)
    if correct.verdict == stats.NOT_RUN and distinct:  # nothing correct to count: the distinct outputs carry the claim
        distinct[0].numbers += f"; {correct.numbers}"
        return distinct
    return [correct, *distinct]


def _diversity_row(f: Series, lo: Series, fr: list[dict], lr_: list[dict], rows: list[dict], task: str) -> Finding:
    vf, vl = np.mean([r["distinct_correct"] for r in fr]), np.mean([r["distinct_correct"] for r in lr_])
    base = [r["distinct_correct"] for r in rows if r["run_id"] == "base" and r["task"] == task]
    nums = f"distinct correct per problem: {lo.label} {vl:.2f} vs {f.label} {vf:.2f}" + (f" (base {np.mean(base):.2f})" if base else "")
    comp, what = f"{lo.who} vs {f.who}", f"{task} distinct correct ({lo.label} - {f.label})"
    if not any(r["distinct_correct"] for r in fr + lr_) and not any(base):  # nothing to collapse
        return Finding("g", f.group, comp, what, stats.NOT_RUN, numbers=nums + (
            f"; no sample is correct for any model ({fr[0]['n']} samples x {fr[0].get('problems', '?')} problems): "
            f"the task is beyond this model, so it cannot test the claim"))
    if not all("items" in r for r in fr + lr_):
        return Finding("g", f.group, comp, what, stats.NOT_RUN, numbers=nums + "; no per-problem scores to pair")
    key = "div:" + task
    dec = stats.compare(_units(lr_, key, "items", lo.who), _units(fr, key, "items", f.who), margin=0.0, higher_better=True)
    return Finding("g", f.group, comp, what, dec.verdict, dec.estimate, dec.ci, nums, RULES["diversity"], dec.note())


def diversity(A: Analysis) -> list[Finding]:
    """(g): sampled solutions (analysis.diversity), and next-token entropy on held-out target text where it was scored."""
    rows = (A.res.get("analysis") or {}).get("diversity") or []
    out = [row for _, f, lo in _full_lora_pairs(A) for task in sorted({r["task"] for r in rows}) for row in _diversity_rows(rows, f, lo, task)]
    for _, f, lo in _full_lora_pairs(A):
        if not (f.learned and lo.learned):
            out.append(_failed("g", lo, f))
        elif f.points and A.signal(f.points[-1], "entropy_target", f.domain):
            out += [_entropy(at_tokens("g", A, lo, f, "entropy_target")), _entropy(at_matched_learning("g", A, lo, f, "entropy_target"))]
    if not rows and not out:
        return [Finding("g", "all", "", "", stats.NOT_RUN, numbers="no analysis.diversity and no held-out entropy in results.json")]
    return out or [Finding("g", "all", "", "", stats.NOT_RUN, numbers="no diversity rows for both a full and a LoRA run")]


def _entropy(row: Finding) -> Finding:
    row.rule, row.signal = RULES["entropy"], row.signal.replace("better by", "higher by")
    return row


MIN_SEEDS = 3  # fewer training seeds: a row describes runs, not methods (its interval cannot hold seed noise honestly)
SWEEP_CLAIMS = "ehi"  # read the learning-rate sweeps (one search seed in a study with a search), not the verdict runs
PRIMARY = "ab"  # per experiment: learning and forgetting, full fine-tuning vs LoRA, each at its chosen learning rate


def findings(A: Analysis) -> list[Finding]:
    """All findings (a)-(k), in order; primary rows under Holm per experiment, the rest under Benjamini-Hochberg,
    primary rows checked with each seed left out."""
    for s in {id(s): s for s in A.series + A.best}.values():
        s.learned = learned(A, s)
    primary = families(A, _a_b(A))
    rows = primary + _c(A) + _d_e(A) + spectrum(A) + diversity(A) + regret(A)
    have = {r.claim for r in rows}
    rows += [Finding(c, "all", "", "", stats.NOT_RUN, numbers="no full and LoRA runs in the same experiment") for c in "abde" if c not in have]
    families(A, [r for r in rows if r.claim not in PRIMARY])
    for seed in sorted({x for s in A.best for x in s.seeds}) if min((len(s.seeds) for s in A.best), default=0) >= MIN_SEEDS else []:
        A_ = without_seed(A, seed)
        again = families(A_, _a_b(A_), few=False)
        for r, o in zip(primary, again):
            if r.verdict != o.verdict:
                r.stable = False
                r.note = "; ".join(x for x in (r.note, f"without seed {seed}: {o.verdict}") if x)
            elif r.stable is None:
                r.stable = True
    return sorted(rows, key=lambda r: r.claim)


def families(A: Analysis, rows: list[Finding], few: bool = True) -> list[Finding]:
    """Each row's family, seeds and multiplicity-adjusted verdict. Primary rows (claims a, b) are one family per
    experiment under Holm's step-down (family-wise error at most 5%); the others one family under Benjamini-Hochberg
    (false-discovery rate at most 5%). A decided direction not rejected by its family's rule becomes not significant.
    A row resting on fewer than MIN_SEEDS seeds is 'one run': an interval, not a verdict about the methods (`few`:
    not for the leave-one-seed-out refits, which are compared verdict for verdict)."""
    for r in rows:
        r.family = "primary" if r.claim in PRIMARY else "exploratory"
        pool = A.series if r.claim in SWEEP_CLAIMS else A.best
        r.seeds = min((len(s.seeds) for s in pool if r.group in (s.group, "all")), default=0)
    groups: dict[tuple, list[Finding]] = {}
    for r in rows:
        if r.p is not None and r.verdict in (stats.REPRODUCED, stats.NOT_REPRODUCED, stats.EQUIVALENT, stats.NOT_SIGNIFICANT):
            groups.setdefault((r.family, r.group if r.family == "primary" else ""), []).append(r)
    for (family, _), rs in groups.items():
        rule = stats.holm if family == "primary" else stats.benjamini_hochberg
        for r, ok in zip(rs, rule([r.p for r in rs])):
            if not ok and r.verdict in (stats.REPRODUCED, stats.NOT_REPRODUCED):
                r.note = "; ".join(x for x in (r.note, f"interval clear of 0 but p = {r.p:.3g} is not below its "
                                   f"{'Holm' if family == 'primary' else 'Benjamini-Hochberg'} threshold") if x)
                r.verdict = stats.NOT_SIGNIFICANT
    for r in rows:
        if few and 0 < r.seeds < MIN_SEEDS and r.verdict != stats.NOT_RUN:
            r.note = "; ".join(x for x in (r.note, f"{r.seeds} seed{'s' * (r.seeds > 1)}: on these runs {r.verdict}") if x)
            r.verdict = stats.ONE_RUN
    return rows


def without_seed(A: Analysis, seed: int) -> Analysis:
    """The analysis with one training seed's runs left out of every series."""

    def point(p: Point) -> Point:
        return Point(p.tokens, p.flops, {k: u.without_seed(seed) for k, u in p.tasks.items()},
                     {k: u.without_seed(seed) for k, u in p.heldout.items()})

    def ser(s):
        return replace(s, seeds=[x for x in s.seeds if x != seed] or s.seeds, points=[point(p) for p in s.points])

    return replace(A, series=[ser(s) for s in A.series], best=[ser(s) for s in A.best])
