"""Study evaluation and gathering: benchmark tasks per checkpoint (cached), and results.json.

Held-out losses (target domain and general text) come from the training runs themselves, which
score them at every checkpoint and at step 0 (the base model). Benchmark tasks are scored here,
once per (checkpoint, evaluation spec), cached as JSON under <study>/evals/.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from . import checkpoint

def _spec_key(study, tasks: list[str]) -> str:
    spec = {"tasks": sorted(tasks), "limit": study.eval.limit, "generation_limit": study.eval.generation_limit, "seed": study.eval.seed}
    if any(t.startswith("humaneval") for t in tasks):  # the prompt protocol decides the result too
        from .evaluate.tasks.humaneval import PROMPTS_VERSION

        spec["humaneval_prompts"] = PROMPTS_VERSION
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def tasks_for(study, domain: str) -> list[str]:
    return list(dict.fromkeys(list(study.eval.learning.get(domain, [])) + list(study.eval.forgetting)))


def _evaluate(model, tok, study, tasks: list[str]) -> dict:
    from .evaluate import runner

    results = runner.evaluate_tasks(model, tok, tasks, limit=study.eval.limit, generation_limit=study.eval.generation_limit,
                                    seed=study.eval.seed, batch_size=study.eval.batch_size)
    for r in results.values():
        if isinstance(r, dict):
            r.pop("samples", None)  # per-item generations stay out of the study cache; items (0/1) are kept
    return results


def _cached(path: Path, compute) -> dict:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # half-written by a killed study: recompute
            pass
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def evaluate_all(study, root: Path, runs) -> None:
    """The base model's held-out losses (once per experiment), then benchmark tasks for the base model
    (once per task set) and each chosen run's chosen checkpoints."""
    from tqdm.auto import tqdm

    from . import models
    from .analysis.spectrum import load_tuned

    heldout_todo = [r for r in _first_per_experiment(runs) if r.config.train.eval_tokens and not _heldout_path(root, r).exists()]
    todo = []
    for domain in sorted({r.experiment.domain for r in runs}):
        tasks = tasks_for(study, domain)
        if tasks:
            todo.append(("base", None, tasks))
    for r in chosen_runs(study, runs):
        tasks = tasks_for(study, r.experiment.domain)
        cks = checkpoint.complete(Path(r.config.out))
        chosen = cks if study.eval.tasks_at == "all" else cks[-1:]
        todo += [(r.id, ck, tasks) for ck in chosen if tasks]
    pending = [t for t in todo if not _eval_path(root, study, *t).exists()]
    if not (pending or heldout_todo):
        return
    base, tok = models.load(study.model)
    for r in heldout_todo:
        print(f"[study] base model: held-out losses for {r.experiment.name}", flush=True)
        _cached(_heldout_path(root, r), lambda: _score_heldout(base, tok, r.config))
    for rid, ck, tasks in tqdm(pending, desc="[study] evaluating checkpoints", unit="ckpt"):
        path = _eval_path(root, study, rid, ck, tasks)
        if ck is None:
            _cached(path, lambda: _evaluate(base, tok, study, tasks))
        else:
            model = load_tuned(base, ck)
            merged = hasattr(model, "merge_and_unload")
            if merged:
                model = model.merge_and_unload()  # same numbers, faster scoring; recorded as adapter_merged
            _cached(path, lambda: {**_evaluate(model, tok, study, tasks), "_adapter_merged": merged})


def _first_per_experiment(runs) -> list:
    seen: dict[str, object] = {}
    for r in runs:
        seen.setdefault(r.experiment.name, r)
    return list(seen.values())


def _heldout_path(root: Path, r) -> Path:
    """Cache key of the base model's held-out losses: everything that decides the held-out rows."""
    c = r.config
    spec = {"model": c.model, "data": asdict(c.data), "eval_tokens": c.train.eval_tokens, "extra_eval": c.train.extra_eval}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return root / "evals" / f"base-heldout-{r.experiment.name}-{key}.json"


def _score_heldout(model, tok, cfg) -> dict:
    from .evaluate.perplexity import mean_loss
    from .train import heldout_sets

    return {name: mean_loss(model, ids, labels, batch_size=cfg.train.eval_batch)
            for name, (ids, labels) in heldout_sets(cfg, tok).items()}


def _final_target_loss(run_dir: Path) -> float | None:
    rows = [e for e in _heldout_rows(run_dir) if "target" in e["eval"]]
    return rows[-1]["eval"]["target"]["loss"] if rows else None


def _label(r) -> str:
    return r.config.method.label() + (f"-wd{r.config.train.weight_decay:g}" if r.config.train.weight_decay else "")


