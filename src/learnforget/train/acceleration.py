"""The Accelerator of a run, at its precision, and FSDP2 on CPU processes (which Accelerate itself does not set up)."""

from __future__ import annotations

import os

import torch

from ..errors import UserError


def accelerator(precision: str):
    """An Accelerator at this precision (fp32 | bf16). Accelerate keeps one state per process and refuses a
    second precision in it, so the precision part of that state is reset when the runs of one process
    (a study's, a test's) differ in precision; the process group is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if precision == "bf16" else "no"
    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != mixed:
        AcceleratorState._reset_state()
    cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # set by accelerate launch --use_fsdp
        return _cpu_fsdp_accelerator(mixed)
    # cpu=True when there is no accelerator: that is what lets torchrun/accelerate start gloo DDP on CPUs.
    return Accelerator(mixed_precision=mixed, cpu=cpu)


def _cpu_fsdp_accelerator(mixed: str):
    """An Accelerator running FSDP2 on CPU processes (gloo). Accelerate (1.15) turns FSDP on for GPU-like devices
    only: on CPU, `accelerate launch --use_fsdp` gives Accelerator(cpu=True) a plain gloo DDP state (MULTI_CPU) and
    drops the FSDP plugin without a word (and Accelerator(cpu=False) is not distributed at all: every process a
    separate one-process run). PyTorch's FSDP2 (fully_shard) itself runs on CPU over gloo, so the state is set to
    FSDP here, once the process group is up: from then on prepare (fully_shard), clip_grad_norm_, get_state_dict
    and save_state / load_state take Accelerate's own FSDP2 code, the code a GPU run takes."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # its settings from the launcher's FSDP_* environment
    acc = Accelerator(mixed_precision=mixed, cpu=True, fsdp_plugin=plugin)
    if acc.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.FSDP):
        raise UserError(f"started under FSDP on CPU, but Accelerate set up {acc.distributed_type} (one process? start "
                        f"it with accelerate launch --num_processes N, N >= 2)")
    if mixed != "no":
        plugin.set_mixed_precision(mixed)  # what AcceleratorState does for FSDP on GPUs
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return acc
