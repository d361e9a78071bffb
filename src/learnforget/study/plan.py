"""A study's plan: its YAML read (with `extends:`) and checked field by field, and the grid of
experiments x methods x learning rates x seeds expanded to runs, each named by the hash of its config."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from ..analysis import diversity as div
from ..config import DOMAINS, DataSpec, DiversitySpec, Experiment, MethodConfig, RunConfig, Study, TrainConfig
from ..errors import UserError
from ..evaluate import tasks
from ..validate import Source, build, convert, dotted, hints, load_mapping, yaml_value

NOT_A_GRID = ("checkpoints", "extra_eval", "betas")  # list-valued fields: a list is one value, not a grid


def read(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, Source]:
    """A study file's mapping, with `extends: other.yaml` (relative to this file) merged under it: mappings
    merge key by key, anything else is replaced. So `extends: demo-cpu.yaml` plus one `analysis:` key is the
    demo study with more analysis, in the demo's own folder (same name, same runs: nothing is retrained).
    The Source keeps each value's file and line, for the error messages."""
    if not path.exists():
        raise UserError(f"{path}: no such study file" + (f" (extended by {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise UserError(f"{path}: extends itself (through {' -> '.join(map(str, seen))})")
    raw, src = load_mapping(path, "a study file is a mapping with name, model, experiments, methods")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, src
    if not isinstance(parent, str):
        raise UserError(f"{src.at(('extends',))}: extends: the path of another study file, got {parent!r}")
    base, base_src = read(path.parent / parent, seen + (path.resolve(),))
    replaced: list[tuple] = []
    merged = _merge(base, raw, (), replaced)
    lines = {p: v for p, v in base_src.lines.items() if not any(p[:len(r)] == r for r in replaced)}
    return merged, Source(str(path), {**lines, **src.lines})


def _merge(base: dict, over: dict, path: tuple, replaced: list) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, path + (k,), replaced)
        else:
            out[k] = v
            replaced.append(path + (k,))
    return out


def _check_grid(entry, src: Source, path: tuple, train_only: bool = False) -> None:
    """A `methods:` entry (or the `train:` mapping): known fields, each value (or each grid value) of its type."""
    if not isinstance(entry, dict):
        raise UserError(f"{src.at(path)}: {dotted(path)}: expected a mapping, got {entry!r}")
    types_ = {**({} if train_only else hints(MethodConfig)), **hints(TrainConfig)}
    unknown = sorted(set(entry) - set(types_) - ({"label"} if not train_only else set()))
    name = dotted(path)
    if unknown:
        raise UserError(f"{src.at(path)}: {name}: unknown field(s) {unknown}")
    for k, v in entry.items():
        if k == "label":
            continue
        if isinstance(v, list) and k not in NOT_A_GRID and not train_only:
            for i, x in enumerate(v):
                convert(types_[k], x, src, path + (k, i))
        else:
            convert(types_[k], v, src, path + (k,))


def with_sets(path: Path, sets: list[str] | tuple = ()) -> tuple[dict, Source]:
    """The study file's mapping (read) with each `--set KEY=VALUE` applied: KEY a dotted path (seeds,
    search.seed, experiments.0.tokens), VALUE read as YAML ([5, 6, 7], 2.0e-5, true). So a study is replicated with
    other seeds without editing its file: `learnforget study configs/demo-cpu.yaml --set seeds=[6,7,8,9,10] --set search.seed=11`."""
    raw, src = read(path)
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set seeds=[5,6,7]")
        try:
            value = yaml_value(text)
        except yaml.YAMLError as e:
            raise UserError(f"--set {item}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        parts = [int(x) if x.isdigit() else x for x in key.strip().split(".")]
        node = raw
        for i, part in enumerate(parts[:-1]):
            ok = isinstance(node, dict) or (isinstance(node, list) and isinstance(part, int) and part < len(node))
            if not ok:
                raise UserError(f"--set {item}: {'.'.join(map(str, parts[:i + 1]))} is not a mapping or a list index of this study")
            if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        if isinstance(node, list) and not (isinstance(parts[-1], int) and parts[-1] < len(node)):
            raise UserError(f"--set {item}: {parts[-1]} is not an index of the list {'.'.join(map(str, parts[:-1]))}")
        node[parts[-1]] = value
        src.lines[tuple(parts)] = (f"--set {key.strip()}", None)
    return raw, src


def load(path: str | Path, sets: list[str] | tuple = ()) -> Study:
    path = Path(path)
    raw, src = with_sets(path, sets)
    for key in ("name", "model", "experiments", "methods"):
        if key not in raw:
            raise UserError(f"{path}: missing field '{key}'")
    study = build(Study, raw, src)
    _check_grid(study.train, src, ("train",), train_only=True)
    for i, m in enumerate(study.methods):
        _check_grid(m, src, ("methods", i))
        if "lr" not in m:
            raise UserError(f"{src.at(('methods', i))}: methods[{i}]: missing field 'lr' (a list of learning rates)")
    if study.analysis and study.analysis.diversity:
        try:
            check_diversity(study.analysis.diversity)
        except UserError as e:
            raise UserError(f"{src.at(('analysis', 'diversity'))}: {e}") from None
    return study


def forgetting_tasks(study: Study) -> list[str]:
    """The study's forgetting tasks: as given, or the paper's three from the task registry."""
    return list(study.eval.forgetting) if study.eval.forgetting is not None else tasks.paper_forgetting()


def learning_tasks(study: Study, domain: str) -> list[str]:
    """The study's learning tasks of a domain: as given, or the registry's learning task of the domain."""
    return list(study.eval.learning.get(domain, [])) if study.eval.learning is not None else [tasks.learning_task(domain)]


def diversity_task(d: DiversitySpec, domain: str) -> str | None:
    """The task whose solutions are sampled in a domain: as given (null: none), or the domain's learning task."""
    return d.task.get(domain) if d.task is not None else tasks.learning_task(domain)


def check_diversity(d: DiversitySpec) -> None:
    """The sampling options of each task: the same checks as `learnforget analyze --diversity`."""
    for task in sorted({t for dom in DOMAINS if (t := diversity_task(d, dom)) is not None}):
        div.validate(task, d.problems, d.samples, d.temperature, d.top_p, d.batch_size, d.max_new_tokens, where="analysis.diversity.")


def _grid(entry: dict) -> list[tuple[dict, dict]]:
    """Expand list-valued fields of one methods entry into (method fields, train overrides) pairs."""
    method_keys = {f.name for f in fields(MethodConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    lists = {k: v if isinstance(v, list) and k not in NOT_A_GRID else [v] for k, v in entry.items() if k != "label"}
    out = []
    for combo in itertools.product(*lists.values()):
        values = dict(zip(lists, combo))
        out.append(({k: v for k, v in values.items() if k in method_keys}, {k: v for k, v in values.items() if k in train_keys}))
    return out


@dataclass
class PlannedRun:
    experiment: Experiment
    config: RunConfig
    family: str  # full | lora | full-regularized
    id: str
    role: str = "grid"  # grid (no search: every lr x every seed) | search (the lr grid on search.seed) | verdict (chosen lr x seeds)
    chosen: bool = True  # verdict runs: False while the learning rate is a stand-in (the search has not chosen yet)


LATER_FIELDS = (("train", "processes", 1), ("train", "distributed", "ddp"), ("data", "streaming", None), ("data", "chunk_chars", 0),
                ("data", "heldout_docs", 0), ("data", "heldout_selection", 0.0), ("data", "heldout_seed", 0))


def run_id(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d.pop("out")
    d["train"].pop("kl_reference")  # where the base reference lives, like `out`: not what the run is
    for part, key, default in LATER_FIELDS:  # added later: runs that do not use them keep their ids
        if d[part][key] == default:
            d[part].pop(key)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def heldout_key(cfg: RunConfig) -> str:
    """Hash of everything that decides a run's held-out rows: runs with the same key share the base model's
    held-out scores and KL reference."""
    data = asdict(cfg.data)
    for part, key, default in LATER_FIELDS:  # added later: keys of studies that do not set them are unchanged
        if part == "data" and data[key] == default:
            data.pop(key)
    spec = {"model": cfg.model, "data": data, "eval_tokens": cfg.train.eval_tokens, "extra_eval": cfg.train.extra_eval}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def label(cfg: RunConfig) -> str:
    """The method label of a run, with its weight decay (the weight-decay baselines are told apart by it)."""
    return cfg.method.label() + (f"-wd{cfg.train.weight_decay:g}" if cfg.train.weight_decay else "")


def expand(study: Study, root: Path, chosen: dict[tuple[str, str], float] | None = None) -> list[PlannedRun]:
    """The study's runs. Without `search`: every grid point with every seed. With it: each methods entry's lr grid on
    search.seed (a label with one lr skips it), then each label at its chosen lr with every seed; `chosen` maps
    (experiment, label) to that lr, and a label not in it gets the geometric middle of its grid as a stand-in
    (chosen=False: the dry run costs it, the study does not train it)."""
    runs = []
    for exp, entry in itertools.product(study.experiments, study.methods):
        points = [_planned(study, root, exp, m, t, seed) for m, t in _grid(entry) for seed in
                  ([study.search.seed] if study.search else study.seeds)]
        if study.search is None:
            runs += points
            continue
        by_label: dict[str, list[PlannedRun]] = {}
        for r in points:
            by_label.setdefault(label(r.config), []).append(r)
        for lab, rs in by_label.items():
            lrs = sorted({r.config.train.lr for r in rs})
            if len(lrs) > 1:
                runs += [replace(r, role="search") for r in rs]
            lr = (chosen or {}).get((exp.name, lab))
            stand_in = lrs[len(lrs) // 2] if len(lrs) % 2 else float((lrs[len(lrs) // 2 - 1] * lrs[len(lrs) // 2]) ** 0.5)
            proto = next(r for r in rs if r.config.train.lr == (lr if lr in lrs else lrs[0]))
            m, t = _fields_of(proto.config)
            for seed in study.seeds:
                v = _planned(study, root, exp, m, {**t, "lr": lr if lr is not None else (stand_in if len(lrs) > 1 else lrs[0])}, seed)
                runs.append(replace(v, role="verdict", chosen=lr is not None or len(lrs) == 1))
    return runs


def _fields_of(cfg: RunConfig) -> tuple[dict, dict]:
    """A planned run's method fields and its train overrides of the study's defaults (to plan it at another lr / seed)."""
    m = asdict(cfg.method)
    t = {k: v for k, v in asdict(cfg.train).items() if k in {f.name for f in fields(TrainConfig)}}
    for k in ("seed", "tokens", "epochs", "checkpoints", "eval_tokens", "extra_eval", "skip_base_eval", "kl_reference"):
        t.pop(k)
    return m, t


def _planned(study: Study, root: Path, exp: Experiment, method_fields: dict, train_over: dict, seed: int) -> PlannedRun:
    method = MethodConfig(**method_fields)
    train_fields = {**study.train, **train_over, "seed": seed, "tokens": exp.tokens, "epochs": exp.epochs,
                    "checkpoints": list(exp.checkpoints), "eval_tokens": study.eval.heldout_tokens,
                    "extra_eval": [study.eval.general] if study.eval.general else [],
                    "skip_base_eval": True}  # the base model's held-out losses: scored once per experiment
    train = TrainConfig(**train_fields)  # (YAML's betas list becomes the config's tuple)
    data = DataSpec(source=exp.data, regime=exp.regime, seq_len=study.seq_len, heldout_fraction=exp.heldout_fraction,
                    text_field=exp.text_field, prompt_field=exp.prompt_field, response_field=exp.response_field,
                    streaming=exp.streaming, chunk_chars=exp.chunk_chars, heldout_docs=exp.heldout_docs,
                    heldout_selection=exp.heldout_selection, heldout_seed=study.eval.seed if exp.heldout_docs else 0)
    cfg = RunConfig(model=study.model, data=data, method=method, train=train, out="")
    rid = run_id(cfg)
    cfg.out = str(root / "runs" / f"{exp.name}-{label(cfg)}-lr{train.lr:g}-s{seed}-{rid}")
    # the base model's top-k distributions on this experiment's held-out sets (study/evaluation.py)
    cfg.train.kl_reference = str(root / "evals" / f"reference-{exp.name}-{heldout_key(cfg)}")
    regularized = method.method == "full" and (train.weight_decay > 0 or method.attention_dropout > 0)
    return PlannedRun(exp, cfg, "full-regularized" if regularized else method.method, rid)


def status(out: str) -> str:
    """A run folder's training status: new, running (or killed), failed, done."""
    p = Path(out) / "run.json"
    return json.loads(p.read_text()).get("status", "running") if p.exists() else "new"
