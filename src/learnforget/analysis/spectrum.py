"""Spectra of weight updates: how many directions does fine-tuning change?

The paper (arXiv 2405.09673, Sec. on spectra) explains "LoRA learns less" by the rank of full
fine-tuning's update: ΔW = W_tuned − W_base needs a rank 10–100× the usual LoRA ranks to explain
90% of its variance, where "variance" is the squared singular values (Σσ²). This module computes
that statistic for every linear weight of the transformer blocks, for:
  - ΔW itself,
  - the base weight W (the same statistic, for scale),
  - a Gaussian matrix of ΔW's shape (what "no structure at all" looks like; rank@90% is scale-free).

Speed: singular values are computed on the tall orientation (a wide matrix is transposed; the
singular values are the same, and LAPACK is ~2× faster tall), batched over same-shape matrices
(all q_proj of all layers in one call). `method="gram"` takes eigenvalues of the smaller Gram
matrix instead: another ~2× faster, exact enough for rank@90% (it works on σ² anyway) but singular
values below ~1e-3·σ_max are noise, so prefer the default for plots of the tail. The Gram matrix
comes from numpy's `x.T @ x`, which runs BLAS syrk (one triangle): half the flops of a matmul.
Measured on smollm2-135m, ΔW of all 210 block matrices, 1 thread, machine shared with other jobs:
svd 13.6 s CPU, gram 5.5 s CPU.
"""

from __future__ import annotations

import re
import statistics
from typing import Iterable

import torch
from torch import nn


# A delta: (W_base, ΔW), both 2-D float32, same shape (out_features, in_features).
Delta = tuple[torch.Tensor, torch.Tensor]

# Matches the block-relative part of a module name, e.g. "model.layers.3.self_attn.q_proj"
# -> "layers.3.self_attn.q_proj"; "layers" (Llama, Gemma, Qwen), "h" (GPT-2), "blocks".
_BLOCK = re.compile(r"(?:^|\.)((?:layers|h|blocks)\.(\d+)\..+)$")
TYPE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")


# ---------------------------------------------------------------- names

def block_name(module_name: str) -> str | None:
    """'base_model.model.model.layers.3.mlp.up_proj' -> 'layers.3.mlp.up_proj'; None outside blocks."""
    m = _BLOCK.search(module_name)
    return m.group(1) if m else None


def layer_index(name: str) -> int:
    m = _BLOCK.search(name)
    if not m:
        raise ValueError(f"{name}: not inside a transformer block")
    return int(m.group(2))


def module_type(name: str) -> str:
    """'layers.3.self_attn.q_proj' -> 'q'; 'layers.3.mlp.gate_proj' -> 'gate'; else the last name part."""
    last = name.rsplit(".", 1)[-1]
    return last[: -len("_proj")] if last.endswith("_proj") else last


def type_sort_key(t: str) -> tuple[int, str]:
    # Paper order first (q, k, v, o, gate, up, down), any other architecture's names after.
    return (TYPE_ORDER.index(t), "") if t in TYPE_ORDER else (len(TYPE_ORDER), t)


# ---------------------------------------------------------------- deltas

def block_linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of every nn.Linear inside the transformer blocks, by block-relative name.

    Works on a plain model and on one that PEFT has wrapped (in place or not): a LoRA layer's
    original weight sits in its `.base_layer`, and the adapters' own lora_A/lora_B are skipped.
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".lora_" in name:
            continue
        name = name.removesuffix(".base_layer")
        short = block_name(name)
        if short is not None:
            out[short] = module.weight.detach()
    return out


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        short = block_name(name)
        if short is not None and isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), nn.Linear):
            out[short] = module
    return out


def lora_delta(layer: nn.Module) -> torch.Tensor | None:
    """ΔW of one LoRA layer summed over its active adapters, by PEFT's own merge arithmetic.

    Plain LoRA: `get_delta_weight` (= scaling·B·A, in the base weight's layout). A variant such as
    DoRA also rescales columns, so its ΔW is its merged weight minus the base weight.
    """
    if layer.merged:
        raise ValueError("the adapter is merged into the base weights: load it unmerged to analyse it")
    base_w = layer.get_base_layer().weight.detach().float()
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue  # this adapter does not touch this module
        with torch.no_grad():
            if name in layer.lora_variant:
                d = layer.lora_variant[name].merge_safe(layer, name, base_w.clone()).float() - base_w
            else:
                d = layer.get_delta_weight(name).float()
        delta = d if delta is None else delta + d
    return delta


