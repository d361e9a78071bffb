"""Which training precision `precision: auto` means on this machine: bf16 mixed precision where the hardware
computes bf16 natively *and* it is measured faster here, else fp32.

Why a measurement and not only the flag: on a CPU without AVX512-BF16/AMX, PyTorch emulates bf16 matmuls
(an earlier machine of this project: 60-80x slower than fp32); with it (AMD Zen 4/5, Intel Sapphire Rapids
and later) oneDNN's bf16 matmul is ~2x its fp32 one (`benchmarks/speed.py` prints both). The flag says
the instruction exists; the timing, a few milliseconds at start-up, says it pays with these threads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the native bf16 dot-product instructions


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16_cpu() -> bool:
    return bool(cpu_flags() & set(NATIVE_FLAGS))


def _matmul_seconds(dtype: torch.dtype, m: int = 512, k: int = 576, n: int = 1536, reps: int = 5) -> float:
    """Best-of-`reps` seconds of one [m, k] x [n, k].T matmul (a SmolLM2 MLP projection of one 512-token row),
    by the path training takes: oneDNN for fp32 (learnforget.cpu.onednn), autocast's for bf16."""
    from . import onednn

    x, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    onednn.mm_t(x, w)  # first call: oneDNN primitive creation
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(4):
            onednn.mm_t(x, w)
        best = min(best, time.perf_counter() - t)
    return best / 4


def bf16_speedup() -> float:
    """fp32 over bf16 matmul time on this CPU with the current threads (> 1: bf16 is faster)."""
    return _matmul_seconds(torch.float32) / _matmul_seconds(torch.bfloat16)


def resolve(precision: str) -> tuple[str, str]:
    """(fp32 | bf16, why) for a run's `precision` setting. Every process of a multi-process CPU run
    must agree, so there the CPU's flag decides alone (a timing could differ between processes)."""
    if precision != "auto":
        return precision, "asked for"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: CUDA device with bf16"
        return "fp32", "auto: CUDA device without bf16"
    native = sorted(cpu_flags() & set(NATIVE_FLAGS))
    if not native:
        return "fp32", "auto: CPU without native bf16 (no avx512_bf16/amx_bf16 flag)"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "bf16", f"auto: CPU with native bf16 ({'/'.join(native)}; multi-process: by the flag alone)"
    speedup = bf16_speedup()
    if speedup < 1.2:  # measured, not assumed: the flag alone does not make it pay
        return "fp32", f"auto: CPU has native bf16 but its matmul measured only {speedup:.2f}x fp32 here"
    return "bf16", f"auto: CPU with native bf16 ({'/'.join(native)}), matmul {speedup:.1f}x fp32 here"
