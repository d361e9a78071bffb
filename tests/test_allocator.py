"""allocator.tune: freed large tensors are reused from the heap instead of being mapped (and faulted) anew."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from learnforget.cpu import allocator
tuned = allocator.tune()
for i in range(20):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(50_000_000 + (i % 7) * 1_000_000)  # ~200 MB, written, freed; sizes vary as a model's batches do
    del x
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_malloc_reuses_freed_memory():
    tuned, faults = _probe(LEARNFORGET_MALLOPT="1")
    off, faults_off = _probe(LEARNFORGET_MALLOPT="0")
    assert (tuned, off) == ("True", "False")
    # Default glibc maps each ~200 MB block anew (~50k page faults each); tuned, the heap's freed blocks are reused.
    assert faults_off > 10 * 40_000 and faults < faults_off / 3  # tuned: 0-2 of the 10 re-fault (heap layout)
