"""From a corpus to fixed-length training sequences: tokenize, mask, pack, split, shuffle.

Both regimes end as a stream of (input_ids, labels) rows of exactly `seq_len` tokens, so the training
loop has one path and no padding waste:
  CPT  documents + EOS, concatenated and cut into rows; labels = input_ids (loss on every token).
  IFT  prompt/response rendered with the model's chat template (a plain template if it has none),
       concatenated and cut into rows; labels are -100 on prompt tokens (loss on the response only).
The held-out split is by document id (see sources.heldout), never by row, so held-out loss is
measured on text the model has never seen. Train order is a seeded shuffle of documents, redone
each epoch with seed + epoch, so row k of the stream is a pure function of (corpus, seed, k):
that is what makes resume and multi-process sharding exact.
"""

from __future__ import annotations

import random
from typing import Iterator

import torch

from ..config import DataSpec
from ..errors import UserError
from . import sources

IGNORE = -100
PLAIN_TEMPLATE = "Question:\n{prompt}\n\nAnswer:\n"  # used when the tokenizer has no chat template
EVAL_ONLY = {"gsm8k-test", "general-text"}  # sets that are never trained on: all of it is held out


def check_tokenizer(tokenizer) -> None:
    """Packing needs an EOS token between documents (both corpus paths check it before reading anything)."""
    if tokenizer.eos_token_id is None:
        raise UserError("tokenizer has no EOS token: cannot separate packed documents")


