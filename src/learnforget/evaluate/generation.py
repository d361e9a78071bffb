"""Batched generation with a KV cache and per-sequence stop strings.

A small manual loop rather than `model.generate`, because it can drop a sequence from the batch (and
from the KV cache) as soon as it has hit a stop string or EOS: on CPU, where a batch costs in
proportion to its rows, finished sequences then cost nothing. Greedy decoding gives the same tokens
as `model.generate(do_sample=False)` up to float rounding between batch shapes.

Prompts are tokenized as lm-eval does (tokenizer defaults; no extra BOS if the text starts with it),
left-padded, and batched after sorting by length (longest first, like lm-eval). The completion is the
decoded new tokens (special tokens skipped) cut at the first stop string, as lm-eval's
`postprocess_generated_text` cuts them.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..cpu import onednn
from .scoring import encode, in_batches


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """Text before the earliest occurrence of any stop string."""
    for s in stop:
        if s:
            text = text.split(s)[0]
    return text


def _eos_ids(model, tok) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tok):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
    return ids


def _next_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                 top_p: float = 1.0) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        # Nucleus sampling (as HF's TopPLogitsWarper): keep the most likely tokens until their mass
        # reaches top_p; a token is dropped when the mass before it already does (the top one never is).
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))  # multinomial renormalises
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def _generate_batch(model, tok, prompts: list[list[int]], stop: list[str], max_new_tokens: int,
                    temperature: float, generator: torch.Generator | None, top_p: float = 1.0) -> list[str]:
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = _eos_ids(model, tok)
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(p)
        mask[b, L - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)

    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    active = list(range(B))  # original row of each row still in the batch
    generated: list[list[int]] = [[] for _ in range(B)]
    last_pos = positions[:, -1]
    logits = out.logits[:, -1]
    for _ in range(max_new_tokens):
        nxt = _next_tokens(logits, temperature, generator, top_p)
        keep = []
        for r, b in enumerate(active):
            t = int(nxt[r])
            if t in eos:
                continue
            generated[b].append(t)
            text = tok.decode(generated[b], skip_special_tokens=True)
            if not any(s and s in text for s in stop):
                keep.append(r)
        if not keep or len(generated[active[keep[0]]]) >= max_new_tokens:
            break
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            idx = torch.tensor(keep, device=device)
            cache.batch_select_indices(idx)
            nxt, mask, last_pos = nxt[idx], mask[idx], last_pos[idx]
            active = [active[r] for r in keep]
        mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=device)], 1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
    return [truncate_at_stop(tok.decode(g, skip_special_tokens=True), stop) for g in generated]


def generate(model, tok, prompts: list[str], stop: list[str], max_new_tokens: int = 256, batch_size: int = 8,
             temperature: float = 0.0, seed: int = 0, progress: Callable[[int], None] | None = None,
             top_p: float = 1.0) -> list[str]:
    """Completions of `prompts` (in their order), each cut at its first stop string.

    temperature 0 is greedy. With temperature > 0, sampling uses a generator seeded with `seed`:
    reproducible for the same prompts and batch size. top_p < 1 samples from the nucleus (the
    smallest set of most likely tokens holding top_p of the mass; Codex / lm-eval use 0.95).
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    model.eval()
    encoded = [encode(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    with onednn.linears(model):
        return in_batches(order, batch_size, lambda batch: _generate_batch(
            model, tok, [encoded[j] for j in batch], stop, max_new_tokens, temperature, generator, top_p), progress)
