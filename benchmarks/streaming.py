"""A streamed corpus of any size trains in the memory of a small one, and a killed run resumes to the same losses.

    python benchmarks/streaming.py --gb 2 [--tmp /tmp]

Writes a corpus of --gb GB of JSONL shards and one of 10 MB to a temporary folder (deleted at the end), trains
the tiny model on each with --streaming, compares their peak RSS (run.json), then kills a run of the big one
with SIGKILL after its first checkpoint, resumes it, and compares every step's loss with the uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_stream import write_shards  # noqa: E402

from learnforget import checkpoint  # noqa: E402


def train(corpus: Path, out: Path, kill_after: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "learnforget.cli", "train", "--model", "tiny-random-llama", "--data", str(corpus), "--streaming",
           "--seq-len", "64", "--batch-tokens", "512", "--micro-batch", "2", "--eval-tokens", "512", "--method", "full",
           "--lr", "1e-3", "--tokens", "16384", "--checkpoints", "4096,8192,16384", "--out", str(out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "a")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if kill_after:
        while not checkpoint.is_complete(out / "checkpoints" / kill_after) and p.poll() is None:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
    p.wait()
    return p


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lf-stream-", dir=a.tmp))
    try:
        shards, row_bytes = 32, 8200  # ~8 kB a document
        rows = int(a.gb * 1e9 / shards / row_bytes)
        t0 = time.time()
        big = write_shards(root / "big", shards, rows, filler=8000)
        small = write_shards(root / "small", shards, max(1, int(10e6 / shards / row_bytes)), filler=8000)
        size = sum(p.stat().st_size for p in big.iterdir())
        print(f"wrote {size / 1e9:.2f} GB in {time.time() - t0:.0f} s", flush=True)
        for name, corpus in (("small", small), ("big", big)):
            assert train(corpus, root / "runs" / name).returncode == 0, name
        peak = {n: json.loads((root / "runs" / n / "run.json").read_text())["peak_rss_mb"] for n in ("small", "big")}
        killed = root / "runs" / "killed"
        for kill in ("tokens-000000004096", None):
            rc = train(big, killed, kill_after=kill).returncode
            assert rc == (-signal.SIGKILL if kill else 0), (rc, (root / "runs" / "killed.log").read_text()[-3000:])
        same = losses(killed) == losses(root / "runs" / "big")
        print(json.dumps({"corpus_gb": size / 1e9, "peak_rss_mb": peak, "big_minus_small_mb": peak["big"] - peak["small"],
                          "killed_and_resumed_losses_equal": same, "steps": len(losses(killed))}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
