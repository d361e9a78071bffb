"""Starting a run that asks for several processes (train.processes > 1): Accelerate's launcher, which starts
torchrun's elastic agent underneath, runs `python -m learnforget.train.launch RUN.json` in every process.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 ... -m learnforget.train.launch runs/x/launch.json

RUN.json is the run's RunConfig as a dict (RunConfig.to_dict): each process rebuilds it and calls train.run,
so a launched run is the same run, in the same folder, as one trained in-process, and resumes the same way.

run(cfg) is what a study calls (its local executor, or a Ray task on one node): RUN.json written into the run
folder, the launcher started on this machine with its output streamed through, a failure raised as one line.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError

# FSDP as the paper-scale configs use it (configs/accelerate/fsdp-8gpu.yaml, and fsdp-2cpu.yaml): FSDP2, one
# unit per decoder layer, full state dicts in the resume state, and the weights loaded by the first process only
# (the others get them from it: on CPU all processes share the machine's memory). The same flags run on GPUs and,
# with the FSDP state train.acceleration sets up on CPU (Accelerate enables FSDP for GPUs only), on CPU processes over
# gloo: tests/test_fsdp.py runs them. Checkpoints' weights are consolidated by train.save either way.
FSDP_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true",
              "--fsdp_cpu_ram_efficient_loading", "true"]


def command(cfg: RunConfig, config_file: str | Path, port: int | None = None) -> list[str]:
    """The argv that launches `cfg` with cfg.train.processes processes on this machine."""
    t = cfg.train
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(t.processes), "--num_machines", "1",
           # the run sets its own precision (train.acceleration.accelerator); the launcher's would be overridden anyway
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += FSDP_FLAGS if t.distributed == "fsdp" else ["--multi_gpu"]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return cmd + ["-m", "learnforget.train.launch", str(config_file)]


def free_port() -> int:
    """A TCP port free now on this machine, for the launch's rendezvous: two runs launched at once (Ray tasks on one
    node) must not both take the launcher's default 29500. (Another process could take it before the launcher
    binds it; the OS hands out ephemeral ports in turn, so that is rare.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(processes: int, threads: int | None = None) -> dict[str, str]:
    """This process's environment for the launched processes. On CPU they share the cores: each gets `threads`
    torch threads (default: this process's cores // processes), else each would start one per core and they
    would fight over them. On GPUs the launcher's own default (1 thread a process) stands."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = str(threads or max(1, len(os.sched_getaffinity(0)) // processes))
    return env


def write_spec(cfg: RunConfig) -> Path:
    """RUN.json (the config every process rebuilds) in the run folder, written atomically: a second study
    launching the same run at the same time writes the same bytes, and neither reads a half-written file."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "launch.json"
    tmp = out / f".launch.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(cfg.to_dict(), indent=1))
    os.replace(tmp, path)
    return path.resolve()  # absolute: the launched processes need not share this process's working directory


def _die_with_parent() -> None:
    """In the launcher (before exec): SIGTERM when this process dies, also by kill -9, so a killed study or a
    lost Ray worker leaves no orphan training on; the launcher passes SIGTERM on to its processes (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run(cfg: RunConfig, threads: int | None = None) -> None:
    """Train `cfg` (train.processes > 1) in cfg.train.processes processes on this machine, through the launcher;
    their output goes to this process's stdout as it comes. Raises a UserError with the failure's last error
    line (the run's own message when it raised a UserError) if the launch fails."""
    cmd = command(cfg, write_spec(cfg), port=free_port())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment(cfg.train.processes, threads),
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    tail = _stream(proc)
    if proc.wait() != 0:
        _drop_unopened(Path(cfg.out))
        raise UserError(f"its {cfg.train.processes}-process launch failed: {error_line(tail, proc.returncode)}")


def _drop_unopened(out: Path) -> None:
    """A launch that failed before the run took its folder (bad input, found in set-up) left only RUN.json there:
    the folder goes, as a run trained in-process that fails in set-up writes nothing."""
    if out.is_dir() and {p.name for p in out.iterdir()} <= {"launch.json"}:
        shutil.rmtree(out, ignore_errors=True)


def _stream(proc: subprocess.Popen) -> str:
    """Copy the launch's output to stdout as it comes (raw chunks, not lines: progress bars redraw in place);
    the last 64 kB of it, for error_line."""
    decoder, tail = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        text = decoder.decode(chunk)
        sys.stdout.write(text)
        sys.stdout.flush()
        tail = (tail + text)[-65536:]
    proc.stdout.close()
    return tail


def error_line(output: str, returncode: int) -> str:
    """The line of a failed launch's output that says why: the run's own one-line error (main() prints
    UserErrors as `learnforget: error: ...`), else the last exception line of a traceback (not the launcher's
    ChildFailedError, which only says that a process failed), else the exit status."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", ln.strip()) for ln in output.splitlines() if ln.strip()]  # torch may prefix a rank
    for ln in reversed(lines):
        if "learnforget: error: " in ln:
            return ln.split("learnforget: error: ", 1)[1]
    for ln in reversed(lines):
        if re.match(r"[\w.]+(Error|Exception): ", ln) and not ln.split(":", 1)[0].endswith("ChildFailedError"):
            return ln
    return f"the launcher exited with status {returncode}" + (f" (last output: {lines[-1]})" if lines else "")


def main(argv: list[str] | None = None) -> int:
    from .. import quiet, train

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m learnforget.train.launch RUN.json  (started by accelerate launch in every process)", file=sys.stderr)
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
