"""The answer box at the top of the report: per experiment, the primary verdicts in words with the regime they hold
in (model, tokens, seeds, documents), and how sure the study is (decided rows, leave-one-seed-out)."""

from __future__ import annotations

from .. import stats
from .context import Analysis
from .findings import Finding


def stability(found: list[Finding]) -> str:
    """The summary line: how many primary rows are decided, and whether each survives leaving out any one seed."""
    prim = [f for f in found if f.family == "primary"]
    decided = [f for f in prim if f.verdict in stats.DECIDED]
    checked = [f for f in decided if f.stable is not None]
    unstable = [f for f in checked if not f.stable]
    line = f"{len(decided)} of {len(prim)} primary rows decided"
    if not decided:
        return line + "."
    if not checked:
        return line + "; leave-one-seed-out not checked (fewer than 3 seeds)."
    if not unstable:
        return line + f"; all {len(checked)} decided rows stable under leave-one-seed-out."
    return line + "; not stable under leave-one-seed-out: " + "; ".join(f"({f.claim}) {f.signal.split(' (')[0]}" for f in unstable) + "."


def _in_words(f: Finding, A: Analysis, better: str, worse: str, what: str, unit: str) -> str:
    """One primary row as a sentence: who is better on what, by how much, or why it is undecided."""
    if f.verdict == stats.NOT_RUN:
        return f"{what}: not run ({f.numbers})."
    if f.estimate is None or f.ci is None:
        return f"{what}: {f.verdict}."
    lo, hi = f.ci
    by = f"{abs(f.estimate):.4f} [{min(abs(lo), abs(hi)) if lo * hi > 0 else 0:.4f}, {max(abs(lo), abs(hi)):.4f}] {unit}"
    if f.verdict == stats.REPRODUCED:
        return f"{what}: {better} is better by {f.estimate:.4f} [{lo:.4f}, {hi:.4f}] {unit}."
    if f.verdict == stats.NOT_REPRODUCED:
        return f"{what}: {worse} is better by {-f.estimate:.4f} [{-hi:.4f}, {-lo:.4f}] {unit}."
    if f.verdict == stats.EQUIVALENT:
        return f"{what}: no difference that matters (within +-{A.margins['kl' if 'KL' in f.signal else 'loss']:g}; {by})."
    return (f"{what}: undecided ({f.estimate:+.4f} [{lo:+.4f}, {hi:+.4f}] {unit}, positive where {better} is better; "
            f"{f.note.split(';')[0]}).")


def answer(A: Analysis, found: list[Finding]) -> list[tuple]:
    """The answer box: per experiment, the primary verdicts in words, with the regime they hold in."""
    out = [("h2", "The answer")]
    design = A.res.get("design") or {}
    for g in A.groups:
        prim = [f for f in found if f.family == "primary" and f.group == g and f.comparison]
        if not prim:
            continue
        best = [s for s in A.best if s.group == g]
        seeds = sorted({x for s in best for x in s.seeds})
        docs = {k: len(u.counts) for k, u in A.base[g].heldout.items() if k in ("target", "general")}
        toks = max((p.tokens for s in best for p in s.points), default=0)
        search = design.get("search_seed")
        regime = (f"{A.res['study']['model']}, {g}, {toks:,} tokens a run, {len(seeds)} seed{'s' * (len(seeds) != 1)} per method "
                  f"({', '.join(map(str, seeds))})" + (f", learning rates chosen on seed {search}'s runs" if search is not None else "")
                  + f", {docs.get('target', 0)} target and {docs.get('general', 0)} general-text documents")
        lines = []
        for f in prim:  # a row's comparison is "first vs second", its signal "(first better by)"
            first, second = ((f.comparison.split(" vs ") + [""])[:2])
            kind = "Learning" if f.claim == "a" else "Forgetting"
            lines.append(_in_words(f, A, first.split(" (")[0], second.split(" (")[0], f"{kind} ({f.signal.split(' (')[0]})",
                                   "nats/token" if f.claim == "b" or "loss" in f.signal else ""))
        out += [("bold", f"{g} ({regime}):"), ("ul", lines)]
    out.append(("p", "How sure: " + stability(found) + " Primary rows are one family per experiment under Holm (family-wise "
                     "error at most 5%); every other row is exploratory, under Benjamini-Hochberg."))
    return out
