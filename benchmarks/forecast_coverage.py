"""Coverage of the forecast's 90% intervals on synthetic curves with known parameters.

    .venv/bin/python benchmarks/forecast_coverage.py [--curves 100]

A gain c * (S / S_pilot)^b (c 0.01, b 0.7) on 30 held-out documents of 100 tokens, observed at the pilot's
checkpoints (2,048-13,312 tokens of a 100,352-token run, 1,024 tokens a step, 10% warm-up), with document
noise (documents differ in how much they gain), training noise between checkpoints, or both; the 90% interval
at the budget should hold the true value in about 90% of the curves.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_forecast import PILOT, SCHED, synthetic  # noqa: E402

from learnforget import forecast as fc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--curves", type=int, default=100)
    args = ap.parse_args()
    area = SCHED.area(PILOT)
    end = fc.Query.along(SCHED, [SCHED.total_steps * 1024])
    truth = 0.01 * (end.area[0] / area[-1]) ** 0.7
    for doc_sd, step_sd, what in ((0.002, 0.0, "document noise"), (1e-5, 0.0003, "training noise"), (0.002, 0.0003, "both")):
        hits = []
        for seed in range(args.curves):
            sig, _ = synthetic(0.01, 0.7, area, doc_sd=doc_sd, step_sd=step_sd, seed=seed)
            lo, hi = fc.band(fc.fit(area, sig, n_boot=400).predict_boot(end)[:, 0])
            hits.append(lo <= truth <= hi)
        print(f"{what:15s} coverage of the 90% interval: {np.mean(hits):.0%} over {args.curves} curves")


if __name__ == "__main__":
    main()
