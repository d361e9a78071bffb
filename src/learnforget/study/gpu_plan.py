"""--dry-run of a GPU study (executor.num_gpus > 0): per run, its processes and GPUs, the memory each GPU
holds, tokens/s and GPU-hours on the GPUs of gpus.py, and the command that launches it. Arithmetic only:
no weights, no data, no GPU.

Memory per process, as learnforget trains (train.loop, methods.py, loss.py): the model is loaded in fp32
and trained under bf16 autocast (train.precision auto or bf16 on a GPU).
  weights      4 B x parameters (fp32; LoRA adds its adapters); / processes under FSDP
  gradients    4 B x trainable parameters (fp32); / processes under FSDP
  optimizer    fp32 state x trainable: Lion one moment (4 B), AdamW two (8 B); / processes under FSDP
  bf16 copies  one process or DDP: autocast's bf16 casts of the trainable decoder weights, cached for the
               whole step (frozen LoRA weights are cast per matmul: counted with the activations). FSDP2
               (accelerate sets MixedPrecisionPolicy(param_dtype=bf16) from the run's bf16): the all-gathered
               bf16 weights and gradients of the units in flight, the root (embeddings, head; unsharded all
               step) and two decoder layers (one computing, one prefetched)
  DDP buckets  4 B x trainable (DDP's gradient buckets; gradient_as_bucket_view is off by default)
  activations  per micro-batch, below
  logits/loss  the chunked loss (loss.CHUNK positions at a time, never the micro-batch's whole logits): fp32
               logits and their bf16 gradient per chunk, the head weight's bf16 cast, the final norm's saved
               tensors, the final hidden states and their gradient, the head's gradient when it trains
Not counted: the CUDA context, NCCL buffers, allocator fragmentation, activation gradients during backward.

Activations follow the accounting of Korthikanti et al. 2022 (arXiv 2205.05198, "Reducing Activation
Recomputation in Large Transformer Models": every tensor autograd keeps for backward), done for the Llama
block as transformers runs it with SDPA flash attention (no s x s matrix kept), and checked against the
tensors autograd saves (tests/test_plan.py). Per token per layer, h hidden, f MLP width, kv key/value
width, a heads:
  fp32 residual stream (fp32 weights under autocast: one process, DDP)   30h + 4kv + 8f + 4a + 8 bytes
      each RMSNorm: its fp32 input and normalised output, 1/rms (8h + 4); q, k, v, gate and up each cast
      their input to bf16 (5 x 2h); SDPA: bf16 q, k, v, output (o_proj's input is a view of it) and the fp32
      log-sum-exp (4h + 4kv + 4a); SwiGLU: gate and up outputs, SiLU output, product (4 x 2f)
  bf16 residual stream (FSDP's bf16 weights)                             20h + 4kv + 8f + 4a + 8 bytes
      each RMSNorm: an fp32 copy of its input, bf16 normalised and output (8h + 4), one output for q, k, v
      (and for gate, up); SDPA and SwiGLU as above
  LoRA (either residual stream: frozen linears keep no input, frozen norms no normalised output)
                                                                         12h + 4kv + 6f + 4a + 8 bytes
      each RMSNorm: its (fp32) input and 1/rms (4h + 4); SDPA as above; SwiGLU: gate and up outputs, SiLU
      output (3 x 2f); plus, per adapted module of input width d_in: A's bf16 input 2 d_in, A's output 2r, the
      dropout's bool mask d_in when dropout > 0 (torch's on GPUs, methods.MaskDropout on CPU); and, with fp32
      weights, the bf16 casts of the layer's frozen weights that its matmuls keep (2 B each). Upper bounds: the
      first layer keeps less when the embeddings' output needs no gradient, and under FSDP with dropout 0 q, k,
      v (and gate, up) share one input
  Korthikanti's GPT block (4h GeLU MLP, dropout, 16-bit throughout) gives sbh(34 + 5as/h) per layer; the 5as/h
  term is the attention matrices that flash attention does not keep. Gradient checkpointing (per decoder layer,
  as transformers does it) keeps only each layer's input (4h fp32 / 2h bf16 per token) and recomputes one
  layer at a time in backward: L x input + one layer (their full recomputation: 2sbh per layer).
"""