class Corpus:
    """A corpus split into train and held-out items, able to stream packed rows."""

    streaming = False

    def __init__(self, spec: DataSpec, tokenizer, own_fraction: bool = True):
        # own_fraction: the held-out fraction is the user's --heldout-fraction (not an extra eval set's fixed one)
        self.spec, self.tok, self.own_fraction = spec, tokenizer, own_fraction
        check_tokenizer(tokenizer)
        if spec.regime == "cpt":
            items = sources.load_docs(spec.source, spec.text_field)
        else:
            items = sources.load_records(spec.source, spec.prompt_field, spec.response_field)
        fraction = 1.0 if spec.source in EVAL_ONLY else spec.heldout_fraction
        self.train = [x for x in items if not sources.heldout(x.id, fraction)]
        self.heldout = [x for x in items if sources.heldout(x.id, fraction)]
        if fraction > 0 and not self.heldout and len(self.train) > 1:
            # a small corpus can hash no document below the fraction: hold out the lowest-hashing one
            first = min(self.train, key=lambda x: sources.id_hash(x.id))
            self.train.remove(first)
            self.heldout.append(first)
        if spec.chunk_chars and spec.regime == "cpt":  # after the split: a held-out document stays whole and unseen
            self.train = [p for d in self.train for p in pieces(d, spec.chunk_chars)]

    # -- tokenization ------------------------------------------------------------------------
    def encode(self, item) -> tuple[list[int], list[int]]:
        return encode_item(self.spec, self.tok, item)

    def _rows(self, items) -> Iterator[tuple[list[int], list[int]]]:
        """Concatenate encoded items and cut into seq_len rows; the last partial row is dropped."""
        L = self.spec.seq_len
        buf_ids: list[int] = []
        buf_lab: list[int] = []
        for item in items:
            ids, labels = self.encode(item)
            buf_ids += ids
            buf_lab += labels
            while len(buf_ids) >= L:
                yield buf_ids[:L], buf_lab[:L]
                del buf_ids[:L], buf_lab[:L]

    # -- streams ---------------------------------------------------------------------------
    def train_rows(self, seed: int, start: int = 0) -> Iterator[tuple[list[int], list[int]]]:
        """Endless stream of training rows from row `start` on; epoch e uses order shuffled by seed + e."""
        if not self.train:
            raise UserError(f"{self.spec.source}: no training documents left after the held-out split")
        k, epoch = 0, 0
        while True:
            order = list(self.train)
            random.Random(seed + epoch).shuffle(order)
            produced = False
            for row in self._rows(order):
                produced = True
                if k >= start:
                    yield row
                k += 1
            if not produced:
                raise UserError(f"{self.spec.source}: the whole training split is shorter than one sequence of {self.spec.seq_len} tokens")
            epoch += 1

    def batches(self, seed: int, rows_per_step: int, world: int, rank: int, start_step: int = 0, state: dict | None = None):
        """This process's rows of each global batch of `rows_per_step` rows, from step `start_step` on (`state`: the
        streamed corpus's resume position; here row k is a function of k, so there is none)."""
        stream = self.train_rows(seed, start=start_step * rows_per_step)
        mine = slice(rank * rows_per_step // world, (rank + 1) * rows_per_step // world)
        while True:
            yield [next(stream) for _ in range(rows_per_step)][mine]

    def describe(self) -> str:
        what = "pieces" if self.spec.chunk_chars and self.spec.regime == "cpt" else "documents"
        return f"{len(self.train)} train {what} / {len(self.heldout)} held-out documents"

    def documents(self, seed: int, rows: int) -> int:
        """How many distinct documents (a piece counts as its document) the first `rows` training rows draw tokens from."""
        L, need, seen, epoch = self.spec.seq_len, rows * self.spec.seq_len, set(), 0
        while need > 0 and self.train:
            order = list(self.train)
            random.Random(seed + epoch).shuffle(order)
            for item in order:
                seen.add(item.id.split(PIECE)[0])
                need -= len(self.encode(item)[0])
                if need <= 0:
                    break
            epoch += 1
            if epoch > rows * L:  # a corpus of empty documents: train_rows raises on it
                break
        return len(seen)

    def check_train(self) -> None:
        """Raise now what train_rows would raise at the first step: no training document, or too little text."""
        src = self.spec.source
        if not self.train:
            if self.heldout and len(self.heldout) == 1:
                raise UserError(f"{src}: its only document fell in the held-out split; give several documents, or "
                                f"--heldout-fraction 0 --eval-tokens 0 to train on it without held-out loss")
            raise UserError(f"{src}: no training documents left after the held-out split; lower --heldout-fraction")
        if next(self._rows(self.train), None) is None:
            raise UserError(f"{src}: the whole training split ({len(self.train)} document{'s' * (len(self.train) > 1)}) is "
                            f"shorter than one sequence of {self.spec.seq_len} tokens; lower --seq-len or add text")

    def _one_document(self) -> UserError:
        alternative = " or --eval-tokens 0 to train without held-out loss" if self.own_fraction else ""
        return UserError(f"{self.spec.source}: a single document cannot be split into training and held-out text; "
                         f"give several documents (files, JSONL lines){alternative}")

    def _short_heldout(self) -> UserError:
        """The error for a held-out split without one full sequence, with the advice that fits the corpus."""
        src, L, f = self.spec.source, self.spec.seq_len, self.spec.heldout_fraction
        n, k = len(self.train) + len(self.heldout), len(self.heldout)
        if n == 1:
            return self._one_document()
        if not self.heldout:
            return UserError(f"{src}: --heldout-fraction {f:g} holds out no document; set it above 0, "
                             f"or --eval-tokens 0 to train without held-out loss")
        total = 0
        for item in self.heldout + self.train:  # counted only as far as the advice needs
            total += len(self.encode(item)[0])
            if total >= 2 * L:
                break
        if k == n or total < 2 * L:
            return UserError(f"{src}: the whole {'set' if k == n else 'corpus'} has {total} tokens, too few for "
                             f"{'one sequence' if k == n else 'a training and a held-out sequence'} of {L} tokens; "
                             f"lower --seq-len or add text")
        advice = f"raise --heldout-fraction (now {f:g})" if self.own_fraction else f"add text (its held-out fraction is fixed at {f:g})"
        return UserError(f"{src}: the held-out split ({k} of {n} documents) is shorter than one sequence of {L} tokens; "
                         f"{advice} or lower --seq-len")

    def rows_per_epoch(self) -> int:
        return sum(1 for _ in self._rows(self.train))

    def heldout_rows(self, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first max_tokens // seq_len held-out rows in a fixed order: same rows for every checkpoint."""
        n = max(1, max_tokens // self.spec.seq_len)
        rows = []
        for row in self._rows(sorted(self.heldout, key=lambda x: x.id)):
            rows.append(row)
            if len(rows) == n:
                break
        if not rows:
            raise self._short_heldout()
        ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])
        return ids, labels


    def heldout_sample(self, max_tokens: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Held-out sets of documents drawn at random (data.heldout_docs, seed data.heldout_seed): {"target": ...} and,
        with data.heldout_selection, {"select": ...}, the selection documents apart. Each document gives one window of
        w tokens at a seeded offset, after an EOS (so every window is scored from the same kind of context and
        is one unit, heldout.units_of); w is the largest divisor of seq_len not above max_tokens / heldout_docs, and
        windows are packed seq_len / w to a row. Documents shorter than a window are not drawn."""
        spec = self.spec
        n, L = spec.heldout_docs, spec.seq_len
        w = max(d for d in range(2, L + 1) if L % d == 0 and d <= max(2, max_tokens // n))
        order = sorted(self.heldout, key=lambda x: x.id)
        rng = random.Random(spec.heldout_seed)
        rng.shuffle(order)
        windows = []
        for item in order:
            ids, labels = self.encode(item)
            ids, labels = ids[:-1] if spec.regime == "cpt" else ids, labels[:-1] if spec.regime == "cpt" else labels  # no closing EOS
            if sum(x != IGNORE for x in labels) < w - 1:
                continue
            start = rng.randrange(0, len(ids) - (w - 1) + 1)
            windows.append(([self.tok.eos_token_id] + ids[start:start + w - 1], [IGNORE] + labels[start:start + w - 1]))
            if len(windows) == n:
                break
        if len(windows) < n:
            raise UserError(f"{spec.source}: data.heldout_docs {n}: only {len(windows)} held-out documents have {w - 1} tokens or "
                            f"more ({len(self.heldout)} held out at heldout_fraction {spec.heldout_fraction:g}); raise the fraction "
                            f"or lower heldout_docs")
        k = round(n * spec.heldout_selection)
        parts = {"target": windows[k:], **({"select": windows[:k]} if k else {})}
        return {name: _pack(ws, w, L, self.tok.eos_token_id) for name, ws in parts.items()}


PIECE = "#"  # a piece's id is its document's id, PIECE, and its index


def pieces(doc, chars: int) -> list:
    """A document cut at line ends into pieces of at least `chars` characters (the last may be shorter)."""
    out, buf, size = [], [], 0
    for line in doc.text.splitlines(keepends=True):
        buf.append(line)
        size += len(line)
        if size >= chars:
            out.append("".join(buf))
            buf, size = [], 0
    if buf:
        out.append("".join(buf))
    return [sources.Doc(f"{doc.id}{PIECE}{i}", t) for i, t in enumerate(out) if t.strip()]


def _pack(windows: list, w: int, L: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of w tokens, L // w to a row; the last row filled with EOS that is never scored."""
    per = L // w
    ids, labels = [], []
    for i in range(0, len(windows), per):
        chunk = windows[i:i + per]
        row_ids = [t for a, _ in chunk for t in a] + [eos] * (w * (per - len(chunk)))
        row_labels = [t for _, b in chunk for t in b] + [IGNORE] * (w * (per - len(chunk)))
        ids.append(row_ids)
        labels.append(row_labels)
    return torch.tensor(ids), torch.tensor(labels)


def corpus_hash(spec: DataSpec) -> str:
    """Content hash of a corpus (every document's id and text, in id order): two machines with the same hash
    trained and scored on the same text (the embedded python-code corpus is the running Python's standard library)."""
    import hashlib

    items = sources.load_docs(spec.source, spec.text_field) if spec.regime == "cpt" else \
        sources.load_records(spec.source, spec.prompt_field, spec.response_field)
    h = hashlib.sha256()
    for x in sorted(items, key=lambda x: x.id):
        for part in (x.id, *((x.text,) if spec.regime == "cpt" else (x.prompt, x.response))):
            h.update(part.encode("utf-8", "replace"))
            h.update(b"\0")
    return h.hexdigest()[:16]


def encode_item(spec: DataSpec, tok, item) -> tuple[list[int], list[int]]:
    """Tokens and labels of one document (CPT: every token, then EOS) or prompt/response record (IFT)."""
    if spec.regime == "cpt":
        ids = tok(item.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return ids, ids
    return encode_pair(tok, item.prompt, item.response)


def encode_pair(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Tokens of one prompt/response pair and labels that are IGNORE on the prompt."""
    if tok.chat_template:
        user = [{"role": "user", "content": prompt}]
        p_text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full_text = tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        p_ids = tok(p_text, add_special_tokens=False)["input_ids"]
        full = tok(full_text, add_special_tokens=False)["input_ids"]
        if full[: len(p_ids)] != p_ids:  # a template that re-tokenizes across the boundary: keep the split exact
            full = p_ids + tok(full_text[len(p_text):], add_special_tokens=False)["input_ids"]
        r_ids = full[len(p_ids):]
        if tok.eos_token_id not in r_ids[-3:]:  # templates end a turn with EOS (+ newline); make sure
            r_ids = r_ids + [tok.eos_token_id]
    else:
        p_ids = tok(PLAIN_TEMPLATE.format(prompt=prompt), add_special_tokens=False)["input_ids"]
        r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids


def heldout_set(source: str, tokenizer, seq_len: int, max_tokens: int, regime: str | None = None,
                heldout_fraction: float = 0.05, **fields) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of held-out rows of a corpus: the target/general-text loss signal (with `heldout_docs`
    in fields: documents drawn at random, Corpus.heldout_sample, no selection part)."""
    regime = regime or sources.regime_of(source) or "cpt"
    corpus = Corpus(DataSpec(source, regime, seq_len, heldout_fraction, **fields), tokenizer, own_fraction=False)
    if corpus.spec.heldout_docs:
        return corpus.heldout_sample(max_tokens)["target"]
    return corpus.heldout_rows(max_tokens)
