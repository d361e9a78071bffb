"""Slow checks on the real SmolLM2-135M (not in CI: `make test-slow`, a few minutes on 2 cores).

A run killed with SIGKILL right after a checkpoint and started again ends with the same per-step
losses and the same weights, bit for bit, as a run never interrupted: the tiny-model test in
test_train.py, here on the real model and corpus, for full fine-tuning and for LoRA with dropout (so
the RNG state, optimizer state and data position all have to come back)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learnforget import checkpoint

pytestmark = pytest.mark.slow


def _train(out: Path, method: list[str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "learnforget.cli", "train", "--model", "smollm2-135m", "--data", "python-code",
            "--seq-len", "128", "--batch-tokens", "256", "--micro-batch", "1", "--tokens", "1536",
            "--checkpoints", "512,1024,1536", "--eval-tokens", "256", "--out", str(out), *method]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _losses(out: Path) -> list:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss") for r in rows if "loss" in r] + [r["eval"] for r in rows if "eval" in r]


@pytest.mark.parametrize("method", [["--method", "full", "--lr", "2e-5"],
                                    ["--method", "lora", "--rank", "16", "--targets", "all", "--dropout", "0.05", "--lr", "2e-4"]],
                         ids=["full", "lora"])
def test_real_model_kill_and_resume_is_bit_for_bit(tmp_path, method, kill_when):
    ref = tmp_path / "ref"
    p = _train(ref, method)
    assert p.wait() == 0, p.stdout.read()[-3000:]
    killed = tmp_path / "killed"
    p = _train(killed, method)
    first = killed / "checkpoints" / "tokens-000000000512"
    kill_when(p, lambda: checkpoint.is_complete(first), timeout=600, poll=0.05)
    resumed = _train(killed, method)
    log = resumed.communicate()[0]
    assert resumed.returncode == 0, log[-3000:]
    assert "resuming from tokens-" in log
    assert _losses(killed) == _losses(ref)  # every step's training loss and every held-out loss
    from safetensors.torch import load_file

    name = "model.safetensors" if "full" in method else "adapter_model.safetensors"
    wa = load_file(checkpoint.complete(ref)[-1] / name)
    wb = load_file(checkpoint.complete(killed)[-1] / name)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
