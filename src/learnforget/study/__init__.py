"""A study: a YAML grid of experiments x methods x learning rates x seeds, expanded to runs, trained,
evaluated, analysed, gathered into results.json, and reported.

    learnforget study configs/demo-cpu.yaml [--dry-run] [--out runs/studies] [--executor ray]

    plan.py        the YAML read and checked, the grid expanded to runs (ids: hash of the resolved RunConfig)
    cost.py        FLOPs, time and memory estimates (--dry-run); probe.py: its clock, timed on this machine
    gpu_plan.py    a GPU study's plan (--dry-run): memory per GPU, speed on the GPUs of gpus.py, launch commands
    power.py       the smallest difference each signal can detect (--dry-run)
    training.py    train the pending runs here; executors.py: or as Ray tasks
    evaluation.py  the base model's held-out scores and KL references (before training), benchmark tasks per checkpoint
    analyse.py     spectrum, intruders, diversity
    cache.py       where each stage's results live, named by the hash of their inputs
    gather.py      results.json, and best_lr: each method's best learning rate

Every stage is cached by the hash of its inputs: a run folder is named by the hash of its resolved
RunConfig (train.run resumes it from its last checkpoint, or skips it when done); an evaluation is
stored under the hash of (checkpoint, evaluation spec). So a re-run does only what changed, an
interrupted study resumes, and adding one rank to the YAML trains just that rank.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from .. import locks
from . import analyse, cost, evaluation, gather, gpu_plan, plan, power, probe, regret_plan, training


def main(args) -> int:
    study = plan.load(args.config, getattr(args, "set", None) or ())
    root = Path(args.out) / study.name
    runs = plan.expand(study, root)
    if args.dry_run:
        clock = None
        if runs and (probe.local(study.model) if getattr(args, "probe", None) is None else args.probe):
            print(f"[dry-run] timing {probe.STEPS} steps of each kind of run on this machine ...", flush=True)
            clock = probe.measure(study, runs, probe.threads_per_run(study))
        plan_rows = cost.dry_run(study, runs, clock)
        gpu = study.executor.num_gpus > 0  # a GPU study: the table is for this machine, the GPU plan follows
        if gpu:
            print("On this machine (fp32, one process a run):")
        cost.print_plan(plan_rows, cost.study_seconds(study, runs, plan_rows, clock) if clock else None, clock)
        if gpu:
            gpu_plan.print_plan(study, gpu_plan.plan(study, runs, plan_rows))
        print("\nLoRA Without Regret checks this grid can make (report claims h-k):")
        for line in regret_plan.checks(runs, {r.id: row["trainable"] for r, row in zip(runs, plan_rows)}):
            print("  " + line)
        if study.search is not None:
            print(f"\nThe verdict runs (seeds {study.seeds}) train at the learning rate the search on seed {study.search.seed} "
                  f"chooses; until then they are planned (and costed) at the middle of each grid.")
        if getattr(args, "power", True):
            power.print_power(study, root, runs)
        power.print_seeds(study, root)
        return 0
    # Two studies on one folder: the study's own files (study.yaml, evals/, analysis/, results.json, the report)
    # are written under the study folder's lock, each run under its own (train.run): the second process waits,
    # then finds the work done (cached).
    clock = {"start": time.time()}
    with locks.held(root, "study folder"):
        (root / "study.yaml").write_text(yaml.safe_dump(plan.with_sets(Path(args.config), getattr(args, "set", None) or ())[0],
                                                      sort_keys=False))  # `extends` and --set resolved
        evaluation.base_heldout(study, root, runs)  # before training: the runs score KL against the base's references
    clock["base model"] = time.time()
    pending = [r for r in runs if r.chosen and plan.status(r.config.out) != "done"]  # before training finds them done
    if study.search is not None:  # stage 1: the learning-rate grids on search.seed, then each method's rate chosen
        _train(study, [r for r in runs if r.role == "search"], args)
        chosen = gather.choose_lrs(study, root, runs)
        runs = plan.expand(study, root, chosen)
        for lab in sorted({(r.experiment.name, plan.label(r.config)) for r in runs if not r.chosen}):
            print(f"[study] {lab[0]}: no learning rate of {lab[1]}'s grid learned on seed {study.search.seed}: its verdict "
                  f"runs are not trained (try lower learning rates)", flush=True)
        runs = [r for r in runs if r.chosen]
        pending += [r for r in runs if r.role == "verdict" and plan.status(r.config.out) != "done" and r not in pending]
        for (exp, lab), lr in sorted(chosen.items()):
            print(f"[study] {exp}: {lab} at lr {lr:g}, chosen on the selection documents; it now trains with seeds {study.seeds}", flush=True)
    _train(study, runs, args)
    clock["training"] = time.time()
    with locks.held(root, "study folder"):
        html = _finish(study, root, runs, clock)
    print(f"[study] report: {html}")
    print(wall_split(clock, pending), flush=True)
    return 0


def _train(study, runs, args) -> None:
    """Train the runs not done: as Ray tasks (train_all then finds them done), or here."""
    if getattr(args, "executor", "local") == "ray":
        from . import executors

        executors.train_ray(runs, study.executor, getattr(args, "ray_address", None))
    training.train_all(study, runs)


def _finish(study, root: Path, runs, clock: dict) -> Path:
    """Evaluation, analysis, results.json and the report, once every run is trained (each stage's end in clock)."""
    evaluation.evaluate_all(study, root, runs)
    clock["benchmark tasks"] = time.time()
    analyse.run(study, root, runs)  # the optional `analysis:` block (cached like the evaluations)
    clock["analysis"] = time.time()
    results = gather.gather(study, root, runs)
    tmp = root / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(root / "results.json")
    from .. import report  # the one import of the report: study -> report, at the very end

    html = report.write(root)
    clock["report"] = time.time()
    return html


def wall_split(clock: dict, trained: list) -> str:
    """Where this invocation's wall time went, by stage (clock: each stage's end time after "start"), and inside
    the training stage, the trained runs' own split from their run.json: optimizer steps against the rest of a
    run (model load, held-out scoring at each checkpoint, checkpoint writes), summed over runs (run-minutes:
    parallel workers overlap)."""
    names, ends = list(clock)[1:], list(clock.values())
    stages = ", ".join(f"{n} {(b - a) / 60:.1f}" for n, a, b in zip(names, ends, ends[1:]))
    line = f"[study] wall time {(ends[-1] - ends[0]) / 60:.1f} min: {stages}"
    rows = [json.loads(p.read_text()) for r in trained if (p := Path(r.config.out) / "run.json").is_file()]
    steps = sum(x.get("train_seconds_this_session") or 0.0 for x in rows)
    whole = sum(x.get("wall_seconds") or 0.0 for x in rows)
    if rows and whole:
        line += (f"; the {len(rows)} runs trained: {whole / 60:.1f} run-min, of which optimizer steps {steps / 60:.1f} "
                 f"and load, held-out scoring and checkpoints {(whole - steps) / 60:.1f}")
    return line
