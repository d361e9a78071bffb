"""Held-out scoring during training: the sets a run scores, per document, with KL drift from the base.

At step 0 (the base model, unless a study scores it once for all its runs) each set's top-k next-token
distribution is kept as the KL reference; every checkpoint is then scored for cross-entropy and
KL(base || checkpoint) per held-out document (heldout.py), one metrics row per checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from .. import heldout
from ..config import RunConfig
from ..data import sources
from ..data.corpora import Corpus, heldout_set
from ..data.stream import open_corpus
from ..errors import UserError
from .record import log


def heldout_sets(cfg: RunConfig, tok, corpus: Corpus | None = None) -> dict:
    """The held-out sets a run scores at each checkpoint: its target split ("target") and each extra_eval source."""
    t = cfg.train
    if not t.eval_tokens:
        return {}
    corpus = corpus or open_corpus(cfg.data, tok)
    d = cfg.data
    if d.heldout_docs:  # documents drawn at random; "select" apart when the study chooses learning rates on it
        if getattr(corpus, "streaming", False):
            raise UserError(f"{d.source}: data.heldout_docs draws held-out documents from a corpus read whole; not with streaming")
        sets = corpus.heldout_sample(t.eval_tokens)
    else:
        sets = {"target": corpus.heldout_rows(t.eval_tokens)}
    drawn = {"heldout_docs": d.heldout_docs, "heldout_seed": d.heldout_seed} if d.heldout_docs else {}
    for name in t.extra_eval:
        sets[name] = heldout_set(name, tok, d.seq_len, t.eval_tokens, regime=sources.regime_of(name), **drawn)
    return sets


def reference_dir(cfg: RunConfig) -> Path:
    """Where the base model's KL references live: the study's shared folder, or the run's own."""
    return Path(cfg.train.kl_reference) if cfg.train.kl_reference else Path(cfg.out) / "reference"


def load_references(folder: Path, names) -> dict:
    return {n: heldout.load_reference(p) for n in names if (p := folder / f"{n}.safetensors").exists()}


def score_sets(model, sets: dict, eos_id: int, batch: int, references: dict, keep_reference_in: Path | None = None) -> dict:
    """{set: held-out result} for every set; KL against `references` where one exists. With `keep_reference_in`
    (the base model), each missing reference is made from this model and saved there (and added to `references`)."""
    out = {}
    for name, (ids, labels) in sets.items():
        make = keep_reference_in is not None and name not in references
        res = heldout.score(model, ids, labels, eos_id, batch, reference=references.get(name), top_k=heldout.TOP_K if make else 0)
        if make:
            references[name] = res.pop("reference")
            heldout.save_reference(references[name], keep_reference_in / f"{name}.safetensors")
        out[name] = res
    return out


def score(model, run, step: int, tokens: int, label: float) -> None:
    """Score every held-out set as one metrics row (and TensorBoard scalars); step 0 keeps the KL references.
    Under FSDP every process calls this (the forward passes need them all); only the main one writes."""
    sets = run.heldout
    if 0 < step < run.plan["total_steps"]:  # the selection documents are read at the final checkpoint only
        sets = {k: v for k, v in sets.items() if k != "select"}
    ev = score_sets(model, sets, run.tok.eos_token_id, run.cfg.train.eval_batch, run.references,
                    reference_dir(run.cfg) if step == 0 and run.main else None)
    if not run.main:
        return
    for name, res in ev.items():
        if run.writer:
            run.writer.add_scalar(f"heldout/{name}_loss", res["loss"], tokens)
            if "kl" in res:
                run.writer.add_scalar(f"heldout/{name}_kl", res["kl"], tokens)
    log(run.metrics, {"step": step, "tokens": tokens, "budget": label, "eval": ev})
    print("[learnforget] held-out at %s tokens: %s" % (f"{tokens:,}", ", ".join(
        f"{k} loss {v['loss']:.4f}" + (f" KL {v['kl']:.5f}" if "kl" in v else "") for k, v in ev.items())), flush=True)
