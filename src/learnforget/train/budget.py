"""From a budget (tokens or epochs, with checkpoints inside it) to steps, accumulation and checkpoint steps."""

from __future__ import annotations

import math

from ..config import RunConfig
from ..data.corpora import Corpus
from ..errors import UserError


def plan(cfg: RunConfig, corpus: Corpus, world: int) -> dict:
    """Steps, accumulation and checkpoint steps from the budget; raises before anything is written."""
    t, L = cfg.train, cfg.data.seq_len
    rows_per_step = max(1, t.batch_tokens // L)
    per_pass = t.micro_batch * world
    if rows_per_step % per_pass:
        raise UserError(f"batch_tokens {t.batch_tokens} = {rows_per_step} rows of {L}; must be a multiple of "
                        f"micro_batch x processes = {t.micro_batch} x {world}")
    if t.tokens is not None:
        rows_at = [c / L for c in t.checkpoints]
        unit = "tokens"
    else:
        per_epoch = corpus.rows_per_epoch()
        if per_epoch == 0:
            raise UserError(f"{cfg.data.source}: training split is shorter than one sequence of {L} tokens")
        rows_at = [c * per_epoch for c in t.checkpoints]
        unit = "epochs"
    steps_at = [math.ceil(r / rows_per_step - 1e-9) for r in rows_at]
    if steps_at[0] < 1 or min(rows_at) < rows_per_step:
        raise UserError(f"budget {t.checkpoints[0]:g} {unit} is smaller than one step ({rows_per_step * L} tokens); "
                        f"lower --batch-tokens or raise the budget")
    return {"rows_per_step": rows_per_step, "accum": rows_per_step // per_pass, "total_steps": steps_at[-1],
            "checkpoint_steps": sorted(set(steps_at)), "checkpoint_labels": dict(zip(steps_at, t.checkpoints)), "unit": unit}


def stop_step(plan: dict, step_tokens: int, stop_tokens: int | None) -> int:
    """The step to train to: the budget's last, or that of the first checkpoint at or after stop_tokens."""
    if stop_tokens is None:
        return plan["total_steps"]
    return next((s for s in plan["checkpoint_steps"] if s * step_tokens >= stop_tokens), plan["total_steps"])
