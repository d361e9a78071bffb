"""Linear layers through oneDNN on CPU in float32: pre-packed weights for evaluation, plain ones for training.

Why: PyTorch sends a float32 `F.linear` on x86 to MKL's sgemm. On the AMD EPYC (Zen 4) this was first
measured on, oneDNN's matmul with a weight reordered once into its blocked layout is faster at
every shape evaluation runs (`benchmarks/speed.py` prints both): 2 threads, 3200 x 576 inputs
against SmolLM2's weights, 126-151 GFLOP/s with MKL vs 178-197 with packed oneDNN; the 49k-vocabulary
head at decode batch 8 (8 x 576 x 49152), 27 vs 80. The sums are ordered differently, so outputs
differ from MKL's by float rounding only (~1e-4 absolute on values of order 10).

Evaluation (`linears(model)`): the packed copy is a snapshot of the weights (changes inside the
context are not seen), so it is for inference only, and costs one packed copy of every linear weight
while open; a call that needs gradients takes the plain path.
Training (`linears(model, training=True)`): no packing (the weights change every step). The forward,
the input gradient and the weight gradient run through oneDNN on the weight as it is (AMD EPYC with
AVX512-BF16, 2026-12-03, 2 threads, 2048 tokens against SmolLM2's shapes: forward 420-440 vs MKL's
170-190 GFLOP/s, weight gradient 300-310 vs 110-190). Under autocast (bf16 mixed precision) the
trainable linears take autocast's own bf16 path; frozen weights (LoRA's base layers) are cast to bf16
once per context, which autocast does not do for weights without gradients.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F


def enabled() -> bool:
    """LEARNFORGET_ONEDNN=0 turns it off (e.g. on a CPU where MKL is the faster one); on by default."""
    return os.environ.get("LEARNFORGET_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available()


def available(model: torch.nn.Module) -> bool:
    """oneDNN applies: a float32 model on CPU and a PyTorch built with oneDNN, not turned off."""
    p = next(model.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype == torch.float32
            and enabled() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _sharded(model: torch.nn.Module) -> bool:
    """FSDP2 holds each weight as a shard (DTensor) between forwards: there is no whole weight to pack. (Training
    reads module.weight inside the forward, where FSDP has gathered it into a plain tensor, so that path applies.)"""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _lp(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN; weight [out, in] packed or plain (a transposed view works too)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and enabled())


def mm_t(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T (2-D), by oneDNN where it applies; no autograd (for code inside an autograd.Function)."""
    return _lp(x, weight) if _applies(x, weight) else x @ weight.T


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` with oneDNN's forward and input gradient for float32 CPU tensors (else F.linear itself,
    e.g. under autocast, whose casts a custom autograd function would skip)."""
    if not _applies(x, weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return _lp(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = _lp(g, weight.t()) if need_x else None
        g2 = g.reshape(-1, g.shape[-1])
        gw = _lp(g2.t(), x.reshape(-1, x.shape[-1]).t()) if need_w else None  # g.T @ x
        gb = g2.sum(0) if (ctx.has_bias and need_b) else None
        return gx, gw, gb


def _training_forward(module: torch.nn.Linear, casts: dict):
    def forward(x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and not module.weight.requires_grad:
            # A frozen weight (LoRA's base layers) under autocast: cast once per context, not per call;
            # autocast caches only weights that need gradients. The same rounding as autocast's own cast.
            dt = torch.get_autocast_dtype(device)
            if module not in casts:
                casts[module] = (module.weight.detach().to(dt), None if module.bias is None else module.bias.detach().to(dt))
            w, b = casts[module]
            with torch.autocast(device, enabled=False):
                return F.linear(x.to(dt), w, b)
        return linear(x, module.weight, module.bias)
    return forward


def _packed_forward(module: torch.nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad)):
            return F.linear(x, module.weight, module.bias)
        return _lp(x, packed, module.bias)
    return forward


@contextlib.contextmanager
def linears(model: torch.nn.Module, training: bool = False) -> Iterator[None]:
    """Inside: every plain `nn.Linear` of `model` (LoRA's base layers included) computes through oneDNN,
    with a packed copy of its weight (evaluation) or with gradients (training=True). Restored on exit.
    A no-op where `available` is False; modules already patched by an outer context keep its mode."""
    if not available(model) or (not training and _sharded(model)):
        yield
        return
    patched, casts = [], {}
    try:
        for m in model.modules():
            if type(m) is torch.nn.Linear and "forward" not in vars(m):
                if training:
                    m.forward = _training_forward(m, casts)
                else:
                    with torch.no_grad():
                        packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None)
                    m.forward = _packed_forward(m, packed)
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
