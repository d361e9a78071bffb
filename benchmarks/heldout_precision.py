"""What held-out scoring would gain and lose in bf16: one demo held-out set at one checkpoint (16 rows x 256
tokens, one thread, as a demo worker scores it), scored in fp32 (the product's path: oneDNN packed weights),
under bf16 autocast over fp32 weights, and with the weights cast to bf16; time, and the shift of loss,
entropy and KL drift from fp32's.

    .venv/bin/python benchmarks/heldout_precision.py

The rows are this package's own Python source (code text, as the demo's target set); the base model's
top-64 reference is scored in fp32, then every weight is nudged by 2% of its tensor's std (seeded) so that KL
is of the size a demo run reaches (~0.01-0.02). Why it matters: held-out scoring is most of a demo run's wall
time (the study's closing line splits it), and the demo's KL margin is 0.002 nats/token.
"""

from __future__ import annotations

import inspect
import time

import torch

import learnforget.study.plan
from learnforget import heldout, models

ROWS, SEQ = 16, 256


def timed(model, ids, ref, eos, autocast: bool = False) -> tuple[float, dict]:
    best, r = float("inf"), None
    for _ in range(2):  # best of 2: the first call also creates oneDNN primitives
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            r = heldout.score(model, ids, ids.clone(), eos, reference=ref)
        best = min(best, time.perf_counter() - t0)
    return best, r


def main() -> int:
    torch.set_num_threads(1)
    model, tok = models.load("smollm2-135m")
    text = tok(inspect.getsource(learnforget.study.plan), add_special_tokens=False)["input_ids"]
    ids = torch.tensor((text * (ROWS * SEQ // len(text) + 1))[: ROWS * SEQ]).view(ROWS, SEQ)
    eos = tok.eos_token_id
    ref = heldout.score(model, ids, ids.clone(), eos, top_k=64)["reference"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.02)
    rows = [("fp32", *timed(model, ids, ref, eos)), ("bf16 autocast", *timed(model, ids, ref, eos, autocast=True))]
    rows.append(("bf16 weights", *timed(model.to(torch.bfloat16), ids, ref, eos)))
    t32, r32 = rows[0][1], rows[0][2]
    print(f"held-out scoring of {ROWS} x {SEQ} tokens, 1 thread")
    for name, t, r in rows:
        print(f"  {name:14s} {t:5.1f} s ({t32 / t:.2f}x fp32's speed)  loss {r['loss']:.5f} ({r['loss'] - r32['loss']:+.5f})  "
              f"entropy {r['entropy']:.5f} ({r['entropy'] - r32['entropy']:+.5f})  KL {r['kl']:.5f} ({r['kl'] - r32['kl']:+.5f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
