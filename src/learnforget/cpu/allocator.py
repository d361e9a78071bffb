"""glibc malloc settings for a process that allocates and frees large tensors in a loop.

Why: glibc serves every block above its mmap threshold (128 KiB, raised dynamically to at most
32 MiB) with a fresh `mmap` and returns it to the kernel on free, so a tensor of hundreds of MB
(the scored logits of a multiple-choice batch, a layer's activations) costs its size in page
faults, and the kernel zeroes every page, each time it is allocated. Measured 2026-12-02 (2 threads):
`learnforget eval --model smollm2-135m --tasks forgetting,perplexity:python-code --limit 200` on a LoRA
checkpoint took 2 min 39 s with 26.7 s of system time untuned (glibc's defaults, which
LEARNFORGET_MALLOPT=0 keeps), 2 min 15 s with 4.7 s tuned; peak RSS 2.94 -> 3.19 GB, because freed memory stays in the process for reuse.
Training allocates the same way (the tied embedding's dense gradient, the head's bf16 weight copy and
its logits chunks, 50-115 MB each, every micro-batch): a bf16 SmolLM2 full fine-tuning step measured
7.5 s untuned vs 5.1 s tuned (2026-12-03, 2 threads, 4 x 512 tokens). So `learnforget eval` and every
training run call `tune()`; a run first calls `release()`, so that a run of a study sharing the process
with earlier ones starts from what it needs, not from their freed memory.
`LEARNFORGET_MALLOPT=0` turns it off. jemalloc or tcmalloc through LD_PRELOAD do the same job
where they are installed (not on the machine this is measured on).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap (setting it also stops glibc's dynamic adjustment)
_TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory at the heap's top instead of returning it


def tune() -> bool:
    """Apply the settings to this process; False where they do not apply (not glibc, or turned off)."""
    if os.environ.get("LEARNFORGET_MALLOPT", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def release() -> bool:
    """Return the heap's free memory to the kernel (glibc malloc_trim); False where that does not apply."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
