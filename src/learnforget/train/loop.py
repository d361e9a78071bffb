"""The training recipe: one loop for full fine-tuning and LoRA, CPT and IFT, one process or many.

    learnforget train --model smollm2-135m --data python-code --method lora --rank 16 --targets all \
        --tokens 100000 --checkpoints 25000,50000,100000 --seq-len 512 --lr 2e-4 --out runs/code-lora-r16

Read top to bottom: setup (data, model, method, optimizer) -> resume -> steps (with checkpoints and
held-out loss at each budget) -> record (run.json). Scale-out is Accelerate's: the same code runs under
`accelerate launch` / `torchrun` with DDP or FSDP; each process takes its slice of every global batch.

Exactness rules that make resume and multi-process runs reproduce a single uninterrupted run:
  - row k of the data stream is a pure function of (corpus, seed, k) (see data.corpora);
  - a step's loss is the sum of token losses over the whole global batch divided by that batch's
    supervised-token count, so how rows are split over processes and micro-batches does not matter;
  - optimizer, scheduler, RNG and weights are restored from the checkpoint (accelerate save_state).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, integrity, locks, models
from ..config import RunConfig
from ..cpu import allocator, onednn
from ..cpu import precision as hw
from ..data import stream as data_stream
from ..data.corpora import IGNORE, Corpus
from ..errors import UserError
from ..loss import token_losses
from . import acceleration, methods, record
from .budget import plan as plan_budget, stop_step
from .heldout import heldout_sets, load_references, reference_dir, score
from .save import save_checkpoint, save_pissa_init


@dataclass
class Run:
    """What the stages of one training run share."""

    cfg: RunConfig
    acc: Any  # accelerate.Accelerator
    model: torch.nn.Module
    tok: Any
    corpus: Corpus  # or data.stream.StreamCorpus: the same interface
    plan: dict
    heldout: dict
    opt: torch.optim.Optimizer
    sched: Any
    counts: dict
    precision: str
    out: Path
    precision_reason: str = ""
    writer: Any = None
    step: int = 0
    batches: Any = None  # this process's rows of each global batch (corpus.batches)
    stream_state: dict = field(default_factory=dict)  # a streamed corpus's position at the checkpoint resumed from
    references: dict = field(default_factory=dict)  # per held-out set: the base model's top-k distribution (KL drift)
    # this session's training time (wall and CPU) and the tokens already trained when it started
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    start_tokens: int = 0
    lock: Any = None  # the run folder's lock (main process), held to the end of run()
    opened: bool = False  # True once this process has made the run folder its own (run.json: running)
    metrics: Path = field(init=False)

    def __post_init__(self):
        self.metrics = self.out / "metrics.jsonl"

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def sharded(self) -> bool:
        """FSDP: each process holds a shard of the weights, so every forward pass needs every process."""
        return self.acc.distributed_type == "FSDP"

    def tokens(self) -> int:
        return self.step * self.plan["rows_per_step"] * self.cfg.data.seq_len

    def tokens_per_s(self) -> float:
        return (self.tokens() - self.start_tokens) / max(self.seconds, 1e-9)

    def score(self, tokens: int, label: float) -> None:
        """Held-out scoring, called by every process: the main one scores and records; under FSDP every process
        runs the same forward passes (each gathers the others' shards) and the main one records."""
        if self.main or self.sharded:
            score(self.acc.unwrap_model(self.model), self, self.step, tokens, label)


def run(cfg: RunConfig, stop_tokens: int | None = None) -> dict:
    """Train one run into cfg.out (resuming it, or at once returning its record when it is done). A run that
    fails once its folder is open leaves run.json with status "failed" and the error.
    stop_tokens: pause at the first checkpoint at or after this many tokens (run.json: status "paused"); the
    same call without it later resumes the run from there, as if it had never stopped (advise's pilots)."""
    t0 = time.time()
    done = record.finished(Path(cfg.out), cfg.to_dict()) or record.paused(Path(cfg.out), cfg.to_dict(), stop_tokens)
    if done is not None:
        print(f"[learnforget] {cfg.out}: already trained (run.json: {done['status']}); nothing to do", flush=True)
        return done
    # Large tensors are freed and made again every micro-batch: keep freed memory for reuse, after giving
    # back what an earlier run in this process left (learnforget.cpu.allocator).
    allocator.release()
    allocator.tune()
    record.reset_peak_rss()
    r = _setup(cfg)  # every input check, before the run folder is touched
    try:
        done = _open(r)
        if done is not None:
            if r.main:
                print(f"[learnforget] {cfg.out}: trained by the other process meanwhile (run.json: done); nothing to do", flush=True)
            return done
        _resume(r)
        end = stop_step(r.plan, r.plan["rows_per_step"] * cfg.data.seq_len, stop_tokens)
        _train(r, end)
        if end < r.plan["total_steps"]:
            return _record_pause(r, time.time() - t0)
        return _record(r, time.time() - t0)
    except Exception as e:
        if r.opened:
            with contextlib.suppress(OSError):  # a full disk must not hide the error itself
                record.mark_failed(r.out, cfg.to_dict(), e)
        raise
    finally:
        if r.lock is not None:
            r.lock.release()


# ---------------------------------------------------------------- setup


def run_precision(cfg: RunConfig) -> tuple[str, str]:
    """learnforget.cpu.precision.resolve, except that a run resumed under `auto` keeps the precision its
    checkpoints were trained at (another machine, or a busier one, could resolve it otherwise)."""
    out = Path(cfg.out)
    if cfg.train.precision == "auto" and (out / "checkpoints").is_dir():
        done = checkpoint.complete(out)
        kept = checkpoint.manifest(done[-1]).get("precision") if done else None
        if kept:
            return kept, f"auto: {kept}, the precision this run's checkpoints were trained at"
    return hw.resolve(cfg.train.precision)


def _setup(cfg: RunConfig) -> Run:
    """Data, model, method, optimizer; everything that can fail on bad input happens before the run folder is touched."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    t = cfg.train
    precision, why = run_precision(cfg)
    acc = acceleration.accelerator(precision)
    if t.processes > 1 and acc.num_processes != t.processes:
        raise UserError(f"this run asks for {t.processes} processes but was started as {acc.num_processes}: run it in a study "
                        f"(which launches it), or start it with `accelerate launch --num_processes {t.processes} -m learnforget.cli train ...`")
    # The run's record says how it was trained: FSDP asked for is FSDP running, and FSDP running was asked for.
    from accelerate.utils import DistributedType

    fsdp = acc.distributed_type == DistributedType.FSDP
    if t.distributed == "fsdp" and not fsdp:
        raise UserError(f"this run asks for FSDP (train.distributed: fsdp) but was started without it ({acc.distributed_type}): "
                        f"start it with `accelerate launch --config_file configs/accelerate/fsdp-2cpu.yaml -m learnforget.cli train ...` "
                        f"(fsdp-8gpu.yaml on GPUs), or run it in a study")
    if fsdp and t.distributed != "fsdp":
        raise UserError("this process was started under FSDP (accelerate launch --use_fsdp / distributed_type: FSDP) but the run "
                        f"asks for {t.distributed}: add --distributed fsdp, or launch it without FSDP")
    if fsdp and cfg.method.method == "lora" and cfg.method.init == "pissa":
        # PEFT converts a PiSSA adapter back to plain LoRA at save by loading the initial adapter into the live
        # model and subtracting: with sharded weights that runs on one process only, against shards.
        raise UserError("init pissa is not supported under FSDP (its conversion at save needs the whole model in one process): "
                        "use --init default, or --distributed ddp")
    set_seed(t.seed)
    model, tok = models.load(cfg.model, seed=t.seed)
    corpus = data_stream.open_corpus(cfg.data, tok)
    plan = plan_budget(cfg, corpus, acc.num_processes)
    heldout = heldout_sets(cfg, tok, corpus)
    corpus.check_train()  # what the first step would find wrong with the data, found now
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = methods.apply(model, cfg.method)
    counts = methods.parameter_counts(model)
    opt = methods.optimizer(model, cfg.method, t)
    sched = get_cosine_schedule_with_warmup(opt, int(t.warmup * plan["total_steps"]), plan["total_steps"])
    r = Run(cfg, acc, model, tok, corpus, plan, heldout, opt, sched, counts, precision, Path(cfg.out), precision_reason=why)
    if r.main:
        print(f"[learnforget] {cfg.method.label()} on {cfg.model}: trainable {counts['trainable']:,} of {counts['total']:,} "
              f"parameters ({100 * counts['trainable_fraction']:.2f}%); {plan['total_steps']} steps of "
              f"{plan['rows_per_step']} x {cfg.data.seq_len} tokens; {corpus.describe()}; "
              f"precision {precision} ({why})", flush=True)
    return r


def _open(r: Run) -> dict | None:
    """Take the run folder (its lock: another process training this run is waited for), make it this run's;
    the record of the run if it turned out done meanwhile, else None."""
    cfg = r.cfg
    if r.main:
        r.out.mkdir(parents=True, exist_ok=True)
        r.lock = locks.Lock(r.out, "run folder")
        if record.finished(r.out, cfg.to_dict()) is None:
            record.prepare_run_dir(r.out, cfg.to_dict())
            r.opened = True
            if cfg.method.method == "lora" and cfg.method.init == "pissa" and not (r.out / "pissa-init").exists():
                save_pissa_init(r.model, r.out / "pissa-init")
    r.acc.wait_for_everyone()
    done = record.finished(r.out, cfg.to_dict())
    if done is not None:
        return done
    r.references = load_references(reference_dir(cfg), r.heldout)  # read now: a replaced failed start took its own away
    r.model, r.opt = r.acc.prepare(r.model, r.opt)
    r.acc.register_for_checkpointing(r.sched)
    return None


# ---------------------------------------------------------------- resume


def _resume(r: Run) -> None:
    """Continue from the last complete checkpoint, if any: its state, the metrics up to it, its held-out loss."""
    done = checkpoint.complete(r.out)  # each one verified: a damaged checkpoint is refused, by name
    if done:
        info = checkpoint.manifest(done[-1])
        r.step = info["step"]
        if any(f.startswith("resume/") for f in info["files"]):  # listed, so present at its recorded size
            try:
                r.acc.load_state(str(done[-1] / "resume"))
            except Exception as e:
                raise UserError(f"checkpoint {done[-1]}: cannot restore its resume state ({integrity.first_line(e)})") from None
            r.stream_state = data_stream.load_state(done[-1] / "resume")
        elif r.step < r.plan["total_steps"]:
            raise UserError(f"{done[-1]}: no resume state to continue from (it is kept for the newest checkpoint only)")
        if r.main:
            print(f"[learnforget] resuming from {done[-1].name} (step {r.step})", flush=True)
    r.start_tokens = r.tokens()
    # Every process reads the metrics (before the main one rewrites them), so all decide alike whether to score below.
    rows = record.read_metrics(r.metrics, r.step)
    r.acc.wait_for_everyone()
    if r.main:
        r.metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
        r.writer = record.tensorboard(r.out)
    if not r.heldout:
        return
    if r.step == 0 and not r.cfg.train.skip_base_eval:
        r.score(0, 0.0)
    if r.step > 0 and not any("eval" in row and row["step"] == r.step for row in rows):
        # killed after saving the checkpoint but before scoring it: score it now, from the restored weights
        r.score(checkpoint.manifest(done[-1])["tokens"], r.plan["checkpoint_labels"][r.step])


# ---------------------------------------------------------------- steps


def _train(r: Run, end: int) -> None:
    """Steps from r.step to `end` (the budget's last step, or a pause), with a checkpoint (and held-out loss) at each budget."""
    from tqdm.auto import tqdm

    R = r.plan["rows_per_step"]
    r.batches = r.corpus.batches(r.cfg.train.seed, R, r.acc.num_processes, r.acc.process_index, r.step, r.stream_state)
    bar = tqdm(total=r.plan["total_steps"], initial=r.step, disable=not r.main or bool(os.environ.get("TQDM_DISABLE")),
               desc=r.cfg.method.label(), unit="step")  # TQDM_DISABLE: set by parallel study workers
    r.model.train()
    while r.step < end:
        tic, cpu_tic = time.time(), time.process_time()
        loss, grad_norm, n_tokens = _step(r, next(r.batches))
        r.step += 1
        r.seconds += time.time() - tic
        r.cpu_seconds += time.process_time() - cpu_tic
        if r.main:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "skipped", tok_s=f"{r.tokens_per_s():.0f}")
            _log_step(r, loss, grad_norm, n_tokens)
        if r.step in r.plan["checkpoint_steps"]:
            _checkpoint(r)
    bar.close()


def _step(r: Run, rows: list) -> tuple[float | None, Any, int]:
    """One optimizer step on a global batch, given this process's rows of it: (its loss, the gradient norm, its
    supervised tokens)."""
    acc, model, t = r.acc, r.model, r.cfg.train
    world = acc.num_processes
    my_ids = torch.tensor([row[0] for row in rows])
    my_labels = torch.tensor([row[1] for row in rows])
    n_tokens = int((my_labels[:, 1:] != IGNORE).sum())
    if world > 1:  # the whole global batch's count, the same on every process
        n_tokens = int(acc.reduce(torch.tensor(n_tokens, device=acc.device), reduction="sum"))
    grad_norm = None
    # One autocast context over the step's micro-batches (under bf16): each weight is cast to bf16 once a
    # step, not once a micro-batch (autocast keeps its casts of leaf weights until the outermost context
    # exits; onednn.linears keeps those of frozen weights). oneDNN for the linear layers' forward and
    # gradients on CPU in fp32 (learnforget.cpu.onednn: faster than MKL here).
    with acc.autocast(), onednn.linears(model, training=True):
        step_loss = _accumulate(r, my_ids, my_labels, n_tokens, world)
    if n_tokens:
        grad_norm = acc.clip_grad_norm_(model.parameters(), t.grad_clip) if t.grad_clip else None
        r.opt.step()
    r.sched.step()  # the schedule counts steps, skipped or not, so a resumed run lines up
    r.opt.zero_grad(set_to_none=True)
    return (float(acc.reduce(step_loss, reduction="sum")) if n_tokens else None), grad_norm, n_tokens


def _accumulate(r: Run, ids: torch.Tensor, labels: torch.Tensor, n_tokens: int, world: int) -> torch.Tensor:
    """Forward and backward of this process's rows, micro-batch by micro-batch: their summed loss."""
    acc, model, t = r.acc, r.model, r.cfg.train
    step_loss = torch.zeros((), device=acc.device)
    # A global batch with no supervised token (IFT rows that are all prompt) has nothing to learn:
    # it is skipped whole (every process sees the same count), not divided by zero into NaN weights.
    for m in range(r.plan["accum"] if n_tokens else 0):
        part = slice(m * t.micro_batch, (m + 1) * t.micro_batch)
        last = m == r.plan["accum"] - 1
        # gradients sync at the last micro-batch only (DDP: no_sync; FSDP2: set_requires_gradient_sync(False))
        with acc.no_sync(model) if not last else contextlib.nullcontext():
            # summed token loss of these rows over the whole global batch's supervised-token count
            loss = token_losses(model, ids[part].to(acc.device), labels[part].to(acc.device))[0] / n_tokens
            acc.backward(loss * world)  # DDP and FSDP average gradients over processes; undo it: we want the global sum
        step_loss += loss.detach()
    return step_loss


def _log_step(r: Run, loss: float | None, grad_norm, n_tokens: int) -> None:
    if r.step % r.cfg.train.log_every and r.step != r.plan["total_steps"]:
        return
    tokens = r.tokens()
    row = {"step": r.step, "tokens": tokens, "loss": loss, "lr": r.sched.get_last_lr()[0],
           "grad_norm": float(grad_norm) if grad_norm is not None else None, "tokens_per_s": r.tokens_per_s(),
           "supervised_tokens": n_tokens, "peak_rss_mb": record.peak_rss_mb(),
           "cpu_seconds": r.cpu_seconds}  # this session's training steps, all threads: CPU s/step without a timer thread
    record.log(r.metrics, row)
    if r.writer:
        for k in ("loss", "lr", "tokens_per_s"):
            if row[k] is not None:
                r.writer.add_scalar(f"train/{k}", row[k], tokens)


def _checkpoint(r: Run) -> None:
    label, tokens = r.plan["checkpoint_labels"][r.step], r.tokens()
    save_checkpoint(r.acc, r.model, r.tok, r.cfg, r.out, r.step, tokens, label, r.plan["unit"], r.batches)
    if r.main:  # the resume state of older checkpoints is never read again
        for older in checkpoint.complete(r.out)[:-1]:
            checkpoint.drop_resume(older)
    if r.heldout:
        r.score(tokens, label)
    r.model.train()
    r.acc.wait_for_everyone()


# ---------------------------------------------------------------- record


def _record_pause(r: Run, wall: float) -> dict:
    """run.json of a run paused at a checkpoint (its newest keeps its resume state): what a pilot measured."""
    summary = {}
    if r.main:
        summary = {"status": "paused", "paused_at": {"step": r.step, "tokens": r.tokens()}, "config": r.cfg.to_dict(),
                   "versions": record.versions(), "parameters": r.counts, "precision": r.precision, "wall_seconds": wall,
                   "train_seconds_this_session": r.seconds, "tokens_per_s_this_session": r.tokens_per_s(),
                   "peak_rss_mb": record.peak_rss_mb()}
        record.write_json_atomic(r.out / "run.json", summary)
        if r.writer:
            r.writer.close()
        print(f"[learnforget] paused at {r.tokens():,} tokens ({r.tokens_per_s():.0f} tokens/s, {wall:.0f} s) -> {r.out}", flush=True)
    r.acc.wait_for_everyone()
    r.acc.end_training()
    return summary


def _record(r: Run, wall: float) -> dict:
    """The run record (run.json); the finished run's checkpoints keep their weights, not their resume state."""
    summary = {}
    if r.main:
        final = [row for row in record.read_metrics(r.metrics, r.step) if row.get("loss") is not None]
        summary = {"status": "done", "config": r.cfg.to_dict(), "versions": record.versions(), "seed": r.cfg.train.seed,
                   "parameters": r.counts, "plan": {k: v for k, v in r.plan.items() if k != "checkpoint_labels"},
                   "precision": r.precision, "precision_reason": r.precision_reason, "processes": r.acc.num_processes, "wall_seconds": wall,
                   "train_seconds_this_session": r.seconds, "tokens_per_s_this_session": r.tokens_per_s(),
                   "peak_rss_mb": record.peak_rss_mb(), "final_loss": final[-1]["loss"] if final else None,
                   "checkpoints": [p.name for p in checkpoint.complete(r.out)],
                   # distinct training documents the run's tokens came from (a streamed corpus is not read again for it)
                   "documents": None if r.corpus.streaming else r.corpus.documents(r.cfg.train.seed, r.step * r.plan["rows_per_step"])}
        if torch.cuda.is_available():
            summary["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        record.write_json_atomic(r.out / "run.json", summary)
        for ck in checkpoint.complete(r.out):  # done: nothing resumes any more; keep the weights, drop the rest
            checkpoint.drop_resume(ck)
        if r.writer:
            r.writer.close()
        print(f"[learnforget] done: final train loss {summary['final_loss']:.4f}, {summary['tokens_per_s_this_session']:.0f} tokens/s, "
              f"peak RSS {summary['peak_rss_mb']:.0f} MB, {wall:.0f} s -> {r.out}", flush=True)
    r.acc.wait_for_everyone()
    r.acc.end_training()
    return summary
