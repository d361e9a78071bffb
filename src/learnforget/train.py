"""The training recipe: one loop for full fine-tuning and LoRA, CPT and IFT, one process or many.

    learnforget train --model smollm2-135m --data python-code --method lora --rank 16 --targets all \
        --tokens 100000 --checkpoints 25000,50000,100000 --seq-len 512 --lr 2e-4 --out runs/code-lora-r16

Read top to bottom: setup (data, model, method, optimizer) -> resume -> train (with checkpoints and
held-out loss at each budget) -> cleanup. Scale-out is Accelerate's: the same code runs under
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
import math
import os
import platform
import resource
import time
from pathlib import Path

import torch

from . import checkpoint, methods, models, onednn
from .config import RunConfig
from .data import sources
from .data.corpora import IGNORE, Corpus, heldout_set
from .errors import UserError
from .evaluate.perplexity import mean_loss, token_losses


def reset_peak_rss() -> None:
    """Count this run's peak memory afresh (Linux: writing 5 to clear_refs resets VmHWM), so that runs sharing
    one process, as a study's do, each report their own peak and not the largest so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: ru_maxrss, the process's peak
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "learnforget": __import__("learnforget").__version__}


def _plan(cfg: RunConfig, corpus: Corpus, world: int) -> dict:
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


