"""glibc malloc settings for a process that allocates and frees large tensors in a loop.

Why: glibc serves every block above its mmap threshold (128 KiB, raised dynamically to at most
32 MiB) with a fresh `mmap` and returns it to the kernel on free, so a tensor of hundreds of MB
(the scored logits of a multiple-choice batch, a layer's activations) costs its size in page
faults, and the kernel zeroes every page, each time it is allocated. Measured 2026-12-02 (2 threads):
`learnforget eval --model smollm2-135m --tasks forgetting,perplexity:python-code --limit 200` on a LoRA
checkpoint took 2 min 39 s with 26.7 s of system time untuned (glibc's defaults, which
LEARNFORGET_MALLOPT=0 keeps), 2 min 15 s with 4.7 s tuned; peak RSS 2.94 -> 3.19 GB, because freed memory stays in the process for reuse.
That is why only `learnforget eval`, a process that evaluates and exits, calls `tune()`: training
and a study (whose runs share one process and must each report their own peak memory) do not.
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
