"""Streamed corpora (data.stream): the in-memory path's held-out split, one stream for any process count,
an exact resume position, a killed streamed run resuming to the same losses, memory that does not follow
the corpus's size."""

import json
import random

import pytest

from learnforget import models
from learnforget.config import DataSpec
from learnforget.data.corpora import Corpus
from learnforget.data.stream import open_corpus

from test_train import _cli, args, losses


def write_shards(folder, shards: int, rows: int, seed: int = 0, filler: int = 0):
    """JSONL shards of short distinct code-like documents (filler: extra characters a document, to make it big)."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    for s in range(shards):
        with open(folder / f"shard-{s:04d}.jsonl", "w") as f:
            for i in range(rows):
                body = "\n".join(f"    y = x * {rnd.randint(0, 999)} + {j}" for j in range(6)) + "#" * filler
                f.write(json.dumps({"text": f"def f_{s}_{i}(x):\n{body}\n    return y\n"}) + "\n")
    return folder


@pytest.fixture
def tok():
    return models.load("tiny-random-llama")[1]


def spec(folder, streaming, **kw):
    return DataSpec(str(folder), "cpt", seq_len=32, heldout_fraction=0.1, streaming=streaming, **kw)


def test_streamed_corpus_holds_out_the_same_documents_as_the_in_memory_path(tmp_path, tok):
    folder = write_shards(tmp_path / "c", shards=3, rows=40)
    whole = Corpus(spec(folder, False), tok)
    streamed = open_corpus(spec(folder, True), tok)
    assert streamed.streaming and not whole.streaming
    from learnforget.data import stream

    seen_train, seen_held = set(), set()
    for unit in streamed.units:
        for n, where, row in stream._rows_of(streamed.spec, unit, 0):
            item = stream._item(streamed.spec, unit, n, where, row)
            (seen_held if streamed.is_heldout(item.id) else seen_train).add(item.id)
    assert seen_held == {d.id for d in whole.heldout} and seen_train == {d.id for d in whole.train}
    assert 0 < len(seen_held) < len(seen_train)
    ids, _ = streamed.heldout_rows(32 * 4)
    assert ids.shape == (4, 32)


def test_the_stream_is_the_same_for_one_process_or_two_and_resumes_exactly(tmp_path, tok):
    folder = write_shards(tmp_path / "c", shards=5, rows=30)
    c = open_corpus(spec(folder, True), tok)
    one = c.batches(seed=3, rows_per_step=4, world=1, rank=0)
    steps = [next(one) for _ in range(40)]  # several epochs of every lane
    r0, r1 = c.batches(3, 4, 2, 0), c.batches(3, 4, 2, 1)
    assert all(next(r0) + next(r1) == s for s in steps[:10])
    assert len({tuple(r[0]) for s in steps for r in s}) > 100  # rows are not repeats of a few
    # resume: the position after step 10 gives steps 11.. exactly, without reading from the start
    again = c.batches(3, 4, 1, 0)
    for _ in range(10):
        next(again)
    state = json.loads(json.dumps(again.state()))  # as a checkpoint keeps it
    resumed = c.batches(3, 4, 1, 0, start_step=10, state=state)
    assert [next(resumed) for _ in range(30)] == steps[10:]
    assert [next(c.batches(4, 4, 1, 0)) for _ in range(1)] != steps[:1]  # another seed, another order


def test_a_killed_streamed_run_resumes_to_the_same_losses(tmp_path, kill_when):
    from learnforget import checkpoint

    folder = write_shards(tmp_path / "c", shards=6, rows=60)
    common = ["--method", "full", "--lr", "1e-3", "--tokens", "6144", "--checkpoints", "1024,2048,4096", "--eval-tokens", "128",
              "--streaming"]
    ref = tmp_path / "ref"
    p = _cli(args(folder, ref, *common))
    log = p.communicate()[0]
    assert p.returncode == 0, log
    assert "streaming 6 unit(s)" in log
    killed = tmp_path / "killed"
    p = _cli(args(folder, killed, *common))
    kill_when(p, lambda: checkpoint.is_complete(killed / "checkpoints" / "tokens-000000001024"), timeout=120, poll=0.02)
    assert (checkpoint.complete(killed)[-1] / "resume" / "stream-0.json").exists()
    p = _cli(args(folder, killed, *common))
    log = p.communicate()[0]
    assert p.returncode == 0 and "resuming from tokens-" in log, log
    assert losses(killed) == losses(ref)


PEAK = """
import sys
from learnforget import models
from learnforget.config import DataSpec
from learnforget.data.stream import open_corpus
tok = models.load("tiny-random-llama")[1]
c = open_corpus(DataSpec(sys.argv[1], "cpt", seq_len=32, heldout_fraction=0.1, streaming=sys.argv[2] == "on"), tok)
b = c.batches(0, 8, 1, 0)
for _ in range(20):
    next(b)
c.heldout_rows(32 * 8)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child of a big pytest would start at its size
print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024)
"""


def peak_mb(folder, mode) -> float:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", PEAK, str(folder), mode], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.split()[-1])


def test_streaming_memory_does_not_follow_the_corpus(tmp_path):
    """A few steps of a 64 MB streamed corpus peak as low as of a 1 MB one; read whole, it would not."""
    small = write_shards(tmp_path / "small", shards=8, rows=30, filler=4000)
    big = write_shards(tmp_path / "big", shards=8, rows=2000, filler=4000)
    streamed_small, streamed_big, whole_big = peak_mb(small, "on"), peak_mb(big, "on"), peak_mb(big, "off")
    assert streamed_big < streamed_small + 20, (streamed_small, streamed_big)
    assert whole_big > streamed_big + 50, (whole_big, streamed_big)  # what the test would catch


def test_a_streamed_corpus_wants_a_token_budget(tmp_path, tok):
    from learnforget.errors import UserError

    c = open_corpus(spec(write_shards(tmp_path / "c", 2, 10), True), tok)
    with pytest.raises(UserError, match="token budget"):
        c.rows_per_epoch()
