"""glibc malloc settings for a process that allocates and frees large tensors in a loop.

Why: glibc serves every block above its mmap threshold (128 KiB, raised dynamically to at most
32 MiB) with a fresh `mmap` and returns it to the kernel on free, so a tensor of hundreds of MB
(the scored logits of a multiple-choice batch, a layer's activations) costs its size in page
faults, and the kernel zeroes every page, each time it is allocated. Measured on SmolLM2-135M,
HellaSwag 200 items, 2 threads: 5.4-5.8 million minor faults and 13-15 s of system time in a
64-74 s run; with the settings below 0.6-0.8 million faults, 2 s, and 10% less wall time, for
~0.4 GB more peak RSS (freed memory stays in the process for reuse).
The cost: freed memory stays in the process, so RSS no longer falls when a big tensor is freed.
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
