"""Claim (f), scale-aware: is the full fine-tuning update high-rank, as the paper found?

The paper measured rank@90% of the full-FT update at about 1000-2000 of 4096 dimensions for attention
(a quarter to a half of the width, more for MLP), 10-100x the LoRA ranks of 16-64, growing with training.
On a 576-wide model a fixed 10x cannot be met by ranks above ~14 even by a full-rank update, so the
verdicts compare like with like: (1) the fraction of each matrix's width, against the paper's lower end;
(2) the ratio to each LoRA rank, against 10x or, where the width caps it, the ratio the paper's fraction
would give on these matrices (the cap stated); (3) the growth of the fraction with tokens.
Every interval is a bootstrap over the update matrices (layers x module types).
"""

from __future__ import annotations

import numpy as np

from .. import stats
from .context import Analysis
from .findings import RULES, SPECTRUM_RATIO, Finding

PAPER_FRACTION = 1000 / 4096  # the paper's lower end of rank@90% / width for attention (LLaMA-2-7B)


def _boot_median(x: np.ndarray, rng) -> np.ndarray:
    return np.median(x[rng.integers(0, len(x), (stats.N_BOOT, len(x)))], axis=1)


def _by_tokens(rows: list[dict], run_ids: list[str]) -> dict[int, dict[tuple, dict]]:
    """tokens -> (module_type, layer) -> row, for one series' runs (the first seed's rows per matrix)."""
    out: dict[int, dict[tuple, dict]] = {}
    for r in rows:
        if r["run_id"] in run_ids:
            out.setdefault(int(r["tokens"]), {}).setdefault((r["module_type"], r["layer"]), r)
    return out


def _fraction(s, at: dict, last: int) -> Finding:
    frac = np.array([r["rank90"] / r["full_rank"] for r in at.values()], float)
    lo, hi = stats.interval(_boot_median(frac, np.random.default_rng(stats.SEED)))
    verdict = stats.REPRODUCED if lo > PAPER_FRACTION else stats.NOT_REPRODUCED if hi < PAPER_FRACTION else stats.NOT_SIGNIFICANT
    widths = sorted({int(r["full_rank"]) for r in at.values()})
    return Finding("f", s.group, f"{s.who}", "rank@90% of the full-FT update / matrix width", verdict, float(np.median(frac)),
                   (lo, hi), f"median over {len(frac)} matrices (widths {', '.join(map(str, widths))}) at {last:,} tokens; "
                   f"the paper: >= {PAPER_FRACTION:.2f} (1000-2000 of 4096)", RULES["spectrum_fraction"])


def _ratios(s, at: dict, last: int, ranks: list[int], lora_r90: list[float]) -> list[Finding]:
    r90 = np.array([r["rank90"] for r in at.values()], float)
    width = float(np.median([r["full_rank"] for r in at.values()]))
    boot = _boot_median(r90, np.random.default_rng(stats.SEED))
    extra = f"; LoRA updates' median rank@90% {np.median(lora_r90):.0f}" if lora_r90 else ""
    out = []
    for rank in ranks:
        need = min(SPECTRUM_RATIO, PAPER_FRACTION * width / rank)
        lo, hi = stats.interval(boot / rank)
        verdict = stats.REPRODUCED if lo > need else stats.NOT_REPRODUCED if hi < need else stats.NOT_SIGNIFICANT
        cap = (f"; 10x is out of reach on {width:.0f}-wide matrices, so the bar is the paper's fraction of the width: "
               f"{PAPER_FRACTION:.2f} x {width:.0f} / {rank} = {need:.1f}x (at most {width / rank:.1f}x is possible)"
               if need < SPECTRUM_RATIO else "")
        out.append(Finding("f", s.group, f"{s.who} vs LoRA rank {rank}", "rank@90% of the full-FT update / LoRA rank", verdict,
                           float(np.median(r90) / rank), (lo, hi),
                           f"median rank@90% {np.median(r90):.0f} over {len(r90)} matrices at {last:,} tokens vs LoRA rank {rank}; "
                           f"bar {need:.1f}x{cap}{extra}", RULES["spectrum"]))
    return out


def _growth(s, by_tok: dict) -> Finding | None:
    """Fraction at the last analysed checkpoint minus at the first, paired by matrix."""
    toks = sorted(by_tok)
    if len(toks) < 2:
        return None
    first, last = by_tok[toks[0]], by_tok[toks[-1]]
    keys = sorted(set(first) & set(last), key=str)
    d = np.array([last[k]["rank90"] / last[k]["full_rank"] - first[k]["rank90"] / first[k]["full_rank"] for k in keys], float)
    idx = np.random.default_rng(stats.SEED).integers(0, len(d), (stats.N_BOOT, len(d)))
    lo, hi = stats.interval(d[idx].mean(1))
    verdict = stats.REPRODUCED if lo > 0 else stats.NOT_REPRODUCED if hi < 0 else stats.NOT_SIGNIFICANT
    f0 = np.median([first[k]["rank90"] / first[k]["full_rank"] for k in keys])
    f1 = np.median([last[k]["rank90"] / last[k]["full_rank"] for k in keys])
    return Finding("f", s.group, f"{s.who}", "growth of rank@90% / width with tokens (last - first)", verdict, float(d.mean()),
                   (lo, hi), f"median fraction {f0:.3f} at {toks[0]:,} -> {f1:.3f} at {toks[-1]:,} tokens over {len(keys)} matrices",
                   RULES["spectrum_growth"])


def spectrum(A: Analysis) -> list[Finding]:
    """Claim (f): one fraction row, one growth row (when several checkpoints were analysed) and one ratio
    row per LoRA rank, for each best-lr full fine-tuning series."""
    rows = (A.res.get("analysis") or {}).get("spectrum")
    if not rows:
        return [Finding("f", "all", "", "", stats.NOT_RUN, numbers="no analysis.spectrum in results.json")]
    ranks = sorted({s.rank for s in A.series if s.family == "lora" and s.rank})
    lora_ids = {rid for s in A.series if s.family == "lora" for rid in s.run_ids}
    lora_r90 = [r["rank90"] for r in rows if r["run_id"] in lora_ids]
    out = []
    for s in [s for s in A.best if s.family == "full"]:
        by_tok = _by_tokens(rows, s.run_ids)
        if not by_tok:
            continue
        last = max(by_tok)
        out.append(_fraction(s, by_tok[last], last))
        out += [g] if (g := _growth(s, by_tok)) else []
        out += _ratios(s, by_tok[last], last, ranks, lora_r90)
    return out or [Finding("f", "all", "", "", stats.NOT_RUN, numbers="no spectrum rows for full fine-tuning runs")]