from __future__ import annotations

import shlex
from dataclasses import MISSING, fields
from pathlib import Path

from ..train import launch
from ..config import DataSpec, MethodConfig, RunConfig, Study, TrainConfig
from ..loss import CHUNK
from .cost import Shape, shape
from .gpus import GPUS, MFU, MFU_SOURCE
from .plan import PlannedRun

GB = 1e9
OPTIMIZER_BYTES = {"lion": 4, "adamw": 8}  # fp32 state per trainable parameter: one moment / two moments
LAUNCH_FILE = "launch.json"  # the RunConfig a launched run's processes read (launch.py), in the run folder


def activation_bytes(s: Shape, m: MethodConfig, fp32_residual: bool) -> tuple[float, float]:
    """(one decoder layer's saved activations, a checkpointed layer's saved input), bytes per token."""
    h, f, kv, a = s.d, s.ff, s.kv, s.heads
    if m.method == "full":
        layer = (30 if fp32_residual else 20) * h + 4 * kv + 8 * f + 4 * a + 8
    else:  # frozen linears keep no input, frozen norms no normalised output
        layer = 12 * h + 4 * kv + 6 * f + 4 * a + 8
        for name, (d_in, _) in s.modules().items():
            if name in m.target_modules():
                layer += 2 * d_in + 2 * m.rank + (d_in if m.dropout > 0 else 0)
    return layer, (4 if fp32_residual else 2) * h


def memory(s: Shape, cfg: RunConfig) -> dict[str, float]:
    """Bytes per process (one GPU) of a run: the terms of the module docstring, and the total with and without
    gradient checkpointing."""
    m, t = cfg.method, cfg.train
    full = m.method == "full"
    fsdp = t.distributed == "fsdp"
    shard = t.processes if fsdp else 1
    tokens = t.micro_batch * cfg.data.seq_len
    n_lora = s.lora_params(m)
    trainable = s.total if full else n_lora
    out = {"weights": 4 * (s.total + n_lora) / shard, "gradients": 4 * trainable / shard,
           "optimizer": OPTIMIZER_BYTES[t.optimizer] * trainable / shard}
    layer_trainable = s.layer_params if full else n_lora / s.layers
    if fsdp:  # the root stays unsharded all step; one layer computes while the next is gathered
        in_flight = s.root_params + 2 * s.layer_params
        out["bf16 copies"] = 2 * in_flight + 2 * ((s.root_params if full else 0) + 2 * layer_trainable)
    else:  # autocast caches the casts of weights that train; frozen ones are cast per matmul (frozen_casts)
        out["bf16 copies"] = 2 * s.layers * s.layer_params if full else 0.0
    out["DDP buckets"] = 4 * trainable if t.processes > 1 and not fsdp else 0.0
    layer, saved_input = activation_bytes(s, m, fp32_residual=not fsdp)
    frozen_casts = 0 if (full or fsdp) else 2 * s.layer_params  # per layer, not per token; FSDP's weights are bf16 already
    out["activations, no checkpointing"] = s.layers * (layer * tokens + frozen_casts)
    out["activations, checkpointing"] = s.layers * saved_input * tokens + layer * tokens + frozen_casts
    res = 2 if fsdp else 4  # bytes of a residual-stream element
    chunk = min(CHUNK, tokens)
    head = s.vocab * s.d
    final_norm = (4 if not full else 6 if fsdp else 8) * s.d + 4  # as a layer's norm (activation_bytes)
    out["logits/loss"] = (tokens * (final_norm + 2 * res * s.d) + 6 * chunk * s.vocab
                          + (0 if fsdp else 2 * head) + (res * head if full else 0))
    static = sum(v for k, v in out.items() if not k.startswith("activations"))
    out["total, no checkpointing"] = static + out["activations, no checkpointing"]
    out["total, checkpointing"] = static + out["activations, checkpointing"]
    return out