def chosen_runs(study, runs) -> list:
    """The runs that get benchmark tasks: all, or (tasks_runs: best_lr) per (experiment, method) the
    learning rate whose final held-out target loss, averaged over seeds, is lowest."""
    if study.eval.tasks_runs == "all":
        return list(runs)
    losses: dict[tuple, dict[float, list[float]]] = {}
    for r in runs:
        loss = _final_target_loss(Path(r.config.out)) if (Path(r.config.out) / "metrics.jsonl").exists() else None
        if loss is not None:
            losses.setdefault((r.experiment.name, _label(r)), {}).setdefault(r.config.train.lr, []).append(loss)
    best = {k: min(v, key=lambda lr: sum(v[lr]) / len(v[lr])) for k, v in losses.items()}
    return [r for r in runs if best.get((r.experiment.name, _label(r))) == r.config.train.lr]


def _eval_path(root: Path, study, rid: str, ck: Path | None, tasks: list[str]) -> Path:
    """Cache key: the checkpoint (run id + folder) and the evaluation spec (tasks, limits, seed)."""
    name = "base" if ck is None else f"{rid}-{ck.name}"
    return root / "evals" / f"{name}-{_spec_key(study, tasks)}.json"


def _heldout_rows(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval" in row:
            rows.append(row)
    return rows


def _task_result(name: str, res: dict) -> dict:
    # "exact_match,strict-match" -> "exact_match": the report names metrics without lm-eval's filter suffix
    return {"metric": res["metric"].split(",")[0], "value": res["value"], "stderr": res["stderr"], "n": res["n"],
            "chance": res.get("chance"), "items": res["items"]}


def gather(study, root: Path, runs) -> dict:
    from .study import flops_per_token

    base_tasks: dict = {}
    for domain in sorted({r.experiment.domain for r in runs}):
        p = _eval_path(root, study, "base", None, tasks_for(study, domain))
        if p.exists():
            base_tasks.update({k: _task_result(k, v) for k, v in json.loads(p.read_text()).items() if not k.startswith("_")})
    base_heldout: dict = {}
    for r in _first_per_experiment(runs):
        p = _heldout_path(root, r)
        if p.exists():
            for k, v in json.loads(p.read_text()).items():
                key = f"{r.experiment.regime}-{r.experiment.domain}" if k == "target" else "general" if k == study.eval.general else k
                base_heldout.setdefault(key, {"loss": v["loss"], "tokens": v["tokens"]})
    out_runs = []
    for r in runs:
        run_dir = Path(r.config.out)
        info = json.loads((run_dir / "run.json").read_text())
        evals = _heldout_rows(run_dir)
        step0 = next((e for e in evals if e["step"] == 0), None)
        if step0:  # a run that scored the base model itself at step 0 (skip_base_eval off)
            for k, v in step0["eval"].items():
                key = f"{r.experiment.regime}-{r.experiment.domain}" if k == "target" else "general" if k == study.eval.general else k
                base_heldout.setdefault(key, {"loss": v["loss"], "tokens": v["tokens"]})
        params = info["parameters"]
        fpt = flops_per_token(params["total"], params["trainable"], r.config.method.method == "full", 0, 0, 0)
        cks = []
        for ck in checkpoint.complete(run_dir):
            man = checkpoint.manifest(ck)
            row = next((e for e in evals if e["step"] == man["step"]), {"eval": {}})
            heldout = {("target" if k == "target" else "general" if k == study.eval.general else k): {"loss": v["loss"], "tokens": v["tokens"]}
                       for k, v in row["eval"].items()}
            p = _eval_path(root, study, r.id, ck, tasks_for(study, r.experiment.domain))
            tasks = {k: _task_result(k, v) for k, v in json.loads(p.read_text()).items() if not k.startswith("_")} if p.exists() else {}
            cks.append({"tokens": man["tokens"], "budget": man.get("tokens", man.get("epochs")), "flops": fpt * man["tokens"],
                        "heldout": heldout, "tasks": tasks})
        m = r.config.method
        out_runs.append({
            "id": r.id, "label": _label(r),
            "family": r.family, "regime": r.experiment.regime, "domain": r.experiment.domain, "experiment": r.experiment.name,
            "lr": r.config.train.lr, "rank": m.rank if m.method == "lora" else None, "targets": m.targets if m.method == "lora" else None,
            "seed": r.config.train.seed, "trainable_params": params["trainable"], "total_params": params["total"],
            "peak_rss_mb": info.get("peak_rss_mb"), "tokens_per_s": info.get("tokens_per_s_this_session"), "checkpoints": cks,
        })
    note = "Q4 GGUF dequantised to fp32" if study.model in ("smollm2-135m", "gemma3-270m") else ""
    return {
        "version": 1,
        "study": {"name": study.name, "model": study.model, "model_note": note, "created": datetime.now(timezone.utc).isoformat(),
                  "hardware": f"{platform.machine()} {platform.processor() or ''} {_cpu_count()} CPUs".strip(), "config": asdict(study)},
        "base": {"tasks": base_tasks, "heldout": base_heldout},
        "runs": out_runs,
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))