def _log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    """Metric rows up to a step; a half-written last line (killed mid-write) is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= upto_step:
                rows.append(row)
    return rows


def run(cfg: RunConfig) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    t0 = time.time()
    reset_peak_rss()
    t = cfg.train
    precision = t.precision
    if precision == "auto":  # bf16 only where native: on this CPU it measured 60-80x slower than fp32
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    # cpu=True when there is no accelerator: that is what lets torchrun/accelerate start gloo DDP on CPUs.
    no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=no_accelerator)
    main = acc.is_main_process
    out = Path(cfg.out)

    # ---- setup: everything that can fail on bad input happens before the run folder is touched
    set_seed(t.seed)
    model, tok = models.load(cfg.model, seed=t.seed)
    corpus = Corpus(cfg.data, tok)
    plan = _plan(cfg, corpus, acc.num_processes)
    heldout = heldout_sets(cfg, tok, corpus)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = methods.apply(model, cfg.method)
    counts = methods.parameter_counts(model)
    opt = methods.optimizer(model, cfg.method, t)
    warmup = int(t.warmup * plan["total_steps"])
    sched = get_cosine_schedule_with_warmup(opt, warmup, plan["total_steps"])

    resolved = cfg.to_dict()
    if main:
        print(f"[learnforget] {cfg.method.label()} on {cfg.model}: trainable {counts['trainable']:,} of {counts['total']:,} "
              f"parameters ({100 * counts['trainable_fraction']:.2f}%); {plan['total_steps']} steps of "
              f"{plan['rows_per_step']} x {cfg.data.seq_len} tokens; {len(corpus.train)} train / {len(corpus.heldout)} held-out documents", flush=True)
        _prepare_run_dir(out, resolved)
        if cfg.method.method == "lora" and cfg.method.init == "pissa" and not (out / "pissa-init").exists():
            _save_pissa_init(model, out / "pissa-init")
    acc.wait_for_everyone()

    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(sched)

    # ---- resume from the last complete checkpoint, if any
    step = 0
    done = checkpoint.complete(out)
    if done:
        step = checkpoint.manifest(done[-1])["step"]
        if (done[-1] / "resume").exists():
            acc.load_state(str(done[-1] / "resume"))
        elif step < plan["total_steps"]:
            raise UserError(f"{done[-1]}: no resume state to continue from (it is kept for the newest checkpoint only)")
        if main:
            print(f"[learnforget] resuming from {done[-1].name} (step {step})", flush=True)
    metrics_path = out / "metrics.jsonl"
    if main:
        rows = _read_metrics(metrics_path, step)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    writer = _tensorboard(out) if main else None

    # ---- train
    R, world, rank = plan["rows_per_step"], acc.num_processes, acc.process_index
    stream = corpus.train_rows(t.seed, start=step * R)
    if step == 0 and heldout and main and not t.skip_base_eval:
        _evaluate(acc.unwrap_model(model), heldout, t.eval_batch, step, 0, 0.0, metrics_path, writer)
    if step > 0 and heldout and main and not any("eval" in r and r["step"] == step for r in rows):
        # killed after saving the checkpoint but before scoring it: score it now, from the restored weights
        man = checkpoint.manifest(done[-1])
        _evaluate(acc.unwrap_model(model), heldout, t.eval_batch, step, man["tokens"], plan["checkpoint_labels"][step], metrics_path, writer)
    bar = tqdm(total=plan["total_steps"], initial=step, disable=not main, desc=cfg.method.label(), unit="step")
    trained_seconds, trained_cpu, seen_tokens_start = 0.0, 0.0, step * R * cfg.data.seq_len
    model.train()
    while step < plan["total_steps"]:
        tic, cpu_tic = time.time(), time.process_time()
        rows = [next(stream) for _ in range(R)]
        ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])
        n_tokens = int((labels[:, 1:] != IGNORE).sum())
        mine = slice(rank * R // world, (rank + 1) * R // world)  # this process's rows of the global batch
        my_ids, my_labels = ids[mine], labels[mine]
        step_loss = torch.zeros((), device=acc.device)
        grad_norm = None
        # A global batch with no supervised token (IFT rows that are all prompt) has nothing to learn:
        # it is skipped whole (every process sees the same count), not divided by zero into NaN weights.
        for m in range(plan["accum"] if n_tokens else 0):
            part = slice(m * t.micro_batch, (m + 1) * t.micro_batch)
            last = m == plan["accum"] - 1
            # oneDNN for the linear layers' forward and input gradients on CPU (learnforget.onednn: faster than MKL here)
            with acc.no_sync(model) if not last else contextlib.nullcontext(), onednn.linears(model, training=True):
                # summed token loss of these rows over the whole global batch's supervised-token count
                loss = token_losses(model, my_ids[part].to(acc.device), my_labels[part].to(acc.device))[0] / n_tokens
                acc.backward(loss * world)  # DDP averages gradients over processes; undo it: we want the global sum
            step_loss += loss.detach()
        if n_tokens:
            grad_norm = acc.clip_grad_norm_(model.parameters(), t.grad_clip) if t.grad_clip else None
            opt.step()
        sched.step()  # the schedule counts steps, skipped or not, so a resumed run lines up
        opt.zero_grad(set_to_none=True)
        step += 1
        step_loss = float(acc.reduce(step_loss, reduction="sum")) if n_tokens else None
        dt = time.time() - tic
        trained_seconds += dt
        trained_cpu += time.process_time() - cpu_tic
        tokens = step * R * cfg.data.seq_len
        tps = (tokens - seen_tokens_start) / max(trained_seconds, 1e-9)
        if main:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}" if step_loss is not None else "skipped", tok_s=f"{tps:.0f}")
            if step % t.log_every == 0 or step == plan["total_steps"]:
                row = {"step": step, "tokens": tokens, "loss": step_loss, "lr": sched.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None, "tokens_per_s": tps,
                       "supervised_tokens": n_tokens, "peak_rss_mb": peak_rss_mb(),
                       "cpu_seconds": trained_cpu}  # this session's training steps, all threads: CPU s/step without a timer thread
                _log(metrics_path, row)
                if writer:
                    for k in ("loss", "lr", "tokens_per_s"):
                        if row[k] is not None:
                            writer.add_scalar(f"train/{k}", row[k], tokens)
        if step in plan["checkpoint_steps"]:
            label = plan["checkpoint_labels"][step]
            _save_checkpoint(acc, model, tok, cfg, out, step, tokens, label, plan["unit"])
            if main:  # the resume state of older checkpoints is never read again
                for older in checkpoint.complete(out)[:-1]:
                    checkpoint.drop_resume(older)
            if heldout and main:
                _evaluate(acc.unwrap_model(model), heldout, t.eval_batch, step, tokens, label, metrics_path, writer)
            model.train()
            acc.wait_for_everyone()
    bar.close()

    # ---- cleanup: the run record
    summary = {}
    if main:
        wall = time.time() - t0
        final = [r for r in _read_metrics(metrics_path, step) if r.get("loss") is not None]
        summary = {"status": "done", "config": resolved, "versions": versions(), "seed": t.seed, "parameters": counts,
                   "plan": {k: v for k, v in plan.items() if k != "checkpoint_labels"}, "precision": precision,
                   "processes": world, "wall_seconds": wall, "train_seconds_this_session": trained_seconds,
                   "tokens_per_s_this_session": (step * R * cfg.data.seq_len - seen_tokens_start) / max(trained_seconds, 1e-9),
                   "peak_rss_mb": peak_rss_mb(), "final_loss": final[-1]["loss"] if final else None,
                   "checkpoints": [p.name for p in checkpoint.complete(out)]}
        if torch.cuda.is_available():
            summary["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        _write_json_atomic(out / "run.json", summary)
        for ck in checkpoint.complete(out):  # done: nothing resumes any more; keep the weights, drop the rest
            checkpoint.drop_resume(ck)
        if writer:
            writer.close()
        print(f"[learnforget] done: final train loss {summary['final_loss']:.4f}, {summary['tokens_per_s_this_session']:.0f} tokens/s, "
              f"peak RSS {summary['peak_rss_mb']:.0f} MB, {wall:.0f} s -> {out}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def _prepare_run_dir(out: Path, resolved: dict) -> None:
    """Create the run folder, or check that an existing one holds this same run (then we resume)."""
    record = out / "run.json"
    if record.exists():
        previous = json.loads(record.read_text()).get("config")
        if previous != json.loads(json.dumps(resolved)):
            raise UserError(f"{out}: holds a different run (its run.json config differs); choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.clean_partial(out)
    if not record.exists():
        _write_json_atomic(record, {"status": "running", "config": resolved, "versions": versions()})


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a soft dependency: metrics.jsonl has everything
        return None
    return SummaryWriter(str(out / "tb"))


def _save_pissa_init(model, path: Path) -> None:
    """PiSSA rewrites the base weights; keep the initial adapter so checkpoints convert back to plain LoRA."""
    cfg = model.peft_config["default"]
    init = cfg.init_lora_weights
    cfg.init_lora_weights = True
    model.save_pretrained(str(path))
    cfg.init_lora_weights = init


def _save_checkpoint(acc, model, tok, cfg: RunConfig, out: Path, step: int, tokens: int, label: float, unit: str) -> None:
    if acc.is_main_process:
        checkpoint.staging(out, tokens)
    acc.wait_for_everyone()
    tmp = out / "checkpoints" / f".tmp-{checkpoint.name_for(tokens)}"  # every process writes its RNG state here
    acc.save_state(str(tmp / "resume"))
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        if cfg.method.method == "lora":
            kw = {}
            if cfg.method.init == "pissa":  # saved as plain LoRA on the original base (rank 2r), per PEFT's docs
                kw["path_initial_model_for_weight_conversion"] = str(out / "pissa-init")
            unwrapped.save_pretrained(str(tmp), **kw)
        else:
            unwrapped.save_pretrained(str(tmp), state_dict=acc.get_state_dict(model), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        checkpoint.commit(tmp, {"step": step, "tokens": tokens, unit: label, "method": cfg.method.label(), "base_model": cfg.model})
    acc.wait_for_everyone()


def heldout_sets(cfg: RunConfig, tok, corpus: Corpus | None = None) -> dict:
    """The held-out sets a run scores at each checkpoint: its target split ("target") and each extra_eval source."""
    t = cfg.train
    if not t.eval_tokens:
        return {}
    corpus = corpus or Corpus(cfg.data, tok)
    sets = {"target": corpus.heldout_rows(t.eval_tokens)}
    for name in t.extra_eval:
        sets[name] = heldout_set(name, tok, cfg.data.seq_len, t.eval_tokens, regime=sources.regime_of(name))
    return sets


def _evaluate(model, heldout: dict, batch: int, step: int, tokens: int, label: float, path: Path, writer) -> None:
    row = {"step": step, "tokens": tokens, "budget": label, "eval": {}}
    for name, (ids, labels) in heldout.items():
        row["eval"][name] = mean_loss(model, ids, labels, batch_size=batch)
        if writer:
            writer.add_scalar(f"heldout/{name}_loss", row["eval"][name]["loss"], tokens)
    _log(path, row)
    print("[learnforget] held-out loss at %s tokens: %s" % (f"{tokens:,}", ", ".join(f"{k} {v['loss']:.4f}" for k, v in row["eval"].items())), flush=True)