def mfu_flops_per_token(s: Shape, m: MethodConfig, seq_len: int) -> float:
    """Model FLOPs per token in the convention of the MFU figure (gpus.py): 6N for full fine-tuning, 4N + 6N_lora
    for LoRA (no weight gradients for frozen weights), plus 12 * layers * d * seq for attention scores."""
    n = s.total
    dense = 6 * n if m.method == "full" else 4 * n + 6 * s.lora_params(m)
    return dense + 12 * s.layers * s.d * seq_len


def throughput(s: Shape, cfg: RunConfig, gpu) -> float:
    """Tokens per second of a run over all its GPUs."""
    return cfg.train.processes * gpu.bf16_tflops * 1e12 * MFU / mfu_flops_per_token(s, cfg.method, cfg.data.seq_len)


def launch_command(cfg: RunConfig, num_gpus: float) -> str:
    """How the study starts the run, and the command line."""
    t = cfg.train
    if t.processes > 1:
        return (f"launched by the study on one machine with {t.processes} GPUs (accelerate launch; its RUN.json in the run folder):\n"
                + shlex.join(launch.command(cfg, Path(cfg.out) / LAUNCH_FILE)))
    return (f"one process: trained in the study's process (--executor local) or as one Ray task with {num_gpus:g} GPU "
            f"(--executor ray); the same run by hand, once the study has scored the base model (--kl-reference):\n"
            + shlex.join(train_argv(cfg)))


def _arg(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_arg(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return str(value)


def train_argv(cfg: RunConfig) -> list[str]:
    """`learnforget train ...` that trains exactly `cfg` (options equal to their defaults left out)."""
    from ..config import RENAME

    argv = ["learnforget", "train", "--model", cfg.model, "--out", cfg.out]
    for spec, cls in ((cfg.data, DataSpec), (cfg.method, MethodConfig), (cfg.train, TrainConfig)):
        for f in fields(cls):
            value = getattr(spec, f.name)
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else MISSING)
            if value is None or (value == default and f.name != "regime"):  # regime: the CLI's default is a guess
                continue
            flag = "--" + RENAME.get(f.name, f.name).replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else flag.replace("--", "--no-", 1))
            else:
                argv += [flag, _arg(value)]
    return argv


def plan(study: Study, runs: list[PlannedRun], rows: list[dict]) -> list[dict]:
    """Per run: its memory per GPU, and per GPU kind tokens/s, wall hours and GPU-hours (rows: cost.dry_run's)."""
    s = shape(study.model)
    out = []
    for r, row in zip(runs, rows):
        cfg, tokens = r.config, row["tokens"]
        speed = {g.name: throughput(s, cfg, g) for g in GPUS}
        hours = {k: tokens / v / 3600 if tokens else None for k, v in speed.items()}
        out.append({"run": row["run"], "config": cfg, "memory": memory(s, cfg), "tokens_per_s": speed, "hours": hours,
                    "gpu_hours": {k: h * cfg.train.processes if h else None for k, h in hours.items()}})
    return out


def _gb(x: float) -> str:
    return f"{x / GB:.1f}"


