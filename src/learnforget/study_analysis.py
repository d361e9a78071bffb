"""The study's analysis stage: spectra and intruder dimensions of the weight updates, and the diversity
of sampled solutions, cached under <study>/analysis/ and gathered into results.json's `analysis`.

    analysis:
      spectrum: true          # rank@90% of ΔW per module, every run's final checkpoint (LoRA: ΔW = B·A·scale)
      intruders: true         # intruder dimensions (arXiv 2410.21228): top-k tuned directions far from all base ones
      diversity:              # costly (sampling + sandbox): base + best-lr full and LoRA runs by default
        task: {code: humaneval, math: gsm8k}   # or one task for every experiment
        problems: 20
        samples: 8
        temperature: 0.8

Each result is a JSON file named by what decides it (run id + checkpoint + a hash of the options), so a
re-run computes only what is missing, like the evaluations in study_eval.py. The rows have the shape
report.py and stats.py read: spectrum {run_id, tokens, module, module_type, layer, rank90, full_rank},
intruders {run_id, tokens, k, eps, count} (one row per eps, summed over modules), diversity
{run_id ("base" for the base model), tokens, task, n, distinct, distinct_correct, pass_at_k, items}.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import checkpoint
from .analysis import diversity as div
from .errors import UserError

DIVERSITY_TASKS = {"code": "humaneval", "math": "gsm8k"}
FRACTION = 0.9  # the paper's rank@90%: the rows call it rank90


@dataclass
class DiversitySpec:
    task: str | dict = field(default_factory=lambda: dict(DIVERSITY_TASKS))  # one task, or per domain (null: none)
    problems: int = 20  # a seeded fixed sample, shared by every model
    samples: int = 8  # per problem: pass@k for k in 1, n/2, n
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0  # of the problem sample and of the sampling
    max_new_tokens: int | None = None  # default: 512 humaneval, 256 gsm8k
    batch_size: int = 8  # part of the cache key: sampled tokens depend on how sequences are batched
    runs: str = "best_lr"  # best_lr: per experiment, the full and LoRA runs the report compares | all
    methods: list[str] | None = None  # only these method labels (e.g. [full, lora-r16-all]): sampling is costly
    base: bool = True  # also the base model (the reference the collapse is measured against)

    def __post_init__(self):
        where = "analysis.diversity."
        if isinstance(self.task, str):
            self.task = {d: self.task for d in DIVERSITY_TASKS}
        if not isinstance(self.task, dict) or set(self.task) - set(DIVERSITY_TASKS):
            raise UserError(f"{where}task: a task name or a mapping {{code: ..., math: ...}}, got {self.task!r}")
        for domain, task in self.task.items():
            if task is not None:
                div.validate(task, self.problems, self.samples, self.temperature, self.top_p, self.batch_size,
                             self.max_new_tokens, where=where)
        if self.methods is not None and not (isinstance(self.methods, list) and all(isinstance(m, str) for m in self.methods)):
            raise UserError(f"{where}methods: a list of method labels (e.g. [full, lora-r16-all]), got {self.methods!r}")
        if self.runs not in ("best_lr", "all"):
            raise UserError(f"{where}runs: best_lr or all, got {self.runs!r}")
        if not isinstance(self.base, bool):
            raise UserError(f"{where}base: true or false, got {self.base!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise UserError(f"{where}seed: an integer, got {self.seed!r}")

    def task_for(self, domain: str) -> str | None:
        return self.task.get(domain)


@dataclass
class AnalysisSpec:
    spectrum: bool = False
    intruders: bool = False
    diversity: DiversitySpec | bool | dict | None = None  # true: defaults; a mapping: DiversitySpec fields
    checkpoints: str = "final"  # final | all: which checkpoints get spectrum and intruders (diversity: final)
    svd: str = "gram"  # gram (eigenvalues of the Gram matrix, ~2x faster; rank@90% is unaffected) | svd
    k: int = 10  # intruders: top-k singular vectors of each tuned weight
    eps: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])  # intruder thresholds

    def __post_init__(self):
        for name in ("spectrum", "intruders"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"analysis.{name}: true or false, got {getattr(self, name)!r}")
        if self.diversity is True:
            self.diversity = DiversitySpec()
        elif self.diversity is False:
            self.diversity = None
        elif isinstance(self.diversity, dict):
            known = {f.name for f in fields(DiversitySpec)}
            unknown = sorted(set(self.diversity) - known)
            if unknown:
                raise UserError(f"analysis.diversity: unknown field(s) {unknown}; known: {sorted(known)}")
            self.diversity = DiversitySpec(**self.diversity)
        elif self.diversity is not None and not isinstance(self.diversity, DiversitySpec):
            raise UserError(f"analysis.diversity: true, false or a mapping, got {self.diversity!r}")
        if self.checkpoints not in ("final", "all"):
            raise UserError(f"analysis.checkpoints: final or all, got {self.checkpoints!r}")
        if self.svd not in ("gram", "svd"):
            raise UserError(f"analysis.svd: gram or svd, got {self.svd!r}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise UserError(f"analysis.k: an integer >= 1, got {self.k!r}")
        if not isinstance(self.eps, list) or not self.eps or not all(isinstance(e, (int, float)) and 0 < e <= 1 for e in self.eps):
            raise UserError(f"analysis.eps: a list of thresholds in (0, 1], got {self.eps!r}")


# ----------------------------------------------------------------------------- cache paths


def _key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _spectrum_path(root: Path, an: AnalysisSpec, rid: str, ck: Path) -> Path:
    return root / "analysis" / f"spectrum-{rid}-{ck.name}-{_key({'fraction': FRACTION, 'svd': an.svd})}.json"


def _intruders_path(root: Path, an: AnalysisSpec, rid: str, ck: Path) -> Path:
    return root / "analysis" / f"intruders-{rid}-{ck.name}-{_key({'k': an.k, 'eps': [float(e) for e in an.eps]})}.json"


def _diversity_path(root: Path, d: DiversitySpec, task: str, rid: str, ck: Path | None) -> Path:
    spec = {"task": task, **{k: v for k, v in asdict(d).items() if k not in ("task", "runs", "base", "methods")}}
    if task == "humaneval":
        from .evaluate.tasks.humaneval import PROMPTS_VERSION

        spec["prompts"] = PROMPTS_VERSION
    name = "base" if ck is None else f"{rid}-{ck.name}"
    return root / "analysis" / f"diversity-{name}-{_key(spec)}.json"


def _checkpoints(an: AnalysisSpec, r) -> list[Path]:
    cks = checkpoint.complete(Path(r.config.out))
    return cks if an.checkpoints == "all" else cks[-1:]


def _tokens(ck: Path) -> int:
    return int(checkpoint.manifest(ck)["tokens"])


# ----------------------------------------------------------------------------- computing


def _spectrum_rows(deltas: dict, rid: str, tokens: int, method: str) -> list[dict]:
    from .analysis import spectrum

    rows = spectrum.spectrum(deltas, fraction=FRACTION, base=False, random=False, method=method)
    return [{"run_id": rid, "tokens": tokens, "module": r["module"], "module_type": r["type"], "layer": r["layer"],
             "rank90": r["rank"], "full_rank": r["full_rank"], "delta_fro": r["delta_fro"]} for r in rows]


def _intruder_rows(deltas: dict, rid: str, tokens: int, an: AnalysisSpec, base_U: dict) -> list[dict]:
    from .analysis import intruders

    missing = {n: d for n, d in deltas.items() if n not in base_U}
    if missing:  # the base's singular vectors: most of the cost, shared by every checkpoint
        base_U.update(intruders.base_vectors(missing))
    res = intruders.intruders(deltas, k=an.k, eps=tuple(an.eps), base_U=base_U)
    return [{"run_id": rid, "tokens": tokens, "k": res["k"], "eps": float(e), "count": res["total"][e],
             "directions": sum(m["k"] for m in res["modules"]), "by_type": {t: c[e] for t, c in res["by_type"].items()}}
            for e in res["total"]]


def _diversity_runs(study, root: Path, runs) -> list:
    """The runs whose final checkpoint gets sampled: all, or (best_lr) the full and LoRA runs at the
    learning rate the report picks (best final learning metric; without one, lowest held-out target loss)."""
    d = study.analysis.diversity
    if d.runs == "all":
        return [r for r in runs if d.methods is None or r.config.method.label() in d.methods]
    from . import report, study_eval

    try:
        best = report.analyse(report.validate(study_eval.gather(study, root, runs)))["best"]
    except UserError as e:  # e.g. a run without checkpoints: fall back to every run, and say so
        print(f"[study] analysis: cannot pick the best learning rates ({e}); sampling every run", flush=True)
        return list(runs)
    keep = {rid for s in best if s["family"] in ("full", "lora") and (d.methods is None or s["label"] in d.methods)
            for rid in s["run_ids"]}
    return [r for r in runs if r.id in keep]


def run(study, root: Path, runs) -> None:
    """Compute what the study's `analysis:` block asks for and is not cached yet. No block: nothing."""
    an = study.analysis
    if an is None:
        return
    todo = []  # (run, checkpoint) pairs with spectrum or intruders missing
    for r in runs:
        for ck in _checkpoints(an, r):
            if (an.spectrum and not _spectrum_path(root, an, r.id, ck).exists()) or \
                    (an.intruders and not _intruders_path(root, an, r.id, ck).exists()):
                todo.append((r, ck))
    div_todo = []  # (run id, checkpoint or None for the base model, task)
    if an.diversity is not None:
        d = an.diversity
        chosen = _diversity_runs(study, root, runs)
        tasks = sorted({t for r in chosen if (t := d.task_for(r.experiment.domain))})
        if d.base:
            div_todo += [("base", None, t) for t in tasks]
        for r in chosen:
            cks = checkpoint.complete(Path(r.config.out))
            task = d.task_for(r.experiment.domain)
            if cks and task:
                div_todo.append((r.id, cks[-1], task))
        div_todo = [t for t in div_todo if not _diversity_path(root, d, t[2], t[0], t[1]).exists()]
    if not (todo or div_todo):
        return

    import time

    import torch

    from . import models
    from .analysis import spectrum
    from .study_eval import _cached

    base, tok = models.load(study.model)
    base_U: dict = {}
    for i, (r, ck) in enumerate(todo, 1):
        t0 = time.time()
        tuned = spectrum.load_tuned(base, ck)
        deltas = spectrum.weight_deltas(base, tuned)
        tokens = _tokens(ck)
        bad = [n for n, (_, d) in deltas.items() if not bool(torch.isfinite(d).all())]
        if bad:  # a diverged run: no spectrum exists; say so and go on with the others (nothing is cached)
            print(f"[study] analysis: skipping {Path(r.config.out).name}/{ck.name}: its update has NaN/inf in "
                  f"{len(bad)} matrices (e.g. {bad[0]}); the run diverged", flush=True)
            continue
        if an.spectrum:
            _cached(_spectrum_path(root, an, r.id, ck), lambda: {"rows": _spectrum_rows(deltas, r.id, tokens, an.svd)})
        if an.intruders:
            _cached(_intruders_path(root, an, r.id, ck), lambda: {"rows": _intruder_rows(deltas, r.id, tokens, an, base_U)})
        print(f"[study] analysis {i}/{len(todo)}: spectrum/intruders of {Path(r.config.out).name}/{ck.name} "
              f"({time.time() - t0:.1f} s)", flush=True)
        del tuned, deltas
    base_U.clear()
    d = an.diversity
    for i, (rid, ck, task) in enumerate(div_todo, 1):
        t0 = time.time()
        model = base
        if ck is not None:
            model = spectrum.load_tuned(base, ck)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()  # same outputs, faster sampling
        _cached(_diversity_path(root, d, task, rid, ck),
                lambda: div.run(model, tok, task, d.problems, d.samples, d.temperature, d.top_p, d.seed, d.batch_size,
                                d.max_new_tokens))
        print(f"[study] analysis: diversity {i}/{len(div_todo)} ({task}, {'base model' if ck is None else ck.parent.parent.name}) "
              f"{time.time() - t0:.0f} s", flush=True)


