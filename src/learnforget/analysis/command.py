"""`learnforget analyze`: spectrum of ΔW and intruder dimensions of checkpoints against their base."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model spec (smollm2-135m, folder, hub id)")
    p.add_argument("--checkpoint", required=True, nargs="+", help="checkpoint folder(s): full model or PEFT adapter")
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    p.add_argument("--fraction", type=float, default=0.9, help="variance fraction for rank@fraction (the paper: 0.9)")
    p.add_argument("--k", type=int, default=10, help="top-k singular vectors checked for intruders")
    p.add_argument("--eps", default="0.5,0.6,0.7,0.8,0.9", help="intruder thresholds (max cosine similarity below eps)")
    p.add_argument("--no-intruders", action="store_true", help="spectrum only")
    p.add_argument("--svd", choices=["svd", "gram"], default="svd", help="exact svdvals, or eigenvalues of the Gram matrix (~2x faster)")


def analyze(base, checkpoint: Path, fraction: float = 0.9, k: int = 10, eps=(0.5, 0.6, 0.7, 0.8, 0.9),
            intruders: bool = True, method: str = "svd", base_U: dict | None = None) -> dict:
    """Spectrum summary (+ per-module rows) and intruder counts of one checkpoint against its base model."""
    from . import intruders as intr
    from . import spectrum

    t0 = time.time()
    tuned = spectrum.load_tuned(base, checkpoint)
    deltas = spectrum.weight_deltas(base, tuned)
    if not deltas:
        raise UserError(f"{checkpoint}: no adapted linear weights found")
    rows = spectrum.spectrum(deltas, fraction=fraction, random=True, method=method)
    out = {"checkpoint": str(checkpoint), "fraction": fraction, "spectrum": rows, "summary": spectrum.summarize(rows),
           "spectrum_seconds": time.time() - t0}
    if intruders:
        t1 = time.time()
        res = intr.intruders(deltas, k=k, eps=eps, base_U=base_U)
        out["intruders"] = {"k": res["k"], "eps": res["eps"], "by_type": res["by_type"], "total": res["total"]}
        out["intruder_seconds"] = time.time() - t1
    return out


def main(args) -> int:
    from .. import models

    eps = tuple(float(e) for e in args.eps.split(","))
    base, _ = models.load(args.base)
    results = []
    for ck in args.checkpoint:
        if not Path(ck).is_dir():
            raise UserError(f"{ck}: checkpoint folder does not exist")
        r = analyze(base, Path(ck), args.fraction, args.k, eps, not args.no_intruders, args.svd)
        results.append(r)
        print(f"\n{ck}  (spectrum {r['spectrum_seconds']:.1f} s" + (f", intruders {r['intruder_seconds']:.1f} s)" if "intruders" in r else ")"))
        print(f"{'type':>5} {'full rank':>9} {'rank@90% mean':>14} {'fraction':>9} {'base W':>7} {'random':>7}")
        for s in r["summary"]:
            print(f"{s['type']:>5} {s['full_rank']:>9} {s['rank_mean']:>14.1f} {s['rank_fraction_mean']:>9.3f} "
                  f"{s.get('base_rank_mean', float('nan')):>7.1f} {s.get('random_rank_mean', float('nan')):>7.1f}")
        if "intruders" in r:
            print(f"intruder dimensions (k={r['intruders']['k']}): " + ", ".join(f"eps {e}: {n}" for e, n in r["intruders"]["total"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0
