"""KL drift from a top-k base reference: its error against the exact KL, and what the per-document held-out
scoring costs, on the real model and a real checkpoint, side by side in one run.

    .venv/bin/python benchmarks/kl_topk.py --checkpoint runs/studies/demo-cpu/runs/<run>/checkpoints/tokens-000000004096

Exact KL(base || tuned) per token needs both full next-token distributions; the reference keeps the base's
top-k log-probabilities and one bucket for the rest (learnforget/heldout.py), a lower bound. Prints, per k,
the mean KL both ways and the relative gap; then the seconds of scoring the set without KL, with KL, and
while making the reference (top-k of every position).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from learnforget import checkpoint, heldout, models
from learnforget.data.corpora import heldout_set


def exact_kl(base, tuned, ids: torch.Tensor, batch: int) -> float:
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            x = ids[i:i + batch]
            p = F.log_softmax(base(input_ids=x).logits[:, :-1].float(), -1)
            q = F.log_softmax(tuned(input_ids=x).logits[:, :-1].float(), -1)
            total += float((p.exp() * (p - q)).sum())
            n += p.shape[0] * p.shape[1]
    return total / n


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--checkpoint", required=True, help="a full or LoRA checkpoint of --model")
    ap.add_argument("--data", default="general-text")
    ap.add_argument("--tokens", type=int, default=2048, help="held-out tokens (exact KL holds two [rows, 512, vocab] tensors)")
    ap.add_argument("--ks", default="16,64,256")
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    base, tok = models.load(args.model)
    tuned = checkpoint.load(base, args.checkpoint, merge=True)
    ids, labels = heldout_set(args.data, tok, 512, args.tokens)
    exact = exact_kl(base, tuned, ids, args.batch)
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        ref = heldout.score(base, ids, labels, tok.eos_token_id, args.batch, top_k=k)["reference"]
        approx = heldout.score(tuned, ids, labels, tok.eos_token_id, args.batch, reference=ref)["kl"]
        rows.append({"k": k, "exact": exact, "topk": approx, "relative_gap": (exact - approx) / exact})
        print(f"k={k:4d}: KL exact {exact:.6f}, top-k {approx:.6f} ({100 * (exact - approx) / exact:.2f}% below)")
    ref = heldout.score(base, ids, labels, tok.eos_token_id, args.batch, top_k=64)["reference"]
    _, plain = timed(lambda: heldout.score(tuned, ids, labels, tok.eos_token_id, args.batch))
    _, with_kl = timed(lambda: heldout.score(tuned, ids, labels, tok.eos_token_id, args.batch, reference=ref))
    _, making = timed(lambda: heldout.score(base, ids, labels, tok.eos_token_id, args.batch, top_k=64))
    print(f"scoring {ids.numel():,} tokens: CE per document {plain:.2f} s; with KL {with_kl:.2f} s; making the top-64 reference {making:.2f} s")
    print(json.dumps({"tokens": int(ids.numel()), "rows": rows, "seconds": {"ce": plain, "ce_kl": with_kl, "reference": making},
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
