"""`learnforget` command line. Options are generated from the config dataclasses, so each option's
help text, type, choices and default live in one place (config.py). Every verb but `study` and `report`
also reads `--config FILE`, a YAML mapping of its options (`lr: 2e-4`, `data: python-code`, ...);
options given on the command line win over the file (lm-eval's convention)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Literal, Optional

from .config import RENAME, AdviseConfig, DataSpec, MethodConfig, RunConfig, TrainConfig
from .errors import UserError
from .validate import convert, hints, load_mapping

TRAIN_SPECS = (DataSpec, MethodConfig, TrainConfig)
WITH_CONFIG = ("train", "eval", "analyze")  # the verbs that read --config FILE


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the option and the problem, then where the help is), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser_for(tp):
    """argparse `type=` for a declared field type: comma lists for list/tuple fields."""
    if type(None) in typing.get_args(tp):  # Optional[X]: X (None is the default, never typed)
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        item = args[0]

        def items(s: str):
            out = [item(x.strip()) for x in s.split(",") if x.strip()]
            return tuple(out) if origin is tuple else out
        items.__name__ = f"comma-separated {item.__name__}"  # argparse names it in "invalid ... value"
        return items
    return tp if tp in (int, float) else str


def _add_dataclass(parser: argparse.ArgumentParser, cls, required: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group(cls.__name__)
    types_ = hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + RENAME.get(f.name, f.name).replace("_", "-")
        help_, tp = f.metadata.get("help", ""), types_[f.name]
        if tp in (bool, Optional[bool]):  # --x / --no-x; an Optional one left out stays None (auto)
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
        group.add_argument(flag, dest=f.name, type=_parser_for(tp), default=default, choices=choices,
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


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="YAML mapping of this verb's options (e.g. `lr: 2e-4`); options on the command line win")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="learnforget", description="LoRA vs full fine-tuning: what each learns and forgets.")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; 1 is faster when other heavy processes share the cores)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a model (full or LoRA), saving checkpoints along a token budget",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--model", default="smollm2-135m", help="smollm2-135m | gemma3-270m | tiny-random-llama | folder | hub id")
    t.add_argument("--out", required=True, help="run folder (re-running with the same options resumes)")
    for cls in TRAIN_SPECS:
        _add_dataclass(t, cls, required=("source",) if cls is DataSpec else ())
    t.set_defaults(regime=None)

    from .evaluate import runner

    e = sub.add_parser("eval", help="score a model or checkpoint on benchmarks and held-out text")
    runner.add_arguments(e)

    from .analysis import command as analysis_command

    a = sub.add_parser("analyze", help="spectrum of the weight update and intruder dimensions of checkpoints")
    analysis_command.add_arguments(a)
    for verb in (t, e, a):
        _config_option(verb)

    from .study.executors import KINDS

    s = sub.add_parser("study", help="run a study YAML: train the grid, evaluate every checkpoint, write the report")
    s.add_argument("config", help="study YAML (see configs/)")
    s.add_argument("--out", default="runs/studies", help="where studies live (a study writes <out>/<name>/)")
    s.add_argument("--dry-run", action="store_true", help="print the plan with estimated FLOPs, time and memory; train nothing")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field of the study file (repeatable): a dotted KEY (seeds, search.seed, "
                        "experiments.0.tokens) and a YAML VALUE, e.g. --set seeds=[6,7,8,9,10] to replicate a study with other seeds")
    s.add_argument("--power", action=argparse.BooleanOptionalAction, default=True,
                   help="with --dry-run: also score the base model on the planned held-out sets (seconds) and print the "
                        "smallest difference each signal can detect; --no-power plans without loading the model or data")
    s.add_argument("--probe", action=argparse.BooleanOptionalAction, default=None,
                   help="with --dry-run: time a few real training steps of each kind of run, a checkpoint write, held-out "
                        "scoring and the analysis on this machine (a minute), so the time estimate is measured; the default "
                        "for a model on this disk (embedded, a local folder); --no-probe (the default for a hub model, "
                        "which may be far too large for this machine) estimates from FLOPs and a matmul rate (rough)")
    s.add_argument("--executor", choices=KINDS, default="local",
                   help="local: train the runs one after another here; ray: each pending run is a Ray task "
                        "(resources per run: the study YAML's executor: num_cpus, num_gpus, memory_gb; needs "
                        "pip install \"learnforget[ray]\"). Every worker writes to --out: on a multi-machine "
                        "cluster it must be a path shared by all of them. Evaluation runs here, after training")
    s.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray instance")

    v = sub.add_parser("advise", help="forecast what each method learns and forgets at a token budget from short pilot runs, and "
                       "recommend one (or --backtest a study's runs)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_dataclass(v, AdviseConfig)

    r = sub.add_parser("report", help="(re)write the report of a study folder from its results.json")
    r.add_argument("study_dir")
    return p


def _verb_parser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def _config_argv(path: str, verb: argparse.ArgumentParser, verb_name: str) -> list[str]:
    """The options of a --config YAML as command-line tokens (placed before the user's, which so win).
    Train options are checked against their declared types here, with the file's line in the error."""
    if not Path(path).is_file():
        raise UserError(f"--config {path}: no such file")
    data, src = load_mapping(path, f"a --config file is a mapping of {verb_name} options (e.g. lr: 2e-4)")
    actions = {a.dest: a for a in verb._actions if a.option_strings and a.dest not in ("help", "config")}
    by_flag = {s.lstrip("-").replace("-", "_"): a for a in actions.values() for s in a.option_strings if s.startswith("--")}
    types_ = {RENAME.get(k, k): v for cls in TRAIN_SPECS for k, v in hints(cls).items()} if verb_name == "train" else {}
    argv = []
    for key, value in data.items():
        action = by_flag.get(str(key).replace("-", "_"))
        if action is None:
            raise UserError(f"{src.at((key,))}: unknown {verb_name} option '{key}'; known: {sorted(by_flag)}")
        if key in types_ and value is not None:
            convert(types_[key], value, src, (key,))
        flag = next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))
        if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"{src.at((key,))}: {key}: expected true or false, got {value!r}")
            argv += [flag] if value else ([f"--no-{flag[2:]}"] if isinstance(action, argparse.BooleanOptionalAction) else [])
        elif value is not None:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return argv


def _with_config(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """argv with a `--config FILE` of train/eval/analyze replaced by the file's options."""
    for i, tok in enumerate(argv):
        if tok == "--config" or tok.startswith("--config="):
            path = tok.split("=", 1)[1] if "=" in tok else (argv[i + 1] if i + 1 < len(argv) else None)
            rest = argv[:i] + argv[i + (1 if "=" in tok else 2):]
            verb = next((j for j, t in enumerate(rest) if t in WITH_CONFIG), None)
            if path is None or verb is None or verb > i:
                return argv  # not a verb's option (or no file given): argparse reports it
            extra = _config_argv(path, _verb_parser(parser, rest[verb]), rest[verb])
            return rest[:verb + 1] + extra + rest[verb + 1:]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(_with_config(parser, argv))
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        if args.command in ("train", "eval", "analyze", "study", "advise"):
            from . import quiet

            quiet.libraries()
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
        if args.command == "advise":
            from .advise import command as advise_command

            return advise_command.main(AdviseConfig(**_pick(args, AdviseConfig)))
        if args.command == "report":
            from . import report

            print(report.write(Path(args.study_dir)))
            return 0
    except UserError as e:
        print(f"learnforget: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
