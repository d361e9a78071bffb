"""Writing a training checkpoint (weights or adapter, tokenizer, resume state) as one atomic folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import checkpoint, integrity
from ..config import RunConfig
from ..data import stream
from ..errors import UserError


def save_pissa_init(model, path: Path) -> None:
    """PiSSA rewrites the base weights; keep the initial adapter so checkpoints convert back to plain LoRA."""
    cfg = model.peft_config["default"]
    init = cfg.init_lora_weights
    cfg.init_lora_weights = True
    model.save_pretrained(str(path))
    cfg.init_lora_weights = init


def save_checkpoint(acc, model, tok, cfg: RunConfig, out: Path, step: int, tokens: int, label: float, unit: str, batches=None) -> None:
    """Every process saves its resume state (RNG included, and a streamed corpus's position: `batches`); the main
    process adds the weights (under FSDP every process takes part in gathering them) and commits.
    A write that fails (a full disk: OSError, SafetensorError, RuntimeError from torch.save) removes the
    half-written folder and is a UserError: the previous checkpoint, untouched, is where a re-run resumes."""
    tmp = out / "checkpoints" / f".tmp-{checkpoint.name_for(tokens)}"  # every process writes its RNG state here
    try:
        _write(acc, model, tok, cfg, out, tokens, batches, {"step": step, "tokens": tokens, unit: label, "method": cfg.method.label(),
                                                 "precision": "bf16" if str(acc.mixed_precision) == "bf16" else "fp32",
                                                 "base_model": cfg.model})
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        before = [p.name for p in checkpoint.complete(out)]
        free = shutil.disk_usage(out).free / 2**20
        kept = (f"the previous checkpoint {before[-1]} is intact: fix the cause and re-run the same command to resume "
                f"from it" if before else "fix the cause and re-run the same command")
        raise UserError(f"cannot write checkpoint {tmp.parent / checkpoint.name_for(tokens)} ({integrity.first_line(e)}; "
                        f"{free:,.0f} MiB free on that disk); {kept}") from None
    acc.wait_for_everyone()


def _write(acc, model, tok, cfg: RunConfig, out: Path, tokens: int, batches, info: dict) -> None:
    if acc.is_main_process:
        checkpoint.staging(out, tokens)
    acc.wait_for_everyone()
    tmp = out / "checkpoints" / f".tmp-{checkpoint.name_for(tokens)}"
    acc.save_state(str(tmp / "resume"))
    stream.save_state(batches, tmp / "resume", acc.process_index)
    acc.wait_for_everyone()  # every process's part of resume/ is written before the main process commits the folder
    sharded = acc.distributed_type == "FSDP"
    # Under FSDP no process holds the whole weights: gathering them is a collective, so every process calls
    # get_state_dict (the main one gets the full state dict on CPU, the others an empty one).
    full = acc.get_state_dict(model) if cfg.method.method == "full" or sharded else None
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        if cfg.method.method == "lora":
            kw = {}
            if cfg.method.init == "pissa":  # saved as plain LoRA on the original base (rank 2r), per PEFT's docs
                kw["path_initial_model_for_weight_conversion"] = str(out / "pissa-init")
            if sharded:  # PEFT takes the adapter's entries from the gathered state dict, not from the shards
                kw["state_dict"] = full
            unwrapped.save_pretrained(str(tmp), **kw)
        else:
            if sharded:
                _retie(unwrapped, full)
            unwrapped.save_pretrained(str(tmp), state_dict=full, safe_serialization=True)
        tok.save_pretrained(str(tmp))
        checkpoint.commit(tmp, info)


def _retie(model, state_dict: dict) -> None:
    """Under FSDP the gathered state dict holds a tied weight (lm_head = embed_tokens) as two equal, separate
    tensors; save_pretrained drops a tied copy only when the tensors share memory. Alias them again, so the
    checkpoint has the keys of an unsharded run's (and from_pretrained re-ties lm_head as usual)."""
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in state_dict:
            state_dict[name] = state_dict[first.setdefault(id(p), name)]
