"""Starting a run that asks for several processes (train.processes > 1): Accelerate's launcher, which starts
torchrun's elastic agent underneath, runs `python -m learnforget.launch RUN.json` in every process.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 ... -m learnforget.launch runs/x/launch.json

RUN.json is the run's RunConfig as a dict (RunConfig.to_dict): each process rebuilds it and calls train.run,
so a launched run is the same run, in the same folder, as one trained in-process, and resumes the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import RunConfig
from .errors import UserError

# FSDP as the paper-scale configs use it (configs/accelerate/fsdp-8gpu.yaml, and fsdp-2cpu.yaml): FSDP2, one
# unit per decoder layer, full state dicts in the resume state, and the weights loaded by the first process only
# (the others get them from it: on CPU all processes share the machine's memory). The same flags run on GPUs and,
# with the FSDP state train.loop sets up on CPU (Accelerate enables FSDP for GPUs only), on CPU processes over
# gloo: tests/test_fsdp.py runs them. Checkpoints' weights are consolidated by train.save either way.
FSDP_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true",
              "--fsdp_cpu_ram_efficient_loading", "true"]


def command(cfg: RunConfig, config_file: str | Path, port: int | None = None) -> list[str]:
    """The argv that launches `cfg` with cfg.train.processes processes on this machine."""
    t = cfg.train
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(t.processes), "--num_machines", "1",
           # the run sets its own precision (train.loop.accelerator); the launcher's would be overridden anyway
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += FSDP_FLAGS if t.distributed == "fsdp" else ["--multi_gpu"]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return cmd + ["-m", "learnforget.launch", str(config_file)]


def main(argv: list[str] | None = None) -> int:
    from . import quiet, train

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m learnforget.launch RUN.json  (started by accelerate launch in every process)", file=sys.stderr)
        return 2
    quiet.libraries()
    try:
        cfg = RunConfig.from_dict(json.loads(Path(argv[0]).read_text()))
        train.run(cfg)
    except UserError as e:
        print(f"learnforget: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
