"""A study's cost, estimated without loading data or weights: FLOPs per token, time on this machine, peak memory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..config import MethodConfig, Study
from .plan import PlannedRun


@dataclass(frozen=True)
class Shape:
    """The sizes of a Llama-style decoder that the estimates need (no weights). Norm weights (0.004% of
    Llama-2-7B) are not counted."""

    layers: int
    d: int  # hidden size
    ff: int  # MLP width
    vocab: int
    heads: int
    kv: int  # key/value width: d * kv_heads / heads (grouped-query attention: < d)
    tied: bool  # one matrix for embeddings and the output head

    def modules(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        d, kv, ff = self.d, self.kv, self.ff
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d), "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.modules().values())

    @property
    def root_params(self) -> int:
        """Embeddings and output head: what is not in a decoder layer."""
        return self.vocab * self.d * (1 if self.tied else 2)

    @property
    def total(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def lora_params(self, m: MethodConfig) -> int:
        return 0 if m.method == "full" else self.layers * sum(m.rank * (a + b) for name, (a, b) in self.modules().items() if name in m.target_modules())


def shape(model: str) -> Shape:
    from .. import models

    c = models.architecture(model)  # no weights; offline, a built-in table for the configs' models
    heads = c.num_attention_heads
    return Shape(layers=c.num_hidden_layers, d=c.hidden_size, ff=c.intermediate_size, vocab=c.vocab_size, heads=heads,
                 kv=c.hidden_size * getattr(c, "num_key_value_heads", heads) // heads, tied=bool(getattr(c, "tie_word_embeddings", True)))


def flops_per_token(params_total: int, params_trainable: int, full: bool, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for full fine-tuning; LoRA skips frozen weight gradients (4N + 6N_lora);
    plus attention scores (12 * layers * d * seq / 2 with causal masking, forward + backward)."""
    dense = 6 * params_total if full else 4 * params_total + 6 * params_trainable
    return dense + 6 * n_layers * d_model * seq_len


