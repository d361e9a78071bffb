"""Corpora of any size, read as a stream: memory that does not grow with the corpus, an exact resume position.

A streamed corpus is a list of *units*: the files of a local corpus (JSONL / Parquet rows, or one document
per text file; a folder or a glob of many shards) or the shards of a hub dataset (`datasets` streaming mode).
Training rows come from G *lanes* read side by side: each epoch the units are shuffled by seed + epoch and
lane l reads units l, l+G, l+2G, ... of that order, one document after another, packing them into rows of
seq_len tokens as data.corpora does. Row position j of every global batch of R rows comes from lane
j // (R/G), where G is the largest divisor of R not above the number of units. So:
  - the stream is a pure function of (corpus, seed, R): the same for one process or many;
  - each process reads only the lanes its rows of the batch come from (exactly its share when the process
    count divides G);
  - a lane's position is small (epoch, unit, row within the unit, the tokens carried into the next row):
    checkpoints keep it (resume/stream-<rank>.json), and a resumed run goes on from the same row.
Documents are held out by id hash as they stream past (sources.heldout, the same ids and so the same split
as the in-memory path); the held-out rows scored at checkpoints are the first held-out documents in the
corpus's file order, read once, never the whole corpus.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import DataSpec
from ..errors import UserError
from . import sources
from .corpora import Corpus, check_tokenizer, encode_item

STATE_FILE = "stream-{rank}.json"


STREAM_ABOVE = 2**30  # bytes: local corpora larger than this stream (data.stream) unless data.streaming says


def open_corpus(spec: DataSpec, tokenizer):
    """The corpus of a run: whole in memory (Corpus: faster for small corpora, epoch budgets), or streamed
    (data.stream.StreamCorpus: any size) when data.streaming asks for it or a local corpus is over 1 GiB."""
    on = spec.streaming
    if on is None:
        paths = sources.corpus_paths(spec.source) if spec.source not in sources.EMBEDDED_DOCS | sources.EMBEDDED_RECORDS else []
        on = sum(p.stat().st_size for p in paths) > STREAM_ABOVE
    if not on:
        return Corpus(spec, tokenizer)
    check_tokenizer(tokenizer)
    if spec.source in sources.EMBEDDED_DOCS | sources.EMBEDDED_RECORDS:
        raise UserError(f"{spec.source}: an embedded set is small and read whole; streaming is for files, folders, globs and hub ids")
    return StreamCorpus(spec, tokenizer)


@dataclass(frozen=True)
class Unit:
    key: str  # the id prefix of its documents (as the in-memory path names them)
    path: str | None = None  # a local file
    shard: int | None = None  # a hub dataset's shard index
    size: int = 0  # bytes on disk (0: unknown)


def units_of(spec: DataSpec) -> list[Unit]:
    """The units of a corpus, sorted by key: its files, or its hub shards."""
    paths = sources.corpus_paths(spec.source)
    if paths:
        return sorted((Unit(sources.doc_key(spec.source, p), str(p), size=p.stat().st_size) for p in paths), key=lambda u: u.key)
    n = _hub_stream(spec.source).n_shards
    return [Unit(f"{spec.source}/{i}", shard=i) for i in range(n)]


def _hub_stream(source: str):
    repo, data_dir = "/".join(source.split("/")[:2]), "/".join(source.split("/")[2:]) or None
    try:
        import datasets

        return datasets.load_dataset(repo, split="train", data_dir=data_dir, streaming=True)
    except Exception as e:  # offline, unknown id, ... : one line, no traceback
        raise UserError(f"cannot stream hub dataset '{source}' ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _rows_of(spec: DataSpec, unit: Unit, after: int) -> Iterator[tuple[int, str, dict | str]]:
    """(n, where, row) of a unit from row after+1 on; n counts its rows from 1 (non-blank JSONL lines), and
    a text file is one row: its whole text."""
    if unit.shard is not None:
        ds = _hub_stream(spec.source)
        shard = ds.shard(num_shards=ds.n_shards, index=unit.shard)
        for n, row in enumerate(shard.skip(after), after + 1):
            yield n, f"{spec.source} shard {unit.shard} row {n}", row
        return
    path = Path(unit.path)
    if not sources.is_table(path):
        if after < 1:
            yield 1, str(path), path.read_text(encoding="utf-8", errors="replace")
        return
    for n, where, row in sources.iter_rows(path):
        if n > after:
            yield n, where, row


def _item(spec: DataSpec, unit: Unit, n: int, where: str, row):
    """The document (CPT) or record (IFT) of one row, with the in-memory path's id."""
    if isinstance(row, str):
        return sources.Doc(unit.key, row)
    id_ = f"{unit.key}:{n}" if unit.shard is None else f"{unit.key}/{n}"
    if spec.regime == "cpt":
        return sources.Doc(id_, sources.field(row, spec.text_field, where))
    return sources.Record(id_, sources.field(row, spec.prompt_field, where), sources.field(row, spec.response_field, where))