def lora_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(B', A) with ΔW = B' @ A for every plain LoRA layer of the blocks (scaling folded into B', several
    active adapters side by side), by name: what lets `spectrum` take ΔW's singular values from an r x r
    matrix instead of the m x n one. Layers with a variant (DoRA rescales columns) or a transposed base
    weight (fan_in_fan_out) are left out: their ΔW is taken dense."""
    out = {}
    for name, layer in _lora_layers(model).items():
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        if layer.merged or layer.fan_in_fan_out or not active or any(a in layer.lora_variant for a in active):
            continue
        with torch.no_grad():
            B = torch.cat([layer.lora_B[a].weight.float() * layer.scaling[a] for a in active], 1)
            A = torch.cat([layer.lora_A[a].weight.float() for a in active], 0)
        out[name] = (B, A)
    return out


def weight_deltas(base_model: nn.Module, tuned: nn.Module) -> dict[str, Delta]:
    """(W_base, ΔW) for every linear weight of the transformer blocks, by name ('layers.3.self_attn.q_proj').

    `tuned` is a full model (ΔW = W_tuned − W_base) or a model carrying LoRA layers, such as a
    PeftModel (ΔW = the LoRA update of the active adapters; modules LoRA does not adapt are left
    out). Tensors are float32; W_base may alias the model's weight, so do not modify it in place.
    """
    base = block_linear_weights(base_model)
    if not base:
        raise ValueError("no linear layers found inside transformer blocks (expected names like 'layers.0.…')")
    out: dict[str, Delta] = {}
    lora_layers = _lora_layers(tuned)  # any model with LoRA layers, a PeftModel or not
    if lora_layers:
        for name, layer in lora_layers.items():
            delta = lora_delta(layer)
            if delta is not None:
                out[name] = (_check_shape(name, base, delta), delta)
        if not out:
            raise ValueError("the model has LoRA layers but no active adapter on a linear layer of the blocks")
        return out
    tuned_w = block_linear_weights(tuned)
    if tuned_w.keys() != base.keys():
        raise ValueError("base and tuned models have different linear layers: are they the same architecture?")
    for name, w in tuned_w.items():
        out[name] = (_check_shape(name, base, w), w.float() - base[name].float())
    return out


def _check_shape(name: str, base: dict[str, torch.Tensor], other: torch.Tensor) -> torch.Tensor:
    if name not in base:
        raise ValueError(f"{name}: in the tuned model but not in the base model")
    if base[name].shape != other.shape:
        raise ValueError(f"{name}: base shape {tuple(base[name].shape)} != tuned shape {tuple(other.shape)}")
    return base[name].float()


# ---------------------------------------------------------------- singular values

def tall(m: torch.Tensor) -> torch.Tensor:
    """The tall orientation (rows ≥ columns) of a matrix or a batch; contiguous, because LAPACK
    on a transposed view is several times slower than on a copy."""
    return (m if m.shape[-2] >= m.shape[-1] else m.mT).contiguous()


def gram(mats: torch.Tensor | list[torch.Tensor], left: bool) -> torch.Tensor:
    """W Wᵀ (`left`) or Wᵀ W of each matrix W: a batch (…, m, n) or a list of same-shape matrices
    -> (…, d, d) float32.

    numpy's `a @ a.T` / `a.T @ a` (one buffer, transposed) runs BLAS syrk: half the flops of torch's
    matmul, which has no syrk (measured 2× faster for 1536×576); and no transposed copy is needed."""
    import numpy as np

    batch_shape = None
    if isinstance(mats, torch.Tensor):
        batch_shape = mats.shape[:-2]
        mats = mats.reshape(-1, *mats.shape[-2:])
    outs = []
    for w in mats:
        a = w.detach().float().numpy()
        outs.append(a @ a.T if left else a.T @ a)
    out = torch.from_numpy(np.stack(outs))
    return out if batch_shape is None else out.reshape(*batch_shape, *out.shape[-2:])


def singular_values(mats: list[torch.Tensor], method: str = "svd") -> list[torch.Tensor]:
    """Singular values (descending, float32) of each matrix, batched over matrices of the same shape.

    method: "svd" (torch.linalg.svdvals, accurate) or "gram" (sqrt of the eigenvalues of the small
    Gram matrix: faster; σ below ~1e-3·σ_max are inaccurate, rank@90% is unaffected).
    """
    if method not in ("svd", "gram"):
        raise ValueError(f"method must be 'svd' or 'gram', not {method!r}")
    out: list[torch.Tensor | None] = [None] * len(mats)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault(tuple(m.shape), []).append(i)
    with torch.no_grad():
        for idx in groups.values():
            if method == "svd":
                s = torch.linalg.svdvals(tall(torch.stack([mats[i].float() for i in idx])))
            else:  # the smaller Gram matrix, straight from each matrix (no stacked or transposed copies)
                m, n = mats[idx[0]].shape
                s = torch.linalg.eigvalsh(gram([mats[i] for i in idx], left=m < n)).flip(-1).clamp_min(0).sqrt()
            for j, i in enumerate(idx):
                out[i] = s[j]
    return out  # type: ignore[return-value]


def low_rank_singular_values(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float32) of B @ A (m x r times r x n), padded with zeros to min(m, n).
    With B = Q_B R_B and Aᵀ = Q_A R_A, B A = Q_B (R_B R_Aᵀ) Q_Aᵀ, so they are exactly those of the r x r
    matrix R_B R_Aᵀ: two thin QRs and an r x r SVD instead of an SVD (or Gram eigenvalues) of m x n."""
    full, r = min(B.shape[0], A.shape[1]), B.shape[1]
    if r >= full:
        return torch.linalg.svdvals(tall(B.float() @ A.float()))
    with torch.no_grad():
        rb = torch.linalg.qr(B.double(), mode="r")[1]
        ra = torch.linalg.qr(A.double().T, mode="r")[1]
        s = torch.linalg.svdvals(rb @ ra.T).float()
    return torch.cat([s, s.new_zeros(full - r)])


def rank_at(singular_values: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest r with Σ_{i≤r} σ_i² ≥ fraction · Σ σ² (the paper's criterion); 0 for a zero matrix."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    energy = singular_values.double().sort(descending=True).values ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    cum = energy.cumsum(0)
    # A small relative slack so that fraction=1 is reached despite rounding of the cumulative sum.
    r = int(torch.searchsorted(cum, fraction * total * (1 - 1e-12)).item()) + 1
    return min(r, energy.numel())


def spectrum(
    deltas: dict[str, Delta],
    fraction: float = 0.9,
    base: bool = True,
    random: bool = True,
    keep_singular_values: bool = False,
    method: str = "svd",
    seed: int = 0,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[dict]:
    """One row per module: rank@fraction of ΔW (also as a fraction of full rank), its Frobenius norm,
    and optionally the same rank for the base W (`base`, one more SVD per module) and for a Gaussian
    matrix of ΔW's shape (`random`). rank@fraction does not change with scale, so the Gaussian
    reference depends only on the shape: one seeded draw per distinct shape (5 in a Llama block),
    whose rank varies by about ±1 between draws. Switch `base` off when only ΔW matters (the base
    W's statistic is the same for every checkpoint).
    `keep_singular_values` adds ΔW's singular values (a list, descending) for plots. `factors` (from
    `lora_factors`) gives the low-rank ΔW's singular values exactly from their factors, whatever `method`."""
    names = list(deltas)
    dws = [deltas[n][1] for n in names]
    factors = factors or {}
    dense = [n for n in names if n not in factors]
    by_name = dict(zip(dense, singular_values([deltas[n][1] for n in dense], method)))
    by_name.update({n: low_rank_singular_values(*factors[n]) for n in names if n in factors})
    s_delta = [by_name[n] for n in names]
    s_base = singular_values([deltas[n][0] for n in names], method) if base else None
    s_rand = None
    if random:
        shapes = list(dict.fromkeys(tuple(d.shape) for d in dws))
        g = torch.Generator().manual_seed(seed)
        by_shape = dict(zip(shapes, singular_values([torch.randn(sh, generator=g) for sh in shapes], method)))
        s_rand = [by_shape[tuple(d.shape)] for d in dws]
    rows = []
    for i, name in enumerate(names):
        rows_, cols = dws[i].shape
        full = min(rows_, cols)
        r = rank_at(s_delta[i], fraction)
        row = {
            "module": name,
            "layer": layer_index(name),
            "type": module_type(name),
            "shape": [rows_, cols],
            "full_rank": full,
            "fraction": fraction,
            "rank": r,
            "rank_fraction": r / full,
            "delta_fro": float(dws[i].norm()),
        }
        if s_base is not None:
            row["base_rank"] = rank_at(s_base[i], fraction)
            row["base_rank_fraction"] = row["base_rank"] / full
        if s_rand is not None:
            row["random_rank"] = rank_at(s_rand[i], fraction)
            row["random_rank_fraction"] = row["random_rank"] / full
        if keep_singular_values:
            row["singular_values"] = s_delta[i].tolist()
        rows.append(row)
    return rows


def summarize(rows: Iterable[dict]) -> list[dict]:
    """Per module type (q, k, v, o, gate, up, down): mean and median of rank and rank fraction
    over layers, plus the base/random means when the rows have them. One dict per type, for tables."""
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(row)
    out = []
    for t in sorted(by_type, key=type_sort_key):
        rs = by_type[t]
        s = {
            "type": t,
            "modules": len(rs),
            "full_rank": max(r["full_rank"] for r in rs),
            "rank_mean": statistics.fmean(r["rank"] for r in rs),
            "rank_median": statistics.median(r["rank"] for r in rs),
            "rank_fraction_mean": statistics.fmean(r["rank_fraction"] for r in rs),
            "rank_fraction_median": statistics.median(r["rank_fraction"] for r in rs),
        }
        for key in ("base_rank", "random_rank"):
            if all(key in r for r in rs):
                s[f"{key}_mean"] = statistics.fmean(r[key] for r in rs)
                s[f"{key}_fraction_mean"] = statistics.fmean(r[f"{key}_fraction"] for r in rs)
        out.append(s)
    return out