# ----------------------------------------------------------------------------- gathering


def gather(study, root: Path, runs) -> dict:
    """results.json's `analysis` from the cached files of the current options ({} without an analysis block)."""
    an = study.analysis
    if an is None:
        return {}
    out: dict = {}
    if an.spectrum or an.intruders:
        spec, intr = [], []
        for r in runs:
            for ck in _checkpoints(an, r):
                for on, path, rows in ((an.spectrum, _spectrum_path(root, an, r.id, ck), spec),
                                       (an.intruders, _intruders_path(root, an, r.id, ck), intr)):
                    if on and path.exists():
                        rows += json.loads(path.read_text())["rows"]
        if an.spectrum:
            out["spectrum"] = spec
        if an.intruders:
            out["intruders"] = intr
    if an.diversity is not None:
        d, rows = an.diversity, []
        tasks = sorted({t for r in runs if (t := d.task_for(r.experiment.domain))})
        for task in tasks:
            p = _diversity_path(root, d, task, "base", None)
            if p.exists():
                rows.append(div.row(json.loads(p.read_text()), "base", 0))
        for r in runs:
            cks = checkpoint.complete(Path(r.config.out))
            task = d.task_for(r.experiment.domain)
            if cks and task and (p := _diversity_path(root, d, task, r.id, cks[-1])).exists():
                rows.append(div.row(json.loads(p.read_text()), r.id, _tokens(cks[-1])))
        out["diversity"] = rows
    return out