def measure_matmul_flops(seconds: float = 1.0) -> float:
    """This machine's fp32 dense matmul rate (FLOP/s), measured now: the yardstick for time estimates."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.time() - t0)


def dry_run(study: Study, runs: list[PlannedRun], clock=None) -> list[dict]:
    """Per run: tokens, FLOPs, time and peak memory estimated for this hardware, without loading data. The time is
    from `clock` (probe.measure: real steps on this machine) when given, else from FLOPs at 80% of a matmul rate
    measured now (a rough figure, used for the ETA of a running study, which rescales it by what it sees)."""
    s = shape(study.model)
    L, d, V, n_total = s.layers, s.d, s.vocab, s.total
    rate = None if clock else measure_matmul_flops()
    rows = []
    for r in runs:
        m, t = r.config.method, r.config.train
        n_lora = s.lora_params(m)
        tokens = t.tokens if t.tokens is not None else None
        if tokens is None and r.experiment.tokens_per_epoch:  # an epoch budget: tokens only from the YAML's estimate
            tokens = int(t.epochs * r.experiment.tokens_per_epoch)
        fpt = flops_per_token(n_total, n_lora or n_total, m.method == "full", L, d, study.seq_len)
        flops = fpt * tokens if tokens else None
        # held-out scoring at every checkpoint (a forward pass, 2N per token): in the demo as much as the training
        eval_flops = 2 * n_total * _eval_rows(t, study.seq_len) * study.seq_len * len(t.checkpoints)
        # memory: fp32 weights (+ grads + 2 Adam moments for what trains) + logits of one micro-batch
        trainable = n_total if m.method == "full" else n_lora
        mem = 4 * (n_total + 3 * trainable) + 4 * 3 * t.micro_batch * study.seq_len * V + 4 * 30 * t.micro_batch * study.seq_len * d * L
        if clock and tokens:
            k, n_ck = clock.kinds[r.id], len(t.checkpoints)
            est = (clock.load + clock.data[r.experiment.name] + tokens / study.seq_len * clock.row[k]
                   + n_ck * (clock.save[k] + _eval_rows(t, study.seq_len) * clock.score_row))
        else:
            est = (flops + eval_flops) / (0.8 * rate) if flops else None
        rows.append({"run": Path(r.config.out).name, "tokens": tokens, "epochs": t.epochs, "flops": flops, "trainable": trainable,
                     "est_seconds": est, "est_peak_gb": mem / 1e9})
    return rows


def _eval_rows(t, seq_len: int) -> float:
    """Held-out rows scored at each checkpoint: the target split and each extra set, eval_tokens each."""
    return ((1 + len(t.extra_eval)) if t.eval_tokens else 0) * t.eval_tokens / seq_len


def study_seconds(study: Study, runs: list[PlannedRun], rows: list[dict], clock) -> dict[str, float]:
    """The study's wall time by stage from a measured clock: the base model's held-out scores, training (runs
    `workers` at a time), and the analysis of every analysed checkpoint."""
    rows_eval = _eval_rows(runs[0].config.train, study.seq_len)
    experiments = {r.experiment.name for r in runs}
    base = clock.load + sum(clock.data[e] + rows_eval * clock.score_row for e in experiments)
    runs_s = [row["est_seconds"] or 0.0 for row in rows]
    workers = max(1, study.executor.workers)
    training = max(sum(runs_s) / workers, max(runs_s, default=0.0))
    an, analysis = study.analysis, 0.0
    if an is not None and (an.spectrum or an.intruders):
        per_run = [(len(r.config.train.checkpoints) if an.checkpoints == "all" else 1)
                   * clock.analysis.get(clock.kinds.get(r.id), 0.0) for r in runs]
        analysis = clock.load + clock.analysis_first + sum(per_run) if clock.analysis else 0.0
    return {"base model held-out": base, "training": training, "analysis": analysis, "total": base + training + analysis}


def print_plan(rows: list[dict], split: dict[str, float] | None = None, clock=None) -> None:
    print(f"{'run':<60} {'tokens':>9} {'TFLOP':>8} {'est. min':>9} {'est. GB':>8}")
    for row in rows:
        tf = f"{row['flops'] / 1e12:8.1f}" if row["flops"] else f"{'-':>8}"
        mins = f"{row['est_seconds'] / 60:9.1f}" if row["est_seconds"] else f"{'-':>9}"
        print(f"{row['run']:<60} {row['tokens'] or row['epochs']:>9} {tf} {mins} {row['est_peak_gb']:8.1f}")
    total = sum(r["est_seconds"] or 0 for r in rows)
    pflop = sum(r['flops'] or 0 for r in rows) / 1e15
    if split is None:
        print(f"{len(rows)} runs; estimated training time {total / 3600:.2f} h on this machine (from FLOPs at 80% of the measured "
              f"matmul rate; with the held-out losses at each checkpoint; benchmark tasks and analysis extra); {pflop:.3g} PFLOP in all")
        return
    parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in split.items() if k != "total")
    steps = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in clock.row.items())
    print(f"{len(rows)} runs, {pflop:.3g} PFLOP; estimated wall time {split['total'] / 60:.1f} min on this machine: {parts} "
          f"(benchmark tasks, diversity sampling, the report and set-up extra)")
    print(f"  measured just now with {clock.threads} thread(s) a run at {clock.precision}: a training row of each kind "
          f"({steps}), a held-out row {clock.score_row * 1e3:.0f} ms, a model load {clock.load:.1f} s, a checkpoint write "
          + ", ".join(f"{k} {v:.1f} s" for k, v in clock.save.items())
          + (", the analysis of a checkpoint " + ", ".join(f"{k} {v:.1f} s" for k, v in clock.analysis.items())
             + f" (and the base's singular vectors once, {clock.analysis_first:.1f} s)" if clock.analysis else "")
          + "; expected error about +-20% (runs in parallel share memory bandwidth; the machine's load varies)")
