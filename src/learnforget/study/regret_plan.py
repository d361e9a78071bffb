"""--dry-run: which *LoRA Without Regret* rules (report/regret.py, claims h-k) the planned grid can test.

Each rule needs a shape of grid, known before any compute: a learning-rate optimum is located by a fit
in log-lr, so a method needs >= 3 learning rates; comparing optima across ranks needs two LoRA ranks on
the same targets with such a sweep; attention-only vs MLP/all needs labels within 1.5x of each other's
trainable parameters; the capacity limit needs the lowest rank and full fine-tuning at >= 2 checkpoints.
Whether each optimum is bracketed, and whether the intervals decide, is known only after training.
"""

from __future__ import annotations

from .plan import PlannedRun, label

MIN_LRS = 3
MATCHED = 1.5


def checks(runs: list[PlannedRun], trainable: dict[str, int]) -> list[str]:
    """One line per (experiment, rule): testable, with what, or why not. `trainable`: run id -> parameters."""
    lines = []
    for exp in dict.fromkeys(r.experiment.name for r in runs):
        mine = [r for r in runs if r.experiment.name == exp]
        lrs: dict[str, set[float]] = {}
        for r in mine:
            lrs.setdefault(label(r.config), set()).add(r.config.train.lr)
        first = {label(r.config): r for r in reversed(mine)}
        full = [lab for lab, r in first.items() if r.family == "full"]
        lora = [lab for lab, r in first.items() if r.family == "lora"]
        swept = lambda labs: [x for x in labs if len(lrs[x]) >= MIN_LRS]  # noqa: E731
        show = lambda labs: ", ".join(f"{x} ({len(lrs[x])} lrs {min(lrs[x]):g}..{max(lrs[x]):g})" for x in labs)  # noqa: E731
        h = swept(full) and swept(lora)
        lines.append(f"{exp}: h (best LoRA lr ~10x full's): " + (f"testable: {show(swept(full) + swept(lora))}" if h else
                     f"not testable: a fit in log-lr needs >= {MIN_LRS} learning rates for full and a LoRA label ({show(full + lora)})"))
        by_targets: dict[str, list[str]] = {}
        for x in swept(lora):
            by_targets.setdefault(first[x].config.method.targets, []).append(x)
        pairs = [(a, b) for labs in by_targets.values() for a in labs for b in labs if first[a].config.method.rank < first[b].config.method.rank]
        lines.append(f"{exp}: i (best lr independent of rank at fixed alpha): " + (
            "testable: " + ", ".join(f"{a} vs {b} (alpha {first[a].config.method.alpha:g} / {first[b].config.method.alpha:g})" for a, b in pairs)
            if pairs else f"not testable: needs two LoRA ranks on the same targets, each with >= {MIN_LRS} learning rates"))
        params = {x: trainable[first[x].id] for x in lora}
        attn = [x for x in lora if first[x].config.method.targets == "attention"]
        others = [x for x in lora if first[x].config.method.targets in ("mlp", "all")]
        matched = [(a, b) for a in attn for b in others if max(params[a], params[b]) <= MATCHED * min(params[a], params[b])]
        lines.append(f"{exp}: j (attention-only below MLP / all at matched parameters): " + (
            "testable: " + ", ".join(f"{a} ({params[a]:,}) vs {b} ({params[b]:,})" for a, b in matched) if matched else
            f"not testable: needs an attention-only LoRA and an MLP or all-layer one within {MATCHED:g}x trainable parameters"))
        low = min(lora, key=lambda x: (first[x].config.method.rank, first[x].config.method.targets != "all"), default=None)
        n_ck = len(mine[0].config.train.checkpoints)
        lines.append(f"{exp}: k (a low rank parts from full as tokens grow): " + (
            f"testable: {low} vs full at {n_ck} checkpoints" if low and full and n_ck >= 2 else
            "not testable: needs full fine-tuning, a LoRA rank and >= 2 checkpoints"))
    return lines
