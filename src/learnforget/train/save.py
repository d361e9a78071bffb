"""Writing a training checkpoint (weights or adapter, tokenizer, resume state) as one atomic folder."""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from ..config import RunConfig


def save_pissa_init(model, path: Path) -> None:
    """PiSSA rewrites the base weights; keep the initial adapter so checkpoints convert back to plain LoRA."""
    cfg = model.peft_config["default"]
    init = cfg.init_lora_weights
    cfg.init_lora_weights = True
    model.save_pretrained(str(path))
    cfg.init_lora_weights = init


def save_checkpoint(acc, model, tok, cfg: RunConfig, out: Path, step: int, tokens: int, label: float, unit: str) -> None:
    """Every process saves its resume state (RNG included); the main process adds the weights and commits."""
    if acc.is_main_process:
        checkpoint.staging(out, tokens)
    acc.wait_for_everyone()
    tmp = out / "checkpoints" / f".tmp-{checkpoint.name_for(tokens)}"  # every process writes its RNG state here
    acc.save_state(str(tmp / "resume"))
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        if cfg.method.method == "lora":
            kw = {}
            if cfg.method.init == "pissa":  # saved as plain LoRA on the original base (rank 2r), per PEFT's docs
                kw["path_initial_model_for_weight_conversion"] = str(out / "pissa-init")
            unwrapped.save_pretrained(str(tmp), **kw)
        else:
            unwrapped.save_pretrained(str(tmp), state_dict=acc.get_state_dict(model), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        checkpoint.commit(tmp, {"step": step, "tokens": tokens, unit: label, "method": cfg.method.label(), "base_model": cfg.model})
    acc.wait_for_everyone()