class Lane:
    """One lane of the training stream: its units in turn, epoch after epoch, packed into rows."""

    def __init__(self, corpus: "StreamCorpus", index: int, lanes: int, seed: int, state: dict | None = None):
        self.corpus, self.index, self.lanes, self.seed = corpus, index, lanes, seed
        s = state or {}
        self.epoch, self.pos, self.row = s.get("epoch", 0), s.get("unit", 0), s.get("row", 0)
        self.carry_ids: list[int] = list(s.get("carry_ids", []))
        self.carry_labels: list[int] = list(s.get("carry_labels", []))
        self._rows = self._stream()

    def state(self) -> dict:
        """Where the lane is, after the last row it gave: enough to go on from the next one."""
        return {"epoch": self.epoch, "unit": self.pos, "row": self.row, "carry_ids": self.carry_ids, "carry_labels": self.carry_labels}

    def __next__(self) -> tuple[list[int], list[int]]:
        return next(self._rows)

    def _order(self) -> list[Unit]:
        order = list(self.corpus.units)
        random.Random(self.seed + self.epoch).shuffle(order)
        return order[self.index::self.lanes]

    def _stream(self) -> Iterator[tuple[list[int], list[int]]]:
        L, spec = self.corpus.spec.seq_len, self.corpus.spec
        while True:
            order, trained = self._order(), False
            while self.pos < len(order):
                unit = order[self.pos]
                for n, where, row in _rows_of(spec, unit, self.row):
                    self.row = n
                    item = _item(spec, unit, n, where, row)
                    if self.corpus.is_heldout(item.id) or not self.corpus.usable(item):
                        continue
                    ids, labels = self.corpus.encode(item)
                    trained = True
                    self.carry_ids += ids
                    self.carry_labels += labels
                    while len(self.carry_ids) >= L:
                        out = self.carry_ids[:L], self.carry_labels[:L]
                        del self.carry_ids[:L], self.carry_labels[:L]
                        yield out
                self.pos, self.row = self.pos + 1, 0
            if not trained:
                raise UserError(f"{spec.source}: lane {self.index} of the stream found no training document in a whole "
                                f"epoch of its {len(order)} unit(s): too few documents outside the held-out split")
            self.epoch, self.pos = self.epoch + 1, 0


