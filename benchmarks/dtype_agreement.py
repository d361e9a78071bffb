"""What `learnforget eval --dtype bfloat16` costs in accuracy and buys in speed: our multiple-choice
scoring of the same items in float32 and in bfloat16, one process, same machine, same run.

    .venv/bin/python benchmarks/dtype_agreement.py            # 200 items x 3 forgetting tasks, seed 0

Prints per task: seconds in each dtype and their ratio, how many items keep the same prediction
(acc and acc_norm), both accuracies, and the median / max absolute change of a choice's
log-likelihood. Results: benchmarks/results/dtype-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from learnforget.evaluate import runner, task, tasks
from learnforget.evaluate import scoring as mc

HERE = Path(__file__).resolve().parent


def score(model, tok, items, batch_size: int) -> tuple[list, float]:
    t0 = time.perf_counter()
    out = mc.score(model, tok, items, batch_size=batch_size)
    return [lls for lls, _ in out], time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default="hellaswag,arc_challenge,winogrande")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / f"dtype-{date.today().isoformat()}.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, _ = runner.load_model(args.model, None, "float32")
    half = runner.load_model(args.model, None, "bfloat16")[0]
    report = {"command": " ".join(sys.argv), "model": args.model, "limit": args.limit, "seed": args.seed,
              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "tasks": {}}
    for name in runner.parse_tasks(args.tasks):
        items = task.sample(tasks.get(name).load(), args.limit, args.seed, name)
        ref, t32 = score(model, tok, items, args.batch_size)
        got, t16 = score(half, tok, items, args.batch_size)
        m32 = [mc.item_metrics(it, ll) for it, ll in zip(items, ref)]
        m16 = [mc.item_metrics(it, ll) for it, ll in zip(items, got)]
        diffs = [abs(a - b) for x, y in zip(ref, got) for a, b in zip(x, y)]
        row = {"n": len(items), "float32_seconds": round(t32, 2), "bfloat16_seconds": round(t16, 2), "speedup": round(t32 / t16, 2),
               "same_pred": sum(a["pred"] == b["pred"] for a, b in zip(m32, m16)),
               "same_pred_norm": sum(a["pred_norm"] == b["pred_norm"] for a, b in zip(m32, m16)),
               "acc": [sum(m["acc"] for m in ms) / len(ms) for ms in (m32, m16)],
               "acc_norm": [sum(m["acc_norm"] for m in ms) / len(ms) for ms in (m32, m16)],
               "median_abs_loglik_diff": round(statistics.median(diffs), 4), "max_abs_loglik_diff": round(max(diffs), 4)}
        report["tasks"][name] = row
        print(f"{name:<14} fp32 {t32:6.1f}s  bf16 {t16:6.1f}s  {row['speedup']:.2f}x  same pred {row['same_pred']}/{row['n']}, "
              f"norm {row['same_pred_norm']}/{row['n']}; acc {row['acc'][0]:.3f} -> {row['acc'][1]:.3f}, acc_norm "
              f"{row['acc_norm'][0]:.3f} -> {row['acc_norm'][1]:.3f}; |Δll| median {row['median_abs_loglik_diff']}, max {row['max_abs_loglik_diff']}",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
