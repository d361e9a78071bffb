"""Held-out loss: the cheap, continuous learning (target text) and forgetting (general text) signal."""

from __future__ import annotations

import math

import torch

from ..cpu import onednn
from ..loss import token_losses


@torch.inference_mode()
def mean_loss(model, input_ids: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 8) -> dict:
    """Mean per-token loss (nats) and perplexity over rows of input_ids; labels default to input_ids."""
    labels = input_ids if labels is None else labels
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with onednn.linears(model):
        for i in range(0, len(input_ids), batch_size):
            s, n = token_losses(model, input_ids[i:i + batch_size].to(device), labels[i:i + batch_size].to(device))
            total += float(s)
            count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}
