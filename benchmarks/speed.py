"""Speed and memory of the product code against the stock tools, side by side in one run.

    nice -n 19 .venv/bin/python benchmarks/speed.py                 # everything (~15-25 min on 2 cores)
    nice -n 19 .venv/bin/python benchmarks/speed.py --quick         # tiny model: checks the script works (~1-2 min)
    nice -n 19 .venv/bin/python benchmarks/speed.py --only train --steps 2

1. train     learnforget's training step vs transformers.Trainer (+ PEFT for LoRA), full fine-tuning and
             LoRA r16 on all linear layers (alpha 32, dropout 0: PEFT's default), AdamW (0.9, 0.95), grad clip 1,
             cosine schedule, the same packed python-code rows (Corpus, seed 0), `--rows` rows of
             `--seq-len` tokens per optimizer step, `--steps` timed steps after one warm-up step.
             Ours is `learnforget.train.run(RunConfig)` itself (eval off: eval_tokens 0) with the product's
             defaults (micro-batch 1: the rows of a step accumulate, same math); its per-step times come
             from its metrics.jsonl (cumulative tokens/s), so this measures the product.
             Trainer: per_device_train_batch_size = rows, no accumulation, save_strategy "no", its
             default optimizer (adamw_torch_fused); a callback stamps each step's end.
             Also ours LoRA with --gradient-checkpointing (its memory-saving choice) as ours-lora-gc.
             Each configuration runs in its own subprocess, as does a baseline that only
             loads the model, tokenizer and rows: peak RSS (ru_maxrss) per configuration and its
             increase over the baseline's RSS do not pollute each other.
2. generate  learnforget.evaluate.generation.generate vs plain `model.generate` (greedy, HF stop_strings)
             on the same GSM8K prompts (tasks.gsm8k.run's: task.sample seed 0, the tokenizer's default
             mode), the same batches (8, longest first, left-padded), the same stop strings and max new
             tokens; new tokens = tokens of the returned completions (cut at the stop string).
3. mfu       achieved FLOP/s of full fine-tuning, (6 N + 12 layers d_attn seq) x tokens/s (PaLM's
             convention; N = weights of all linear layers incl. the head), over the machine's dense matmul
             peak of the same precision, measured here at the start and the end: 2048^2, best of 3 blocks
             of 5; fp32: the faster of MKL's sgemm and oneDNN's packed matmul; bf16: oneDNN's.
   (train and mfu run at each of --precisions, default fp32 and bf16 mixed precision, side by side,
    with the ratios bf16 / fp32 per method and side.)
4. spectrum  `learnforget analyze`'s spectrum of a whole model: a real full fine-tuning checkpoint if
             runs/code-full/checkpoints has one, else a synthetic ΔW with the model's shapes.

Multiple-choice evaluation against lm-evaluation-harness is benchmarks/parity_lmeval.py (not repeated here).
Timings on a shared machine are noisy: the load average at start and end is recorded; per-step CPU
seconds (all threads) are reported beside wall time because they move less with contention.
Results: benchmarks/results/speed-<date>.json and a printed table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0, "targets": "all"}  # dropout 0: PEFT's default and the demo's
LR = {"full": 2e-5, "lora": 2e-4}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- workers (one subprocess each)

def _rows(spec: dict, tok) -> list[tuple[list[int], list[int]]]:
    from learnforget.config import DataSpec
    from learnforget.data.corpora import Corpus

    stream = Corpus(DataSpec(spec["data"], "cpt", spec["seq_len"]), tok).train_rows(0)
    return [next(stream) for _ in range((spec["steps"] + 1) * spec["rows"])]


def worker_baseline(spec: dict) -> dict:
    from learnforget import models

    model, tok = models.load(spec["model"])
    rows = _rows(spec, tok)
    # safetensors weights are file-backed until read: read every one, so the baseline holds the model
    touched = sum(float(p.detach().abs().sum()) for p in model.parameters())
    return {"rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(), "rows": len(rows), "checksum": touched}


def worker_ours(spec: dict) -> dict:
    from learnforget import train
    from learnforget.config import DataSpec, MethodConfig, RunConfig, TrainConfig

    L, R, steps = spec["seq_len"], spec["rows"], spec["steps"] + 1
    budget = steps * R * L
    method = MethodConfig(method="full") if spec["method"] == "full" else MethodConfig(method="lora", **LORA)
    out = Path(tempfile.mkdtemp(prefix="lf-speed-"))
    cfg = RunConfig(model=spec["model"], data=DataSpec(spec["data"], "cpt", L), method=method,
                    train=TrainConfig(lr=LR[spec["method"]], tokens=budget, checkpoints=[budget], batch_tokens=R * L,
                                      eval_tokens=0, betas=(0.9, 0.95), warmup=0.1, grad_clip=1.0, optimizer="adamw", seed=0,
                                      log_every=1, gradient_checkpointing=spec.get("gradient_checkpointing", False),
                                      precision=spec["precision"],
                                      **({"micro_batch": spec["micro_batch"]} if spec["micro_batch"] else {})),
                    out=str(out / "run"))
    # CPU time per step comes from metrics.jsonl's cpu_seconds: a thread polling the file instead cost ~12%
    # of the tokens/s (it steals time slices from the two OpenMP threads on a 2-core machine).
    try:
        summary = train.run(cfg)
        rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rows = [r for r in rows if "loss" in r]
    ends = [r["tokens"] / r["tokens_per_s"] for r in rows]  # cumulative training seconds after each step
    step_s = [ends[0]] + [b - a for a, b in zip(ends, ends[1:])]
    cpu = [r["cpu_seconds"] for r in rows]
    step_cpu = [b - a for a, b in zip(cpu, cpu[1:])]  # from step 2 on, as the Trainer side's callback stamps
    return {"step_seconds": step_s, "step_cpu_seconds": step_cpu, "losses": [r["loss"] for r in rows],
            "peak_rss_mb": rows[-1]["peak_rss_mb"], "parameters": summary["parameters"], "micro_batch": cfg.train.micro_batch}


def worker_trainer(spec: dict) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from learnforget import models
    from learnforget.config import TARGET_PRESETS

    model, tok = models.load(spec["model"])
    model.config.use_cache = False
    data = [{"input_ids": torch.tensor(i), "labels": torch.tensor(l)} for i, l in _rows(spec, tok)]
    if spec["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules=TARGET_PRESETS["all"], bias="none", task_type="CAUSAL_LM"))
    stamps = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append((time.perf_counter(), time.process_time(), peak_rss_mb()))

        def on_step_end(self, args, state, control, **kw):
            stamps.append((time.perf_counter(), time.process_time(), peak_rss_mb()))

    out = Path(tempfile.mkdtemp(prefix="lf-speed-trainer-"))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=spec["rows"], gradient_accumulation_steps=1,
        max_steps=spec["steps"] + 1, learning_rate=LR[spec["method"]], lr_scheduler_type="cosine", warmup_steps=0.1,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0, bf16=spec["precision"] == "bf16",
        remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator, callbacks=[Stamp()])
    try:
        trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_seconds": [b[0] - a[0] for a, b in zip(stamps, stamps[1:])],
            "step_cpu_seconds": [b[1] - a[1] for a, b in zip(stamps[1:], stamps[2:])],
            "losses": losses, "peak_rss_mb": stamps[-1][2], "optimizer": str(args.optim),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


WORKERS = {"baseline": worker_baseline, "ours": worker_ours, "trainer": worker_trainer}


def run_worker(spec: dict, log: Path) -> dict:
    """Run one configuration in a fresh interpreter; its output goes to `log`, its result is the last line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n==== {spec}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=REPO)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("RESULT "):
        raise RuntimeError(f"worker {spec['side']}/{spec.get('method')} failed (exit {p.returncode}); see {log}\n" + "\n".join(lines[-20:]))
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_seconds"] = round(time.perf_counter() - t0, 1)
    return res


