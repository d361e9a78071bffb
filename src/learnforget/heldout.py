"""Held-out scoring per unit: cross-entropy, KL drift from the base model and predictive entropy, per document.

A held-out set is rows of packed documents, each ended by EOS. A *unit* is one document's tokens
within one row (a document longer than a row is one unit per row), so every system is scored on the
same units and stats.py can pair them. Per unit we keep sums (loss, KL) and the token count.

KL(base || tuned) per token needs the base model's next-token distribution at every held-out
position. Storing it whole (positions x vocabulary) is 400 MB for 2,048 tokens of a 49k vocabulary,
so the base *reference* keeps its top-k log-probabilities and the log of the remaining mass; KL is
then computed over the k tokens plus one bucket for the rest. Grouping the rest into one bucket can
only lower KL (log-sum inequality), so this is a lower bound; `kl_topk_error` measures the gap.

The entropy of the model's next-token distribution at each position (nats) is how spread out what it
would sample there is: the continuous form of generation diversity, per document like the loss.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch

from .cpu import onednn
from .data.corpora import IGNORE
from .errors import UserError
from .loss import _fsdp, _plain_head

CHUNK = 1024  # positions whose full logits exist at once
TOP_K = 64


def units_of(input_ids: torch.Tensor, labels: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, int]:
    """Unit index of every scored position (row-major over labels[:, 1:] != IGNORE) and the unit count.
    The target token at position j belongs to the document holding token j; a new document starts after EOS."""
    starts = torch.zeros_like(input_ids, dtype=torch.long)
    starts[:, 1:] = (input_ids[:, :-1] == eos_id).long()
    starts[:, 0] = 1  # every row starts a unit
    unit = starts.flatten().cumsum(0).view_as(input_ids) - 1
    target_unit = unit[:, 1:][labels[:, 1:] != IGNORE]
    used, dense = torch.unique(target_unit, return_inverse=True)  # units without a scored token (IFT prompts) drop out
    return dense, len(used)


def rows_hash(input_ids: torch.Tensor, labels: torch.Tensor) -> str:
    """Identity of a held-out set, so a base reference is never applied to other rows."""
    h = hashlib.sha256(input_ids.numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def _logits_chunks(model, ids: torch.Tensor, labels: torch.Tensor):
    """Yield float32 logits (n, vocab) and targets (n,) of the scored positions of these rows, `CHUNK` at a time."""
    target = labels[:, 1:]
    keep = target != IGNORE
    head = _plain_head(model)
    if head is None:  # a head that is more than hidden @ W.T: take the model's logits whole
        logits = model(input_ids=ids).logits[:, :-1][keep].float()
        t = target[keep]
        for s in range(0, len(t), CHUNK):
            yield logits[s:s + CHUNK], t[s:s + CHUNK]
        return
    out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    hidden, t = out.hidden_states[-1][:, :-1][keep], target[keep]
    for s in range(0, len(t), CHUNK):
        yield head(hidden[s:s + CHUNK]).float(), t[s:s + CHUNK]


def _kl(logp: torch.Tensor, ref: dict, sl: slice) -> torch.Tensor:
    """Per position KL(ref || model) over the reference's top-k tokens plus one bucket for the rest."""
    r_idx, r_logp, r_rest = ref["idx"][sl].long(), ref["logp"][sl], ref["rest"][sl]
    m_logp = logp.gather(1, r_idx)
    m_rest = _log_rest(m_logp)
    kl = (r_logp.exp() * (r_logp - m_logp)).sum(1)
    return kl + r_rest.exp() * (r_rest - m_rest)


