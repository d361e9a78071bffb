"""results.json (schema version 2, described in report/schema.py) from the run folders and the cached
evaluations and analyses; and `best_lr`, the one rule for "each method's best learning rate"."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import advice, checkpoint, stats
from ..analysis import diversity as div
from ..config import DOMAINS, Study
from ..data import sources
from ..evaluate import tasks as registry
from . import cache
from .cost import flops_per_token
from .plan import PlannedRun, diversity_task, label, status


def failure(row: dict, base_heldout: dict) -> str | None:
    """Why a run failed, or None: its final held-out target loss is not finite (diverged) or is above the base
    model's beyond the 95% interval of the paired difference. A failed run says its learning rate was wrong,
    not how its method learns: it is kept out of every verdict and of the best-learning-rate choice."""
    final = max(row["checkpoints"], key=lambda c: c["tokens"], default=None)
    held = (final or {}).get("heldout", {})
    name = "select" if "select" in held else "target"  # the selection documents decide, where the study has them
    t = held.get(name)
    if t is None:
        return None
    if not np.isfinite(t["loss"]):
        return f"diverged: final held-out {name} loss {t['loss']}"
    key = f"{row['regime']}-{row['domain']}" + (":select" if name == "select" else "")
    base = base_heldout.get(key)
    if base is None or len(base["units"]["tokens"]) != len(t["units"]["tokens"]):
        return None
    b = stats.Units.of(key, base["units"]["loss"], base["units"]["tokens"])
    f = stats.Units.of(key, t["units"]["loss"], t["units"]["tokens"])
    lo, hi = stats.interval(f.boot() - b.boot())
    if lo > 0:
        return (f"worse than the base model: final held-out {name} loss {f.value:.4f} vs {b.value:.4f} "
                f"(difference {f.value - b.value:+.4f} [{lo:+.4f}, {hi:+.4f}])")
    return None


def choose_lrs(study: Study, root: Path, runs: list[PlannedRun]) -> dict[tuple[str, str], float]:
    """(experiment, label) -> the learning rate its verdict runs train at: best_lr over the search runs, which read the
    selection documents (data.heldout_selection) where the study has them. Labels with one lr are not searched."""
    search = [r for r in runs if r.role == "search" and status(r.config.out) == "done"]
    if not search:
        return {}
    rows = [run_row(study, root, r) for r in search]
    mark_best(rows, base_results(study, root, runs))
    out = {}
    for row in rows:
        if row["best_lr"]:
            out[(row["experiment"], row["label"])] = float(row["lr"])
            if row["best_lr_edge"]:
                print(f"[study] {row['experiment']}: {row['label']}'s best lr {row['lr']:g} is the {row['best_lr_edge']} edge of its "
                      f"grid: the optimum may lie beyond it", flush=True)
    return out


def best_lr(runs: list[dict], base_tasks: dict) -> dict[str, str | None]:
    """The runs at their method's best learning rate, each id -> None, or "low"/"high" when that lr is the edge of
    its grid (the optimum was not bracketed). Per (experiment, method label), the lr with the best final
    learning-task metric if the base model was scored on one (its domain's learning task); ties or no metric:
    the lowest final held-out target loss; both averaged over seeds. Failed runs (row["failed"]) and runs
    without a held-out target loss at their final checkpoint are not ranked."""
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for r in runs:
        groups.setdefault((r["experiment"], r["label"]), {}).setdefault(float(r["lr"]), []).append(r)
    best: dict[str, str | None] = {}
    for (_, _label), by_lr in groups.items():
        chosen, top = None, None
        for lr, rs in sorted(by_lr.items()):  # ascending: on a tie the lower lr stays
            if any(r.get("failed") for r in rs):
                continue
            score = _final_score(rs, registry.learning_task(rs[0]["domain"]), base_tasks)
            if score is not None and (top is None or score > top):
                chosen, top = rs, score
        if chosen:
            lrs, lr = sorted(by_lr), float(chosen[0]["lr"])
            edge = None if len(lrs) < 2 else "low" if lr == lrs[0] else "high" if lr == lrs[-1] else None
            best |= {r["id"]: edge for r in chosen}
    return best


def mark_best(rows: list[dict], base: dict) -> set[str]:
    """Set each row's `failed` (failure), `best_lr` and `best_lr_edge` (best_lr); return the best ids. In a study
    with a search, the best are the verdict runs (their lr was chosen on the search runs) and the edge is the search's."""
    for row in rows:
        row["failed"] = failure(row, base["heldout"])
    if any(r.get("role") == "verdict" for r in rows):
        searched = best_lr([r for r in rows if r.get("role") == "search"], base["tasks"])
        edge = {(r["experiment"], r["label"]): e for r in rows if (e := searched.get(r["id"]))}
        for row in rows:
            row["best_lr"] = row.get("role") == "verdict"
            row["best_lr_edge"] = edge.get((row["experiment"], row["label"])) if row["best_lr"] else None
        return {r["id"] for r in rows if r["best_lr"]}
    best = best_lr(rows, base["tasks"])
    for row in rows:
        row["best_lr"] = row["id"] in best
        row["best_lr_edge"] = best.get(row["id"])
    return set(best)


def _final_score(rs: list[dict], task: str | None, base_tasks: dict) -> tuple | None:
    """(learning metric or -inf, -target loss) at the last checkpoint, seeds averaged item by item."""
    cks = [c for r in rs for c in r["checkpoints"]]
    if not cks:
        return None
    final = [c for c in cks if c["tokens"] == max(c["tokens"] for c in cks)]
    name = "select" if all("select" in c["heldout"] for c in final) else "target"  # selection documents where there are
    if any(name not in c["heldout"] for c in final):
        return None
    metric = -np.inf
    if task in base_tasks and all(task in c["tasks"] for c in final):
        metric = float(np.mean(np.mean([np.asarray(c["tasks"][task]["items"], float) for c in final], axis=0)))
    return metric, -float(np.mean([c["heldout"][name]["loss"] for c in final]))


def task_result(res: dict) -> dict:
    # "exact_match,strict-match" -> "exact_match": the report names metrics without lm-eval's filter suffix
    return {"metric": res["metric"].split(",")[0], "value": res["value"], "stderr": res["stderr"], "n": res["n"],
            "chance": res.get("chance"), "items": res["items"]}


def _tasks(path: Path) -> dict:
    return {k: task_result(v) for k, v in (cache.read(path) or {}).items() if not k.startswith("_")}


def _heldout_key(study: Study, r: PlannedRun, name: str) -> str:
    """base.heldout's key of a held-out set: "<regime>-<domain>" for the target split, "general" for general text."""
    target = f"{r.experiment.regime}-{r.experiment.domain}"
    return target if name == "target" else f"{target}:select" if name == "select" else "general" if name == study.eval.general else name


def heldout_entry(v: dict) -> dict:
    """A held-out set's results.json entry: mean loss, tokens, KL drift if scored, entropy, and the per-document units."""
    return {k: v[k] for k in ("loss", "tokens", "kl", "entropy", "units") if k in v}


def base_results(study: Study, root: Path, runs: list[PlannedRun]) -> dict:
    tasks: dict = {}
    for domain in sorted({r.experiment.domain for r in runs}):
        tasks.update(_tasks(cache.eval_path(root, study, "base", None, cache.tasks_for(study, domain))))
    heldout: dict = {}
    for r in cache.first_per_experiment(runs):
        for k, v in (cache.read(cache.heldout_path(root, r)) or {}).items():
            heldout.setdefault(_heldout_key(study, r, k), heldout_entry(v))
    for r in runs:  # a run that scored the base model itself at step 0 (skip_base_eval off)
        step0 = next((e for e in cache.metric_rows(Path(r.config.out)) if e["step"] == 0), None)
        for k, v in (step0["eval"] if step0 else {}).items():
            heldout.setdefault(_heldout_key(study, r, k), heldout_entry(v))
    return {"tasks": tasks, "heldout": heldout}


def run_row(study: Study, root: Path, r: PlannedRun) -> dict:
    """A run's results.json row: its checkpoints with held-out losses and (cached) benchmark tasks."""
    run_dir = Path(r.config.out)
    info = json.loads((run_dir / "run.json").read_text())
    evals = cache.metric_rows(run_dir)
    params = info["parameters"]
    fpt = flops_per_token(params["total"], params["trainable"], r.config.method.method == "full", 0, 0, 0)
    cks = []
    for ck in checkpoint.complete(run_dir):
        man = checkpoint.manifest(ck)
        row = next((e for e in evals if e["step"] == man["step"]), {"eval": {}})
        heldout = {("target" if k == "target" else "general" if k == study.eval.general else k): heldout_entry(v)
                   for k, v in row["eval"].items()}
        tasks = _tasks(cache.eval_path(root, study, r.id, ck, cache.tasks_for(study, r.experiment.domain)))
        cks.append({"tokens": man["tokens"], "budget": man.get("tokens", man.get("epochs")), "flops": fpt * man["tokens"],
                    "heldout": heldout, "tasks": tasks})
    m = r.config.method
    return {
        "id": r.id, "label": label(r.config), "role": r.role, "documents": info.get("documents"),
        "family": r.family, "regime": r.experiment.regime, "domain": r.experiment.domain, "experiment": r.experiment.name,
        "lr": r.config.train.lr, "rank": m.rank if m.method == "lora" else None, "targets": m.targets if m.method == "lora" else None,
        "alpha": m.alpha if m.method == "lora" else None,
        "seed": r.config.train.seed, "trainable_params": params["trainable"], "total_params": params["total"],
        "peak_rss_mb": info.get("peak_rss_mb"), "tokens_per_s": info.get("tokens_per_s_this_session"), "checkpoints": cks,
        "schedule": {"budget_tokens": r.config.train.tokens, "step_tokens": r.config.data.seq_len * max(1, r.config.train.batch_tokens // r.config.data.seq_len),
                     "warmup": r.config.train.warmup} if r.config.train.tokens else None,  # advise --backtest: the learning-rate clock
    }


def analysis_rows(study: Study, root: Path, runs: list[PlannedRun]) -> dict:
    """results.json's `analysis` from the cached files of the current options ({} without an analysis block)."""
    an = study.analysis
    if an is None:
        return {}
    out: dict = {}
    for on, name, path in ((an.spectrum, "spectrum", cache.spectrum_path), (an.intruders, "intruders", cache.intruders_path)):
        if on:
            out[name] = [row for r in runs for ck in cache.analysis_checkpoints(an, r)
                         for row in (cache.read(path(root, an, r.id, ck)) or {"rows": []})["rows"]]
    if an.diversity is not None:
        d, rows = an.diversity, []
        for task in sorted({t for r in runs if (t := diversity_task(d, r.experiment.domain))}):
            if (res := cache.read(cache.diversity_path(root, d, task, "base", None))) is not None:
                rows.append(div.row(res, "base", 0))
        for r in runs:
            cks, task = checkpoint.complete(Path(r.config.out)), diversity_task(d, r.experiment.domain)
            if cks and task and (res := cache.read(cache.diversity_path(root, d, task, r.id, cks[-1]))) is not None:
                rows.append(div.row(res, r.id, cache.tokens(cks[-1])))
        out["diversity"] = rows
    return out


def gather(study: Study, root: Path, runs: list[PlannedRun]) -> dict:
    """The whole results.json; each run row flags `best_lr` (the report's best-lr series read it)."""
    base = base_results(study, root, runs)
    rows = [run_row(study, root, r) for r in runs]
    mark_best(rows, base)
    note = "Q4 GGUF dequantised to fp32" if study.model in ("smollm2-135m", "gemma3-270m") else ""
    results = {
        "version": 2,
        "design": design(study, runs, base),
        "study": {"name": study.name, "model": study.model, "model_note": note, "created": datetime.now(timezone.utc).isoformat(),
                  "hardware": f"{platform.machine()} {platform.processor() or ''} {len(os.sched_getaffinity(0))} CPUs".strip(),
                  "config": asdict(study)},
        "tasks": {"learning": {d: registry.learning_task(d) for d in DOMAINS}, "paper": registry.paper_forgetting()},
        "margins": dict(study.eval.margins),
        "base": base,
        "runs": rows,
    }
    analysis = analysis_rows(study, root, runs)
    if analysis:
        results["analysis"] = analysis
    if study.forecast is not None:
        results["forecast"] = forecast_rows(study, base, rows)
    return results


def design(study: Study, runs: list[PlannedRun], base: dict) -> dict:
    """What the verdicts rest on: seeds, the learning-rate search, and per experiment the corpus's content hash and the
    held-out documents of each set (the selection ones apart)."""
    from ..data.corpora import corpus_hash
    from ..data.stream import STREAM_ABOVE

    exps = {}
    for r in cache.first_per_experiment(runs):
        e, key = r.experiment, f"{r.experiment.regime}-{r.experiment.domain}"
        embedded = e.data in sources.EMBEDDED_DOCS | sources.EMBEDDED_RECORDS
        local = [] if embedded else sources.corpus_paths(e.data)
        small = embedded or (bool(local) and sum(p.stat().st_size for p in local) <= STREAM_ABOVE)
        h = corpus_hash(r.config.data) if small and not e.streaming else None  # a hub or streamed corpus is not read again
        exps[e.name] = {"corpus_hash": h, "chunk_chars": e.chunk_chars,
                        "heldout_documents": {k: len(v["units"]["tokens"]) for k, v in base["heldout"].items()
                                              if k in (key, f"{key}:select", "general")}}
    return {"seeds": list(study.seeds), "search_seed": study.search.seed if study.search else None, "experiments": exps}


def forecast_rows(study: Study, base: dict, rows: list[dict]) -> dict:
    """results.json's `forecast`: every run with a token budget fitted on its first `fraction`, scored at its later
    checkpoints (advice.backtest), per experiment against its own base model scores."""
    fraction, out = study.forecast.fraction, []
    general = base["heldout"].get("general")
    for e in study.experiments:
        target = base["heldout"].get(f"{e.regime}-{e.domain}")
        mine = [r for r in rows if r["experiment"] == e.name and r.get("schedule")]
        if target and general and mine:
            out += advice.backtest(mine, {"target": target, "general": general}, fraction)
    return {"fraction": fraction, "rows": out, "summary": advice.backtest_summary(out)}

