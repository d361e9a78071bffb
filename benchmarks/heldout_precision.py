"""What held-out scoring would gain and lose in bf16: one demo held-out set at one checkpoint (16 rows x 256
tokens, one thread, as a demo worker scores it), scored in fp32 (the product's path: oneDNN packed weights),
under bf16 autocast over fp32 weights, and with the weights cast to bf16; time, and the shift of loss,
entropy and KL drift from fp32's.

    .venv/bin/python benchmarks/heldout_precision.py
    .venv/bin/python benchmarks/heldout_precision.py --study configs/demo-cpu.yaml   # a finished study's runs

With --study, each best-learning-rate run's final checkpoint of a finished study is scored on the study's own
held-out sets in fp32 and under bf16 autocast (oneDNN off, so that autocast reaches the linear layers), each
against a base reference made at the same precision, and the shifts of loss, KL and of each method's paired
difference from full fine-tuning are set against the study's margins.

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


def study_shifts(config: str) -> int:
    """fp32 vs bf16 autocast scores of a finished study's best-lr runs, and the shift of their paired differences."""
    import contextlib
    import json
    import os
    from pathlib import Path

    from learnforget import checkpoint
    from learnforget.study import plan
    from learnforget.train.heldout import heldout_sets

    torch.set_num_threads(2)
    study = plan.load(config)
    root = Path("runs/studies") / study.name
    best = {r["id"] for r in json.loads((root / "results.json").read_text())["runs"] if r.get("best_lr")}
    runs = [r for r in plan.expand(study, root) if r.id in best]
    base, tok = models.load(study.model)
    sets = heldout_sets(runs[0].config, tok)
    scores = {}
    for name, ctx in (("fp32", contextlib.nullcontext), ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):
        os.environ["LEARNFORGET_ONEDNN"] = "1" if name == "fp32" else "0"
        with ctx():
            refs = {s: heldout.score(base, ids, lab, tok.eos_token_id, top_k=64)["reference"] for s, (ids, lab) in sets.items()}
            for r in runs:
                model = checkpoint.load(base, checkpoint.complete(Path(r.config.out))[-1], merge=False)
                scores[name, r.config.method.label()] = {s: heldout.score(model, ids, lab, tok.eos_token_id, reference=refs[s])
                                                         for s, (ids, lab) in sets.items()}
    m = study.eval.margins
    print(f"{study.name}: final checkpoints of the best-lr runs, fp32 -> bf16 autocast (margins: loss {m['loss']}, KL {m['kl']})")
    labels = [r.config.method.label() for r in runs]
    for label in labels:
        for s in sets:
            a, b = scores["fp32", label][s], scores["bf16", label][s]
            line = f"  {label:22s} {s:13s} loss {a['loss']:.5f} -> {b['loss']:.5f} ({b['loss'] - a['loss']:+.5f})  " \
                   f"KL {a['kl']:.5f} -> {b['kl']:.5f} ({b['kl'] - a['kl']:+.5f})"
            if label != labels[0]:  # the paired difference from the first run (full fine-tuning)
                d = {p: {k: scores[p, label][s][k] - scores[p, labels[0]][s][k] for k in ("loss", "kl")} for p in ("fp32", "bf16")}
                line += f"  vs {labels[0]}: loss {d['bf16']['loss'] - d['fp32']['loss']:+.5f}, KL {d['bf16']['kl'] - d['fp32']['kl']:+.5f}"
            print(line)
    return 0


def main() -> int:
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--study":
        return study_shifts(sys.argv[2])
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