def _log_rest(top_logp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(top_logp))) per row, stable when the top-k hold almost all the mass."""
    return torch.log((-torch.expm1(torch.logsumexp(top_logp.double(), 1))).clamp_min(1e-30)).float()


def score(model, input_ids: torch.Tensor, labels: torch.Tensor, eos_id: int, batch_size: int = 8,
          reference: dict | None = None, top_k: int = 0) -> dict:
    """{"loss", "tokens", "entropy", "units": {"loss", "tokens", "entropy"(, "kl"): [per unit]}(, "kl")} for rows of a
    held-out set; with `reference` (a base model's, from the same rows) KL per unit too; with `top_k` the
    return also holds this model's own reference ("reference": {idx, logp, rest, hash}), for later runs."""
    # FSDP2 gathers weights into buffers it keeps for training: gathered under inference_mode they become inference
    # tensors, and the next training step fails ("Inplace update to inference tensor outside InferenceMode").
    with torch.no_grad() if _fsdp(model) else torch.inference_mode(), own_forward(model):
        return _score(model, input_ids, labels, eos_id, batch_size, reference, top_k)


@contextlib.contextmanager
def own_forward(model):
    """Inside: the model's own forward, not the bf16 autocast wrapper that Accelerate's prepare puts around it
    under mixed precision. Held-out scores are one fp32 instrument for every model of a study: the base model is
    scored unprepared, so a bf16 run scored through the wrapper (attention in bf16) was off by ~0.0008 nats/token
    of loss and 3% of KL on the demo, against its base and against the same run trained in fp32."""
    inner = getattr(model, "module", model)  # DDP: Accelerate wraps the module's forward before wrapping the module
    wrapped, original = inner.__dict__.get("forward"), inner.__dict__.get("_original_forward")
    if wrapped is None or original is None:
        yield
        return
    inner.forward = original
    try:
        yield
    finally:
        inner.forward = wrapped


def _score(model, input_ids, labels, eos_id, batch_size, reference, top_k) -> dict:
    if reference is not None and reference["hash"] != rows_hash(input_ids, labels):
        raise UserError("KL reference was made on other held-out rows (model, data or held-out size changed): delete it to rebuild")
    unit, n_units = units_of(input_ids, labels, eos_id)
    ce_pos, ent_pos, kl_pos, tops = [], [], [], []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pos = 0
    with onednn.linears(model):
        for i in range(0, len(input_ids), batch_size):
            for logits, t in _logits_chunks(model, input_ids[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)):
                logp = logits - torch.logsumexp(logits, 1, keepdim=True)
                ce_pos.append(-logp.gather(1, t[:, None]).squeeze(1).cpu())
                ent_pos.append(-(logp.exp() * logp).sum(1).cpu())
                sl = slice(pos, pos + len(t))
                if reference is not None:
                    kl_pos.append(_kl(logp, reference, sl).cpu())
                if top_k:
                    v, idx = logp.topk(top_k, dim=1)
                    tops.append((idx.int().cpu(), v.cpu(), _log_rest(v).cpu()))
                pos += len(t)
    model.train(was_training)
    cat = lambda xs: torch.cat(xs).double() if xs else torch.zeros(0, dtype=torch.double)  # noqa: E731 (no scored token: IFT prompts only)
    ce, ent = cat(ce_pos), cat(ent_pos)
    counts = torch.bincount(unit, minlength=n_units).double()
    per_unit = lambda x: torch.zeros(n_units, dtype=torch.double).index_add_(0, unit, x).tolist()  # noqa: E731
    out = {"loss": float(ce.sum() / max(len(ce), 1)), "tokens": len(ce), "entropy": float(ent.sum() / max(len(ent), 1)),
           "units": {"loss": per_unit(ce), "tokens": counts.long().tolist(), "entropy": per_unit(ent)}}
    if reference is not None:
        kl = cat(kl_pos).clamp_min(0.0)  # float rounding can give -1e-7 where the two agree
        out["kl"] = float(kl.sum() / max(len(kl), 1))
        out["units"]["kl"] = per_unit(kl)
    if top_k:
        k = min(top_k, getattr(model.config, "vocab_size", top_k))
        idx, v, rest = (torch.cat(x) for x in zip(*tops)) if tops else (torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k), torch.zeros(0))
        out["reference"] = {"idx": idx, "logp": v, "rest": rest, "hash": rows_hash(input_ids, labels)}
    return out


def save_reference(ref: dict, path: Path) -> None:
    """Write a reference atomically (a half-written one is never read: it is renamed into place last)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: ref[k].contiguous() for k in ("idx", "logp", "rest")}, str(tmp), metadata={"hash": ref["hash"]})
    tmp.replace(path)


def load_reference(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {**{k: f.get_tensor(k) for k in ("idx", "logp", "rest")}, "hash": f.metadata()["hash"]}
    except Exception as e:  # noqa: BLE001 - a damaged file: say which, never a library traceback
        raise UserError(f"{path}: not a readable KL reference ({type(e).__name__}: {e}); delete it to rebuild") from None
