"""The dry run's clock, measured: a few real training steps of each kind of run in a study, on this machine,
with the threads each run will get and at its precision, and the costs of a run that are not steps (model
load, data, held-out scoring, checkpoint writes), and of the analysis stage per checkpoint. cost.dry_run
multiplies these by the plan's counts; nothing is assumed about the hardware's speed.

What it leaves out, and so what its error is made of: set-up (pip, the one-time model conversion), the
report (seconds), benchmark tasks and diversity sampling (their own stages), and how two runs in parallel
slow each other (they share memory bandwidth; on 2 cores, two 1-thread runs measured ~0.96x one alone).
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunConfig, Study
from .plan import PlannedRun

STEPS = 3  # timed steps per kind of run, after one warm-up step


@dataclass
class Clock:
    """Seconds, measured on this machine with `threads` threads at `precision`."""

    threads: int
    precision: str
    load: float  # the model, once per run
    data: dict[str, float]  # per experiment: its corpus and held-out rows, once per run
    row: dict[str, float]  # per kind of run: one training row (micro_batch rows a forward/backward, plus the step)
    save: dict[str, float]  # per kind of run: one checkpoint write
    score_row: float  # one held-out row scored (loss, KL, entropy)
    analysis_first: float = 0.0  # the base weights' singular vectors (intruders), once a study
    analysis: dict[str, float] = field(default_factory=dict)  # per kind of run: spectrum + intruders of a checkpoint
    kinds: dict[str, str] = field(default_factory=dict)  # run id -> its kind


def kind(cfg: RunConfig) -> str:
    """What decides a step's cost: the method and, for LoRA, its rank and targets (not the learning rate)."""
    m = cfg.method
    return "full" if m.method == "full" else m.label()


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def measure(study: Study, runs: list[PlannedRun], threads: int) -> Clock:
    """Time each kind of run of `runs` for a few steps; restores torch's thread count after."""

    from .. import checkpoint, models
    from ..cpu import onednn
    from ..cpu import precision as hw
    from ..data.corpora import Corpus
    from ..heldout import score
    from ..loss import token_losses
    from ..train import methods
    from ..train.heldout import heldout_sets
    from ..train.acceleration import accelerator
    from ..train.save import save_checkpoint

    before, tmp = torch.get_num_threads(), Path(tempfile.mkdtemp(prefix="learnforget-probe-"))
    torch.set_num_threads(threads)
    try:
        precision = hw.resolve(runs[0].config.train.precision)[0]
        acc = accelerator(precision)
        if study.model in models.EMBEDDED:  # its one-time conversion is set-up, not a run's cost
            models.resolve(study.model)
        t0 = time.perf_counter()
        base, tok = models.load(study.model)
        load = time.perf_counter() - t0
        data, sets = {}, None
        for r in runs:
            if r.experiment.name not in data:
                tic = time.perf_counter()
                sets = heldout_sets(r.config, tok, Corpus(r.config.data, tok))
                data[r.experiment.name] = time.perf_counter() - tic
        ids, labels = next(iter(sets.values())) if sets else (None, None)
        t = runs[0].config.train
        rows, save, kinds = {}, {}, {}
        x = torch.randint(0, tok.vocab_size, (t.micro_batch, study.seq_len))
        for r in runs:
            k = kinds[r.id] = kind(r.config)
            if k in rows:
                continue
            model = methods.apply(copy.deepcopy(base), r.config.method)
            if r.config.train.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            opt = methods.optimizer(model, r.config.method, r.config.train)
            model, opt = acc.prepare(model, opt)
            model.train()

            def step():
                with acc.autocast(), onednn.linears(model, training=True):
                    acc.backward(token_losses(model, x, x)[0] / x.numel())
                opt.step()
                opt.zero_grad(set_to_none=True)
            step()  # warm-up: first-call allocations and oneDNN primitive creation
            rows[k] = statistics.median(_timed(step) for _ in range(STEPS)) / t.micro_batch
            cfg = copy.deepcopy(r.config)
            save[k] = _timed(lambda: save_checkpoint(acc, model, tok, cfg, tmp / k, 1, study.seq_len, 1.0, "tokens"))
            acc.free_memory()
            del model, opt
        score_row = 0.0
        if ids is not None:
            n = min(len(ids), t.eval_batch)
            ref = score(base, ids[:n], labels[:n], tok.eos_token_id, n, top_k=64)["reference"]  # also the warm-up
            score_row = min(_timed(lambda: score(base, ids[:n], labels[:n], tok.eos_token_id, n, reference=ref)) for _ in range(2)) / n
        clock = Clock(threads, precision, load, data, rows, save, score_row, kinds=kinds)
        an = study.analysis
        if an is not None and (an.spectrum or an.intruders):
            _time_analysis(clock, an, base, {k: checkpoint.complete(tmp / k)[-1] for k in save})
        return clock
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(tmp, ignore_errors=True)


def _time_analysis(clock: Clock, an, base, checkpoints: dict) -> None:
    """The analysis stage's clock: the base's singular vectors once, then one checkpoint of each kind of run
    (a LoRA update's spectrum comes from its factors: far cheaper than full fine-tuning's)."""
    from .. import checkpoint
    from ..analysis import intruders, spectrum
    from .analyse import _intruder_rows, _spectrum_rows

    shared: dict = {}
    if an.intruders:
        whole = {n: (w, w) for n, w in spectrum.block_linear_weights(base).items()}  # base_vectors reads W only
        clock.analysis_first = _timed(lambda: shared.update(intruders.base_vectors(whole)))

    def analyse(ck):
        tuned = checkpoint.load(base, ck, merge=False)
        deltas = spectrum.weight_deltas(base, tuned)
        if an.spectrum:
            _spectrum_rows(deltas, spectrum.lora_factors(tuned), "probe", 0, an.svd)
        if an.intruders:
            _intruder_rows(deltas, "probe", 0, an, shared)
    for k, ck in checkpoints.items():
        clock.analysis[k] = _timed(lambda: analyse(ck))


def local(model: str) -> bool:
    """A model on this disk (embedded, the tiny test model, a folder): cheap enough to probe by default."""
    from .. import models

    return model in models.EMBEDDED or model == models.TINY or Path(model).is_dir()


def threads_per_run(study: Study) -> int:
    """The threads training.py gives each run: the cores shared by the parallel workers, else torch's count."""
    from .training import worker_threads

    workers = study.executor.workers
    return worker_threads(workers) if workers > 1 else torch.get_num_threads()
