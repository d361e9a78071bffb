"""The CPU demo: full fine-tuning vs LoRA (r=16, all modules) on the embedded SmolLM2-135M,
continued pre-training on Python code; held-out code loss (learning) and held-out general-text loss
(forgetting) at each checkpoint.

It is the small, real version of the study (which replaces it when `learnforget study` lands):
every number it prints comes from training and scoring the real model on this machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import train
from .config import DataSpec, MethodConfig, RunConfig, TrainConfig

METHODS = {
    "full": (MethodConfig(method="full"), 2e-5),
    "lora-r16-all": (MethodConfig(method="lora", rank=16, targets="all"), 2e-4),
}


def main(args) -> int:
    out = Path(args.out)
    budget = args.tokens
    marks = [budget // 4, budget // 2, budget]
    results = {}
    for name, (method, lr) in METHODS.items():
        cfg = RunConfig(
            model="smollm2-135m",
            data=DataSpec(source="python-code", regime="cpt", seq_len=512),
            method=method,
            train=TrainConfig(lr=lr, tokens=budget, checkpoints=marks, batch_tokens=2048, micro_batch=2, eval_tokens=2048,
                              extra_eval=["general-text"]),
            out=str(out / name),
        )
        record = out / name / "run.json"
        prev = json.loads(record.read_text()) if record.exists() else {}
        done = prev.get("status") == "done" and prev.get("config") == json.loads(json.dumps(cfg.to_dict()))
        summary = prev if done else train.run(cfg)  # a finished demo is not trained twice
        evals = [r for r in map(json.loads, (out / name / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
        results[name] = {"heldout_code_loss": {r["tokens"]: r["eval"]["target"]["loss"] for r in evals},
                         "heldout_general_loss": {r["tokens"]: r["eval"]["general-text"]["loss"] for r in evals},
                         "tokens_per_s": summary["tokens_per_s_this_session"], "peak_rss_mb": summary["peak_rss_mb"],
                         "trainable": summary["parameters"]["trainable"]}
    (out / "demo.json").write_text(json.dumps(results, indent=2))
    print("\nHeld-out loss (nats/token) of SmolLM2-135M (Q4 GGUF dequantised to fp32): learning = Python code, forgetting = general text")
    print(f"{'tokens':>10}" + "".join(f"{n + ' code':>22}{n + ' general':>25}" for n in results))
    for t in sorted(results["full"]["heldout_code_loss"]):
        print(f"{t:>10,}" + "".join(f"{results[n]['heldout_code_loss'][t]:>22.4f}{results[n]['heldout_general_loss'][t]:>25.4f}" for n in results))
    for n, r in results.items():
        print(f"{n}: {r['trainable']:,} trainable parameters, {r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"\nresults: {out / 'demo.json'}")
    return 0