# ---------------------------------------------------------------- sections

def matmul_peak(n: int) -> dict:
    """Dense GFLOP/s of an n x n matmul, best of 3 blocks of 5, with the kernels PyTorch has on CPU:
    fp32 by MKL's sgemm (what `a @ b` and `F.linear` use) and by oneDNN with a pre-packed weight (what
    evaluation uses, learnforget.onednn), the fp32 peak being the faster; bf16 by `a @ b` (oneDNN's bf16
    matmul, what autocast training uses), the bf16 peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    ab, bb = a.bfloat16(), b.bfloat16()
    kernels = {"mkl_sgemm": lambda: a @ b, "bf16": lambda: ab @ bb}
    if hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), n)
        kernels["onednn_packed"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    out = {}
    for name, f in kernels.items():
        f()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(5):
                f()
            best = min(best, (time.perf_counter() - t0) / 5)
        out[name] = round(2 * n ** 3 / best / 1e9, 1)
    out["peak"] = max(v for k, v in out.items() if k != "bf16")  # fp32
    return out


def summarize_train(res: dict, spec: dict) -> dict:
    steady = res["step_seconds"][1:]  # after the warm-up step
    tokens = spec["rows"] * spec["seq_len"]
    cpu = res["step_cpu_seconds"][-len(steady):] if res["step_cpu_seconds"] else []
    out = {"tokens_per_s": round(tokens * len(steady) / sum(steady), 2), "warmup_step_seconds": round(res["step_seconds"][0], 2),
           "step_seconds": [round(s, 2) for s in steady], "cpu_seconds_per_step": round(sum(cpu) / len(cpu), 2) if cpu else None,
           "tokens_per_cpu_s": round(tokens * len(cpu) / sum(cpu), 2) if cpu else None,
           "peak_rss_mb": round(res["peak_rss_mb"]), "losses": res["losses"], "process_seconds": res["process_seconds"]}
    for k in ("parameters", "micro_batch", "optimizer", "trainable"):
        if k in res:
            out[k] = res[k]
    return out


def _name(side: str, method: str, precision: str) -> str:
    return f"{side}-{method}" + ("" if precision == "fp32" else f"-{precision}")


def section_train(args, log: Path, methods: list[str]) -> dict:
    base = {"model": args.model, "data": "python-code", "seq_len": args.seq_len, "rows": args.rows, "steps": args.steps,
            "micro_batch": args.micro_batch}
    print("[speed] train: baseline (model + tokenizer + rows loaded) ...", flush=True)
    baseline = run_worker({**base, "side": "baseline"}, log)
    out = {"setup": {**base, "lora": LORA, "lr": LR, "precisions": args.precisions}, "baseline": baseline, "configs": {}}

    def measure(name: str, spec: dict) -> None:
        print(f"[speed] train: {name} ({args.steps} + 1 steps) ...", flush=True)
        r = summarize_train(run_worker({**base, **spec}, log), base)
        r["increase_over_baseline_mb"] = round(r["peak_rss_mb"] - baseline["rss_mb"])
        out["configs"][name] = r
        print(f"[speed]   {r['tokens_per_s']} tokens/s, {r['cpu_seconds_per_step']} CPU s/step, peak RSS {r['peak_rss_mb']} MB", flush=True)

    for precision in args.precisions:
        for method in methods:
            for side in ("trainer", "ours"):
                measure(_name(side, method, precision), {"side": side, "method": method, "precision": precision})
    if "lora" in methods:  # LoRA's memory-saving choice: --gradient-checkpointing (recomputes the forward in backward)
        measure("ours-lora-gc", {"side": "ours", "method": "lora", "precision": "fp32", "gradient_checkpointing": True})
    c, ratios = out["configs"], {}
    for precision in args.precisions:
        tag = "" if precision == "fp32" else f"{precision}_"
        for method in methods:
            o, t = c[_name("ours", method, precision)], c[_name("trainer", method, precision)]
            ratios[f"{tag}{method}_ours_over_trainer_tokens_per_s"] = round(o["tokens_per_s"] / t["tokens_per_s"], 3)
            if o["tokens_per_cpu_s"] and t["tokens_per_cpu_s"]:
                ratios[f"{tag}{method}_ours_over_trainer_tokens_per_cpu_s"] = round(o["tokens_per_cpu_s"] / t["tokens_per_cpu_s"], 3)
            ratios[f"{tag}{method}_ours_over_trainer_peak_rss"] = round(o["peak_rss_mb"] / t["peak_rss_mb"], 3)
        if len(methods) == 2:
            for side in ("ours", "trainer"):
                f, l = c[_name(side, "full", precision)], c[_name(side, "lora", precision)]
                ratios[f"{tag}{side}_lora_over_full_tokens_per_s"] = round(l["tokens_per_s"] / f["tokens_per_s"], 3)
                ratios[f"{tag}{side}_lora_over_full_peak_rss"] = round(l["peak_rss_mb"] / f["peak_rss_mb"], 3)
                ratios[f"{tag}{side}_lora_over_full_increase"] = round(l["increase_over_baseline_mb"] / f["increase_over_baseline_mb"], 3)
    if "fp32" in args.precisions:
        for precision in (p for p in args.precisions if p != "fp32"):
            for side in ("ours", "trainer"):
                for method in methods:
                    lo, hi = c[_name(side, method, "fp32")], c[_name(side, method, precision)]
                    ratios[f"{side}_{method}_{precision}_over_fp32_tokens_per_s"] = round(hi["tokens_per_s"] / lo["tokens_per_s"], 3)
    if "lora" in methods and "fp32" in args.precisions:
        f, g = c["ours-full"], c["ours-lora-gc"]
        ratios["ours_lora_gc_over_full_tokens_per_s"] = round(g["tokens_per_s"] / f["tokens_per_s"], 3)
        ratios["ours_lora_gc_over_full_peak_rss"] = round(g["peak_rss_mb"] / f["peak_rss_mb"], 3)
    out["ratios"] = ratios
    return out


def section_generate(args) -> dict:
    import torch

    from learnforget import models
    from learnforget.evaluate import generation, task
    from learnforget.evaluate.scoring import encode
    from learnforget.evaluate.tasks import gsm8k

    model, tok = models.load(args.model)
    mode = gsm8k.default_mode(tok)
    problems = task.sample(gsm8k.load_problems("test"), args.gen_prompts, 0, "gsm8k")
    shots = gsm8k.load_problems("train")[:gsm8k.N_SHOTS] if mode == "5shot" else []
    prompts = [gsm8k.prompt(p, mode, tok, shots) for p in problems]
    stop, B, new = gsm8k.stop_strings(tok), args.gen_batch, args.max_new_tokens

    def plain() -> list[str]:
        """model.generate on the batches generate() makes: longest first, left-padded, greedy, HF stop_strings."""
        encoded = [encode(tok, p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        results = [""] * len(prompts)
        for i in range(0, len(order), B):
            batch = order[i:i + B]
            L = max(len(encoded[j]) for j in batch)
            ids = torch.full((len(batch), L), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), L, dtype=torch.long)
            for r, j in enumerate(batch):
                ids[r, L - len(encoded[j]):] = torch.tensor(encoded[j])
                mask[r, L - len(encoded[j]):] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, stop_strings=stop, tokenizer=tok, pad_token_id=pad, use_cache=True)
            for r, j in enumerate(batch):
                results[j] = generation.truncate_at_stop(tok.decode(out[r, L:], skip_special_tokens=True), stop)
        return results

    model.eval()
    runs = {}
    for name, fn in (("model_generate", plain), ("ours", lambda: generation.generate(model, tok, prompts, stop, new, B))):
        print(f"[speed] generate: {name} ({len(prompts)} prompts, batch {B}, <= {new} new tokens) ...", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        texts = fn()
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = sum(len(tok.encode(t, add_special_tokens=False)) for t in texts)
        runs[name] = {"seconds": round(sec, 2), "cpu_seconds": round(cpu, 2), "new_tokens": n, "tokens_per_s": round(n / sec, 2), "texts": texts}
        print(f"[speed]   {runs[name]['tokens_per_s']} new tokens/s ({n} tokens, {sec:.1f} s)", flush=True)
    same = sum(a == b for a, b in zip(runs["ours"]["texts"], runs["model_generate"]["texts"]))
    return {"mode": mode, "prompts": len(prompts), "batch": B, "max_new_tokens": new, "stop": stop,
            "identical_completions": same, **runs,
            "ratio_tokens_per_s": round(runs["ours"]["tokens_per_s"] / runs["model_generate"]["tokens_per_s"], 3)}


def model_flops_per_token(model_spec: str, seq_len: int) -> dict:
    import torch

    from learnforget import models

    model, _ = models.load(model_spec)
    c = model.config
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    d_attn = c.num_attention_heads * getattr(c, "head_dim", None) if getattr(c, "head_dim", None) else c.hidden_size
    attn = 12 * c.num_hidden_layers * d_attn * seq_len
    return {"linear_params": n, "attention_flops_per_token": attn, "train_flops_per_token": 6 * n + attn}


def section_mfu(train: dict, peaks: dict, args) -> dict:
    """Achieved FLOP/s of full fine-tuning at each precision over the matmul peak of that precision."""
    f = model_flops_per_token(args.model, args.seq_len)
    out = {**f, "matmul_peak_gflops": peaks}
    for precision in args.precisions:
        peak = peaks[precision]
        for side in ("ours", "trainer"):
            c = train["configs"].get(_name(side, "full", precision))
            if c:
                key = f"{side}_full" + ("" if precision == "fp32" else f"_{precision}")
                achieved = f["train_flops_per_token"] * c["tokens_per_s"] / 1e9
                out[f"{key}_gflops"] = round(achieved, 2)
                out[f"{key}_mfu"] = round(achieved / peak, 4)
                if c["tokens_per_cpu_s"]:  # per core-second, against the per-core peak (peak / threads)
                    import torch

                    per_core = f["train_flops_per_token"] * c["tokens_per_cpu_s"] / 1e9
                    out[f"{key}_mfu_per_cpu_second"] = round(per_core / (peak / torch.get_num_threads()), 4)
    return out


def section_spectrum(args) -> dict:
    import copy

    import torch

    from learnforget import checkpoint, models
    from learnforget.analysis import spectrum

    base, _ = models.load(args.model)
    cks = checkpoint.complete(REPO / "runs" / "code-full") if args.model == "smollm2-135m" else []
    t0 = time.perf_counter()
    if cks:
        source = str(cks[-1].relative_to(REPO))
        tuned = checkpoint.load(base, cks[-1], merge=False)
    else:  # synthetic: base + a rank-8 update + small noise on every block linear weight
        source = "synthetic ΔW (rank 8 + noise) on the model's shapes"
        tuned = copy.deepcopy(base)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for w in spectrum.block_linear_weights(tuned).values():
                o, i = w.shape
                w.add_(1e-3 * torch.randn(o, 8, generator=g) @ torch.randn(8, i, generator=g) + 1e-5 * torch.randn(o, i, generator=g))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    deltas = spectrum.weight_deltas(base, tuned)
    t_delta = time.perf_counter() - t0
    timings = {}
    for name, kw in (("analyze_svd", {}), ("delta_only_svd", {"base": False, "random": False}),
                     ("delta_only_gram", {"base": False, "random": False, "method": "gram"})):
        print(f"[speed] spectrum: {name} ...", flush=True)
        t0 = time.perf_counter()
        rows = spectrum.spectrum(deltas, **kw)
        timings[name] = round(time.perf_counter() - t0, 2)
        if name == "analyze_svd":
            summary = spectrum.summarize(rows)
    return {"source": source, "modules": len(deltas), "load_seconds": round(t_load, 2), "delta_seconds": round(t_delta, 2),
            "spectrum_seconds": timings, "rank90_mean_by_type": {s["type"]: round(s["rank_mean"], 1) for s in summary},
            "note": "analyze_svd = ΔW + base W + Gaussian control, exact svdvals (what `learnforget analyze` runs)"}


# ---------------------------------------------------------------- report

def print_table(r: dict) -> None:
    s = r["setup"]
    print(f"\nspeed on {s['model']} ({r['torch_threads']} threads, load average {r['load_average_start']} at start, "
          f"{r['load_average_end']} at end{'' if r['idle'] else ': measured under contention'})")
    t = r.get("train")
    if t:
        st = t["setup"]
        print(f"\ntrain: {st['rows']} rows x {st['seq_len']} tokens per step, {st['steps']} timed steps after 1 warm-up; "
              f"baseline (model loaded) RSS {t['baseline']['rss_mb']:.0f} MB")
        head = f"{'config':<14} {'tokens/s':>9} {'CPU s/step':>10} {'tokens/CPU s':>12} {'peak RSS MB':>11} {'+ over base':>11}"
        print(head)
        print("-" * len(head))
        for name, c in t["configs"].items():
            print(f"{name:<14} {c['tokens_per_s']:>9.2f} {c['cpu_seconds_per_step'] or float('nan'):>10.1f} "
                  f"{c['tokens_per_cpu_s'] or float('nan'):>12.2f} {c['peak_rss_mb']:>11} {c['increase_over_baseline_mb']:>11}")
        for k, v in t["ratios"].items():
            print(f"  {k:<44} {v:>6.3f}")
    g = r.get("generate")
    if g:
        print(f"\ngenerate: GSM8K {g['mode']}, {g['prompts']} prompts, batch {g['batch']}, <= {g['max_new_tokens']} new tokens: "
              f"ours {g['ours']['tokens_per_s']} vs model.generate {g['model_generate']['tokens_per_s']} new tokens/s "
              f"(ratio {g['ratio_tokens_per_s']}); identical completions {g['identical_completions']}/{g['prompts']}")
    m = r.get("mfu")
    if m:
        parts = [f"{k[:-4]} {m[k[:-4] + '_gflops']} GFLOP/s = MFU {100 * v:.1f}%" for k, v in m.items()
                 if k.endswith("_mfu") and k.startswith(("ours", "trainer"))]
        print(f"\nMFU (full FT, {m['train_flops_per_token'] / 1e6:.0f} MFLOP/token): matmul peaks " +
              ", ".join(f"{p} {v} GFLOP/s" for p, v in m["matmul_peak_gflops"].items()) + " ("
              + ", ".join(f"{when} MKL {r[f'matmul_{when}_gflops']['mkl_sgemm']} / oneDNN {r[f'matmul_{when}_gflops'].get('onednn_packed')}"
                          f" / bf16 {r[f'matmul_{when}_gflops']['bf16']}" for when in ("start", "end"))
              + "); " + "; ".join(parts))
    sp = r.get("spectrum")
    if sp:
        print(f"\nspectrum of {sp['modules']} modules ({sp['source']}): load {sp['load_seconds']} s, ΔW {sp['delta_seconds']} s, "
              + ", ".join(f"{k} {v} s" for k, v in sp["spectrum_seconds"].items()))
    print("\nmultiple-choice eval vs lm-eval (accuracy parity and items/s): benchmarks/parity_lmeval.py, results/parity-*.json")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="default smollm2-135m (tiny-random-llama with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps after 1 warm-up step (default 3; 1 with --quick)")
    p.add_argument("--rows", type=int, default=None, help="rows per optimizer step (default 4)")
    p.add_argument("--seq-len", type=int, default=None, help="default 512 (64 with --quick)")
    p.add_argument("--micro-batch", type=int, default=None, help="ours: rows per forward pass (default: TrainConfig's); "
                   "Trainer always takes all rows of a step in one pass (per_device_train_batch_size = rows)")
    p.add_argument("--gen-prompts", type=int, default=None, help="GSM8K prompts (default 16)")
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256, GSM8K's")
    p.add_argument("--only", choices=["train", "generate", "mfu", "spectrum"])
    p.add_argument("--precisions", default="fp32,bf16", help="training precisions measured side by side (default fp32,bf16)")
    p.add_argument("--quick", action="store_true", help="tiny model, tiny sizes: checks that the script works")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.precisions = args.precisions.split(",")
    if args.worker:
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[spec["side"]](spec)), flush=True)
        return 0
    q = args.quick
    defaults = {"model": "tiny-random-llama" if q else "smollm2-135m", "steps": 1 if q else 3, "rows": 2 if q else 4,
                "seq_len": 64 if q else 512, "gen_prompts": 4 if q else 16, "max_new_tokens": 16 if q else 256}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = Path(args.out or HERE / "results" / f"speed-{date.today().isoformat()}{'-quick' if q else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    log.write_text("")

    import torch

    sgemm_n = 512 if q else 2048
    load0 = round(os.getloadavg()[0], 2)
    peak0 = matmul_peak(sgemm_n)
    report: dict = {"command": " ".join(sys.argv), "date": date.today().isoformat(), "torch_threads": torch.get_num_threads(),
                    "load_average_start": load0, "matmul_start_gflops": peak0, "sgemm_n": sgemm_n,
                    "setup": {k: getattr(args, k) for k in ("model", "steps", "rows", "seq_len", "micro_batch", "gen_prompts", "gen_batch", "max_new_tokens")}}
    from learnforget.train import versions

    report["versions"] = versions()
    want = [args.only] if args.only else ["train", "generate", "mfu", "spectrum"]
    if "train" in want or "mfu" in want:
        report["train"] = section_train(args, log, ["full", "lora"] if "train" in want else ["full"])
    if "generate" in want:
        report["generate"] = section_generate(args)
    if "spectrum" in want:
        report["spectrum"] = section_spectrum(args)
    peak1 = matmul_peak(sgemm_n)
    report.update({"matmul_end_gflops": peak1, "load_average_end": round(os.getloadavg()[0], 2)})
    report["idle"] = load0 < 0.5  # the load at the end includes this benchmark's own two threads
    if "mfu" in want:
        peaks = {"fp32": max(peak0["peak"], peak1["peak"]), "bf16": max(peak0["bf16"], peak1["bf16"])}
        report["mfu"] = section_mfu(report["train"], peaks, args)
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {out} (worker logs: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