class Batches:
    """This process's rows of each global batch, from the lanes they come from; state() for checkpoints."""

    def __init__(self, corpus: "StreamCorpus", seed: int, rows_per_step: int, world: int, rank: int, start_step: int, state: dict):
        R = rows_per_step
        self.G = lanes_for(R, len(corpus.units))
        self.per_lane = R // self.G
        self.mine = range(rank * R // world, (rank + 1) * R // world)
        needed = sorted({j // self.per_lane for j in self.mine})
        if start_step and not all(str(i) in state for i in needed):
            raise UserError(f"{corpus.spec.source}: the checkpoint keeps no stream position for lane(s) {needed}: "
                            f"cannot resume a streamed corpus exactly")
        self.lanes = {i: Lane(corpus, i, self.G, seed, state.get(str(i)) if start_step else None) for i in needed}

    def __iter__(self):
        return self

    def __next__(self) -> list[tuple[list[int], list[int]]]:
        got: dict[int, tuple] = {}
        for i, lane in self.lanes.items():
            for k in range(self.per_lane):
                got[i * self.per_lane + k] = next(lane)
        return [got[j] for j in self.mine]

    def state(self) -> dict:
        return {str(i): lane.state() for i, lane in self.lanes.items()}


def lanes_for(rows_per_step: int, units: int) -> int:
    """The largest divisor of the global batch's rows not above the number of units."""
    return max(g for g in range(1, rows_per_step + 1) if rows_per_step % g == 0 and g <= max(1, units))


class StreamCorpus:
    """A corpus read as a stream; the same interface as data.corpora.Corpus where the training loop uses it."""

    streaming = True

    def __init__(self, spec: DataSpec, tokenizer):
        self.spec, self.tok = spec, tokenizer
        self.units = units_of(spec)
        if not self.units:
            raise UserError(f"{spec.source}: no files to stream")

    def encode(self, item) -> tuple[list[int], list[int]]:
        return encode_item(self.spec, self.tok, item)

    def usable(self, item) -> bool:
        """As in the in-memory path: blank documents are dropped (a record always counts)."""
        return self.spec.regime != "cpt" or bool(item.text.strip())

    def is_heldout(self, id_: str) -> bool:
        return sources.heldout(id_, self.spec.heldout_fraction)

    def describe(self) -> str:
        size = sum(u.size for u in self.units)
        return f"streaming {len(self.units)} unit(s)" + (f", {size / 2**20:,.0f} MiB" if size else "")

    def batches(self, seed: int, rows_per_step: int, world: int, rank: int, start_step: int = 0, state: dict | None = None) -> Batches:
        return Batches(self, seed, rows_per_step, world, rank, start_step, state or {})

    def check_train(self) -> None:
        """What the first step would find wrong, found now: a lane with no training row."""
        next(Lane(self, 0, 1, 0))

    def rows_per_epoch(self) -> int:
        raise UserError(f"{self.spec.source}: a streamed corpus takes a token budget (--tokens): its size in rows is not "
                        f"known without reading it whole")

    def _heldout_items(self):
        """The held-out documents in file order, read lazily (the first few are all a held-out set needs)."""
        for unit in self.units:
            for k, where, row in _rows_of(self.spec, unit, 0):
                item = _item(self.spec, unit, k, where, row)
                if self.is_heldout(item.id) and self.usable(item):
                    yield item

    def heldout_rows(self, max_tokens: int):
        """The first max_tokens // seq_len rows of held-out documents, in the corpus's file order."""
        import torch

        L, n = self.spec.seq_len, max(1, max_tokens // self.spec.seq_len)
        ids: list[int] = []
        labels: list[int] = []
        for item in self._heldout_items():
            a, b = self.encode(item)
            ids += a
            labels += b
            if len(ids) >= n * L:
                break
        rows = len(ids) // L
        if rows == 0:
            raise UserError(f"{self.spec.source}: its held-out documents (--heldout-fraction {self.spec.heldout_fraction:g}) "
                            f"hold fewer than {L} tokens; raise the fraction, lower --seq-len, or --eval-tokens 0")
        rows = min(rows, n)
        return torch.tensor(ids[: rows * L]).view(rows, L), torch.tensor(labels[: rows * L]).view(rows, L)


def save_state(batches, folder: Path, rank: int) -> None:
    """This process's lane positions into a checkpoint's resume folder (every process writes its own)."""
    state = batches.state() if hasattr(batches, "state") else {}
    if state:
        (folder / STATE_FILE.format(rank=rank)).write_text(json.dumps(state))


def load_state(folder: Path) -> dict:
    """Every lane position a checkpoint keeps (all processes' files): a resumed process takes those it reads."""
    out: dict = {}
    for p in sorted(folder.glob(STATE_FILE.format(rank="*"))):
        out.update(json.loads(p.read_text()))
    return out
