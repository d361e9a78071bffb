"""Held-out loss during training: the sets a run scores, and scoring them into metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..data import sources
from ..data.corpora import Corpus, heldout_set
from ..evaluate.perplexity import mean_loss
from .record import log


def heldout_sets(cfg: RunConfig, tok, corpus: Corpus | None = None) -> dict:
    """The held-out sets a run scores at each checkpoint: its target split ("target") and each extra_eval source."""
    t = cfg.train
    if not t.eval_tokens:
        return {}
    corpus = corpus or Corpus(cfg.data, tok)
    sets = {"target": corpus.heldout_rows(t.eval_tokens)}
    for name in t.extra_eval:
        sets[name] = heldout_set(name, tok, cfg.data.seq_len, t.eval_tokens, regime=sources.regime_of(name))
    return sets


def score(model, heldout: dict, batch: int, step: int, tokens: int, label: float, path: Path, writer) -> None:
    """Mean loss on every held-out set, as one metrics row (and TensorBoard scalars)."""
    row = {"step": step, "tokens": tokens, "budget": label, "eval": {}}
    for name, (ids, labels) in heldout.items():
        row["eval"][name] = mean_loss(model, ids, labels, batch_size=batch)
        if writer:
            writer.add_scalar(f"heldout/{name}_loss", row["eval"][name]["loss"], tokens)
    log(path, row)
    print("[learnforget] held-out loss at %s tokens: %s" % (f"{tokens:,}", ", ".join(f"{k} {v['loss']:.4f}" for k, v in row["eval"].items())), flush=True)
