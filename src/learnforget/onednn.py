"""Evaluation's linear layers through oneDNN with pre-packed weights, on CPU in float32.

Why: PyTorch sends a float32 `F.linear` on x86 to MKL's sgemm. On the AMD EPYC (Zen 4) this project
is measured on, oneDNN's matmul with a weight reordered once into its blocked layout is faster at
every shape evaluation runs (`benchmarks/speed.py` prints both): 2 threads, 3200 x 576 inputs
against SmolLM2's weights, 126-151 GFLOP/s with MKL vs 178-197 with packed oneDNN; the 49k-vocabulary
head at decode batch 8 (8 x 576 x 49152), 27 vs 80. The sums are ordered differently, so outputs
differ from MKL's by float rounding only (~1e-4 absolute on values of order 10).

Only for inference: the packed copy is a snapshot of the weights (changes to them inside the
context are not seen), and the oneDNN op has no autograd, so a call that needs gradients takes
the plain path. Costs one packed copy of every linear weight while the context is open.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def available(model: torch.nn.Module) -> bool:
    """oneDNN packing applies: a float32 model on CPU and a PyTorch built with oneDNN."""
    p = next(model.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _packed_forward(module: torch.nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or (torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad)):
            return F.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")
    return forward


@contextlib.contextmanager
def linears(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside: every plain `nn.Linear` of `model` (LoRA's base layers included) computes with a
    oneDNN-packed copy of its weight. Restored on exit. A no-op where `available` is False."""
    if not (enabled and available(model)):
        yield
        return
    patched = []
    try:
        for m in model.modules():
            if type(m) is torch.nn.Linear and "forward" not in vars(m):
                with torch.no_grad():
                    packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None)
                m.forward = _packed_forward(m, packed)
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