def print_plan(study: Study, plans: list[dict]) -> None:
    print(f"\nGPU plan (estimates; per run: processes, memory per GPU, speed on {' and '.join(g.name for g in GPUS)}, launch; "
          f"assumptions and sources at the end)")
    for p in plans:
        cfg, mem = p["config"], p["memory"]
        t = cfg.train
        rows = max(1, t.batch_tokens // cfg.data.seq_len)
        accum = rows / (t.micro_batch * t.processes)
        how = (f"FSDP (weights, gradients and optimizer state fully sharded over {t.processes} GPUs)" if t.distributed == "fsdp"
               else f"DDP over {t.processes} GPUs" if t.processes > 1 else "one GPU")
        print(f"{p['run']}")
        print(f"  {t.processes} process{'es' if t.processes > 1 else ''}, {how}; a step: {rows} rows = "
              + (f"{accum:g} micro-batches of {t.micro_batch} x {cfg.data.seq_len} tokens per process" if accum.is_integer()
                 else f"NOT a multiple of micro_batch x processes = {t.micro_batch * t.processes}: the run will refuse to start"))
        ck = t.gradient_checkpointing
        terms = " + ".join(f"{k} {_gb(v)}" for k, v in mem.items() if v and not k.startswith(("activations", "total")))
        act = (f"activations {_gb(mem['activations, checkpointing'])} with checkpointing ({_gb(mem['activations, no checkpointing'])} without)"
               if ck else f"activations {_gb(mem['activations, no checkpointing'])} without checkpointing "
                          f"({_gb(mem['activations, checkpointing'])} with)")
        total = mem["total, checkpointing" if ck else "total, no checkpointing"]
        other = mem["total, no checkpointing" if ck else "total, checkpointing"]
        fits = ", ".join(f"{g.name} {g.memory_gb:g} GB {'fits' if total <= g.memory_gb * GB else 'DOES NOT FIT'}" for g in GPUS)
        print(f"  memory per GPU, GB: {terms} + {act}")
        print(f"    = {_gb(total)} GB as configured ({'with' if ck else 'without'} checkpointing; {_gb(other)} "
              f"{'without' if ck else 'with'}): {fits}")
        speed = "; ".join(f"{g.name} {p['tokens_per_s'][g.name]:,.0f} tokens/s"
                          + (f", {p['hours'][g.name]:,.1f} h, {p['gpu_hours'][g.name]:,.0f} GPU-hours" if p["hours"][g.name] else "")
                          for g in GPUS)
        print(f"  {speed}")
        print("  " + launch_command(cfg, study.executor.num_gpus).replace("\n", "\n    "))
    gpus = sum(p["config"].train.processes for p in plans)
    for g in GPUS:
        hours = [p["hours"][g.name] or 0 for p in plans]
        print(f"{len(plans)} runs on {g.name}: {sum(p['gpu_hours'][g.name] or 0 for p in plans):,.0f} GPU-hours; all at once on "
              f"{gpus} GPUs, the longest run takes {max(hours, default=0) / 24:.1f} days")
    precisions = {p["config"].train.precision for p in plans}
    if "fp32" in precisions:
        print("  (a run with train.precision fp32: this plan assumes bf16 mixed precision; fp32 would double the activations "
              "and run at TF32 rates)")
    print("Assumptions: bf16 autocast on fp32 weights (train.precision auto on a GPU); optimizer state Lion 4 B, AdamW 8 B per "
          "trainable parameter; FSDP2 all-gathers bf16 weights; activations per micro-batch from Korthikanti et al. 2022 "
          "(arXiv 2205.05198)'s accounting done for the Llama block under SDPA flash attention: per token per layer "
          "full fine-tuning 30h + 4kv + 8f + 4a + 8 bytes with fp32 weights, 20h + ... with FSDP's bf16 ones; LoRA "
          "12h + 4kv + 6f + 4a + 8 plus its adapters' inputs, outputs and dropout masks (their GPT block: sbh(34 + 5as/h)); checkpointing keeps each layer's input and "
          "recomputes one layer. Not counted: CUDA context, NCCL buffers, fragmentation (study/gpu_plan.py).")
    print(f"Speed: GPUs x dense bf16 peak x MFU / FLOPs per token (6N full, 4N + 6N_LoRA LoRA, + 12 L d s attention: the "
          f"convention of the MFU figure). {MFU_SOURCE}. The same MFU for the H200 (the H100's compute; its bandwidth is "
          f"not credited) and for LoRA (its small adapter matmuls likely run below it: optimistic). learnforget's "
          f"transformers + Accelerate stack is not MPT's tuned one: read these as best cases. Training only: held-out "
          f"scoring and benchmark tasks at checkpoints extra.")
    print("GPUs: " + "; ".join(f"{g.name}: {g.source}" for g in GPUS))
