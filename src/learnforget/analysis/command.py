"""`learnforget analyze`: spectrum of ΔW and intruder dimensions of checkpoints against their base;
`learnforget analyze diversity`: diversity of sampled solutions of one model (see diversity.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..config import SVD_METHOD
from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    # --base/--checkpoint are checked in main, not by argparse: `analyze diversity` does without them.
    p.add_argument("--base", default=None, help="base model spec (smollm2-135m, folder, hub id); required for the spectrum")
    p.add_argument("--checkpoint", default=None, nargs="+", help="checkpoint folder(s): full model or PEFT adapter; required for the spectrum")
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    p.add_argument("--fraction", type=float, default=0.9, help="variance fraction for rank@fraction (the paper: 0.9)")
    p.add_argument("--k", type=int, default=10, help="top-k singular vectors checked for intruders")
    p.add_argument("--eps", default="0.5,0.6,0.7,0.8,0.9", help="intruder thresholds (max cosine similarity below eps)")
    p.add_argument("--no-intruders", action="store_true", help="spectrum only")
    p.add_argument("--svd", choices=["svd", "gram"], default=SVD_METHOD, help="exact svdvals, or eigenvalues of the Gram matrix (~2x faster)")
    from . import diversity

    sub = p.add_subparsers(dest="analysis", required=False, metavar="{diversity}")
    d = sub.add_parser("diversity", help="sample n solutions per problem; count correct and distinct correct ones, pass@k",
                       description=diversity.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    diversity.add_arguments(d)


def analyze(base, checkpoint: Path, fraction: float = 0.9, k: int = 10, eps=(0.5, 0.6, 0.7, 0.8, 0.9),
            intruders: bool = True, method: str = "svd", base_U: dict | None = None) -> dict:
    """Spectrum summary (+ per-module rows) and intruder counts of one checkpoint against its base model.

    `base_U` (a dict, possibly empty) caches the base weights' singular vectors across calls: they are
    most of the intruder cost and the same for every checkpoint of a base model."""
    from .. import checkpoint as ckpt
    from . import intruders as intr
    from . import spectrum

    t0 = time.time()
    tuned = ckpt.load(base, checkpoint, merge=False)
    deltas = spectrum.weight_deltas(base, tuned)
    if not deltas:
        raise UserError(f"{checkpoint}: no adapted linear weights found")
    rows = spectrum.spectrum(deltas, fraction=fraction, random=True, method=method, factors=spectrum.lora_factors(tuned))
    out = {"checkpoint": str(checkpoint), "fraction": fraction, "spectrum": rows, "summary": spectrum.summarize(rows),
           "spectrum_seconds": time.time() - t0}
    if intruders:
        t1 = time.time()
        if base_U is not None:
            missing = {n: d for n, d in deltas.items() if n not in base_U}
            if missing:
                base_U.update(intr.base_vectors(missing))
            out["base_vectors_seconds"] = time.time() - t1
        res = intr.intruders(deltas, k=k, eps=eps, base_U=base_U)
        out["intruders"] = {"k": res["k"], "eps": res["eps"], "by_type": res["by_type"], "total": res["total"]}
        out["intruder_seconds"] = time.time() - t1
    return out


def parse_eps(text: str) -> tuple[float, ...]:
    """--eps: comma-separated cosine thresholds, each in (0, 1]."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        try:
            e = float(item)
        except ValueError:
            raise UserError(f"--eps: expected comma-separated numbers in (0, 1], got {item!r} in {text!r}") from None
        if not 0 < e <= 1:
            raise UserError(f"--eps: each threshold is a cosine similarity in (0, 1], got {e:g}")
        out.append(e)
    return tuple(out)


def main(args) -> int:
    from .. import models

    if getattr(args, "analysis", None) == "diversity":
        from . import diversity

        return diversity.main(args)
    if not args.base or not args.checkpoint:
        raise UserError("analyze: --base and --checkpoint are required (or use `analyze diversity`)")
    eps = parse_eps(args.eps)
    if not 0 < args.fraction <= 1:
        raise UserError(f"--fraction: expected a number in (0, 1], got {args.fraction:g}")
    if args.k < 1:
        raise UserError(f"--k: expected a positive number of singular vectors, got {args.k}")
    from .. import checkpoint as ckpt

    for ck in args.checkpoint:  # every folder checked before the (slow) base model load
        ckpt.check(ck)
    base, _ = models.load(args.base)
    results = []
    base_U: dict = {}  # the base's singular vectors: computed for the first checkpoint, reused after
    for ck in args.checkpoint:
        r = analyze(base, Path(ck), args.fraction, args.k, eps, not args.no_intruders, args.svd, base_U)
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
