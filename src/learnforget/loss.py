"""The training loss: next-token cross-entropy summed over supervised positions, chunked through the head.

Used by training (train.loop); held-out scoring (heldout.py) takes the same logits chunk by chunk, per document.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu import onednn
from .data.corpora import IGNORE

CHUNK = 1024  # positions whose logits exist at once in the chunked loss: 1024 x 49152 fp32 = 200 MB
# Config fields of heads that do more than `hidden @ W.T` (Gemma 2 softcapping, Cohere, Granite):
# such models take the plain path.
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def token_losses(model, input_ids: torch.Tensor, labels: torch.Tensor, chunk: int | None = CHUNK) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over positions whose label is not IGNORE, and their count.

    With `chunk` (the default) and a plain bias-free linear output head, the logits are never made
    whole: the model returns its last hidden states and `linear_cross_entropy` projects `chunk`
    supervised positions at a time. Same loss and gradients as the plain path (chunk=None) up to
    float rounding, without the [rows, seq, vocab] logits, their log-softmax and their gradient
    (3 x 400 MB for 4 x 512 tokens of a 49k vocabulary), and positions whose label is IGNORE (IFT
    prompts) cost no head FLOPs at all."""
    target = labels[:, 1:]
    keep = target != IGNORE
    head = _plain_head(model) if chunk else None
    if head is None:
        logits = model(input_ids=input_ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
        return loss, int(keep.sum())
    # logits_to_keep=1: the model's own head runs on one position per row (ignored); hidden_states[-1]
    # is the last hidden state after the final norm. Calling the model itself keeps DDP's hooks.
    out = model(input_ids=input_ids, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1][:, :-1][keep]
    # Without gradients the head module computes the logits, so evaluation's oneDNN packing applies to it.
    project = None if torch.is_grad_enabled() else head
    return linear_cross_entropy(hidden, head.weight, target[keep], chunk, project), int(keep.sum())


def _plain_head(model) -> torch.nn.Linear | None:
    """The output head if it is a bias-free nn.Linear applied as is (the chunked loss's assumption), else None."""
    inner = getattr(model, "module", model)  # DDP wrapper
    if _fsdp(inner):
        # FSDP2: outside a module's own forward its weight is a shard (DTensor) or a gathered copy FSDP frees at
        # will; the chunked loss reads head.weight itself, so the head runs as a module (plain path), gathered by FSDP.
        return None
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None  # e.g. a LoRA-wrapped or biased head
    config = getattr(inner, "config", None)
    if any(getattr(config, k, None) not in (None, 1, 1.0) for k in _HEAD_EXTRAS):
        return None
    return head


def _fsdp(model) -> bool:
    """The model is sharded by FSDP2 (fully_shard makes the root an FSDPModule)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int = CHUNK,
                         project: torch.nn.Module | None = None) -> torch.Tensor:
    """sum_i CE(hidden_i @ weight.T, target_i) for hidden [n, d], weight [vocab, d], target [n] (no IGNORE).
    `project`, if given, computes hidden @ weight.T instead (the head module; only where no gradient is needed)."""
    return _LinearCrossEntropy.apply(hidden, weight, target, chunk, project)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked linear + cross-entropy whose forward also computes the gradients, chunk by chunk.

    Per chunk: logits, their log-sum-exp and the loss; then, if gradients are needed, softmax − one-hot
    (in place, in the logits' memory) times the weight for d hidden, and its transpose times the
    hidden states for d weight (skipped for a frozen head, as in LoRA). Backward only scales these by
    the incoming gradient, so the FLOPs are the plain loss's (no recomputation) and at most one chunk
    of logits is alive. Valid because the loss is a scalar whose gradient is a scalar multiple.
    """

    @staticmethod
    def forward(ctx, hidden, weight, target, chunk, project):
        need_h, need_w = ctx.needs_input_grad[:2]
        # Under autocast (bf16 mixed precision) the three matmuls run in its dtype, as nn.Linear's would;
        # the softmax, the loss and the weight gradient's sum stay float32. The weight is cast once, not per chunk.
        device = hidden.device.type
        dt = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):
            w = weight.detach().to(dt)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight) if need_w else None
            rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
            for s in range(0, hidden.shape[0], chunk):
                h, t = hidden[s:s + chunk].to(dt), target[s:s + chunk]
                logits = (project(h) if project is not None else onednn.mm_t(h, w)).float()
                # softmax in place in the logits' memory (one buffer per chunk, no log-softmax copy):
                # p = exp(z - max) / sum, loss = log(sum) + max - z_target
                top = logits.amax(dim=-1, keepdim=True)
                picked = logits.gather(1, t[:, None]).squeeze(1)
                total = logits.sub_(top).exp_().sum(dim=-1)
                loss += (total.log() + top.squeeze(1) - picked).sum()
                if need_h or need_w:
                    g = logits.div_(total[:, None])  # softmax
                    g[rows[:len(t)], t] -= 1.0
                    g = g.to(dt)
                    if need_h:
                        grad_h[s:s + chunk] = onednn.mm_t(g, w.t())
                    if need_w:
                        if dt == weight.dtype:
                            grad_w.addmm_(g.t(), h)
                        else:  # a low-precision product, summed in float32
                            grad_w += g.t() @ h
        ctx.grads = (grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.grads
        ctx.grads = (None, None)  # freed now; a second backward through this graph is not supported
        return (grad_h.mul_(grad_loss) if grad_h is not None else None,
                grad_w.mul_(grad_loss) if grad_w is not None else None, None, None, None)
