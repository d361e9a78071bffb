"""`learnforget` command line. Options are generated from the config dataclasses, so each option's
help text and default live in one place (config.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import DataSpec, MethodConfig, RunConfig, TrainConfig
from .errors import UserError

RENAME = {"source": "data"}  # DataSpec.source is `--data`: the name scripts and the issue use


def _parse_value(type_str: str):
    if "list[float]" in type_str:
        return lambda s: [float(x) for x in s.split(",") if x.strip()]
    if "list[str]" in type_str:
        return lambda s: [x.strip() for x in s.split(",") if x.strip()]
    if "tuple[float, float]" in type_str:
        return lambda s: tuple(float(x) for x in s.split(","))
    if type_str.startswith("int"):
        return int
    if type_str.startswith("float"):
        return float
    return str


def _add_dataclass(parser: argparse.ArgumentParser, cls, required: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        name = RENAME.get(f.name, f.name)
        flag = "--" + name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", help=help_)
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(flag, dest=f.name, type=_parse_value(str(f.type)), default=default,
                           required=f.name in required or (not has_default and f.name != "source"),
                           help=f"{help_} (default: {default})" if has_default else help_)


def _pick(args: argparse.Namespace, cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if value is None and f.default_factory is not dataclasses.MISSING:
            continue
        out[f.name] = value
    return out


def train_config(args: argparse.Namespace) -> RunConfig:
    from .data.sources import regime_of

    data = _pick(args, DataSpec)
    if args.regime is None:  # embedded names know their regime; files default to CPT
        data["regime"] = regime_of(args.source) or "cpt"
    return RunConfig(model=args.model, data=DataSpec(**data), method=MethodConfig(**_pick(args, MethodConfig)),
                     train=TrainConfig(**_pick(args, TrainConfig)), out=args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="learnforget", description="LoRA vs full fine-tuning: what each learns and forgets.")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; 1 is faster when other heavy processes share the cores)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a model (full or LoRA), saving checkpoints along a token budget",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--model", default="smollm2-135m", help="smollm2-135m | gemma3-270m | tiny-random-llama | folder | hub id")
    t.add_argument("--out", required=True, help="run folder (re-running with the same options resumes)")
    _add_dataclass(t, DataSpec, required=("source",))
    _add_dataclass(t, MethodConfig)
    _add_dataclass(t, TrainConfig)
    t.set_defaults(regime=None)

    from .evaluate import runner

    e = sub.add_parser("eval", help="score a model or checkpoint on benchmarks and held-out text")
    runner.add_arguments(e)

    from .analysis import command as analysis_command

    a = sub.add_parser("analyze", help="spectrum of the weight update and intruder dimensions of checkpoints")
    analysis_command.add_arguments(a)

    s = sub.add_parser("study", help="run a study YAML: train the grid, evaluate every checkpoint, write the report")
    s.add_argument("config", help="study YAML (see configs/)")
    s.add_argument("--out", default="runs/studies", help="where studies live (a study writes <out>/<name>/)")
    s.add_argument("--dry-run", action="store_true", help="print the plan with estimated FLOPs, time and memory; train nothing")
    s.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: train the runs one after another here; ray: each pending run is a Ray task "
                        "(resources per run: the study YAML's executor: num_cpus, num_gpus, memory_gb; needs "
                        "pip install \"learnforget[ray]\"). Every worker writes to --out: on a multi-machine "
                        "cluster it must be a path shared by all of them. Evaluation runs here, after training")
    s.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray instance")

    r = sub.add_parser("report", help="(re)write the report of a study folder from its results.json")
    r.add_argument("study_dir")

    d = sub.add_parser("demo", help="a short real training + held-out evaluation on the embedded model")
    d.add_argument("--out", default="runs/demo", help="where the demo writes its runs")
    d.add_argument("--tokens", type=int, default=8192, help="training tokens per method (checkpoints at 1/4, 1/2 and all of it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        if args.command == "train":
            from . import train

            train.run(train_config(args))
            return 0
        if args.command == "eval":
            from .evaluate import runner

            return runner.main(args)
        if args.command == "analyze":
            from .analysis import command as analysis_command

            return analysis_command.main(args)
        if args.command == "study":
            from . import study

            return study.main(args)
        if args.command == "report":
            from . import report

            print(report.write(Path(args.study_dir)))
            return 0
        if args.command == "demo":
            from . import demo

            return demo.main(args)
    except UserError as e:
        print(f"learnforget: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
