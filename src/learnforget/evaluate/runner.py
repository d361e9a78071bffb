"""`learnforget eval`: score a model, or one checkpoint of it, on benchmarks and held-out text.

    learnforget eval --model smollm2-135m [--checkpoint runs/x/checkpoints/tokens-...] \
        --tasks hellaswag,arc_challenge,winogrande --limit 200 --seed 0 --out runs/eval/base

Tasks: the registry in tasks/ (one file per benchmark): hellaswag, arc_challenge, arc_easy,
winogrande, piqa, boolq, mmlu (multiple choice); gsm8k, gsm8k:5shot, gsm8k:chat; humaneval,
humaneval:plain, humaneval:instruct; perplexity:<corpus> (any corpus the training data loaders read:
python-code, math-text, gsm8k-test, a file, ...); a custom-task YAML (custom.py); `forgetting` expands
to the paper's three (hellaswag,winogrande,arc_challenge).

Writes, in --out, lm-eval's shape with its metadata (results.py): `results_<timestamp>.json` and
`samples_<task>_<timestamp>.jsonl` with one record per item.

Forgetting line: the mean of the paper's three tasks, each by its primary metric (HellaSwag acc_norm,
WinoGrande acc, ARC-Challenge acc_norm; acc_norm where lm-eval reports it). Each task also gets a verdict: "above
chance" when the normal-approximation 95% interval of its primary metric lies above the chance
rate, "at chance" when it contains it (such a task cannot show forgetting), plus the smallest
difference between two evaluations of this size that the item count can detect (1.96·√2·SE).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from .. import checkpoint, models
from ..config import EVAL_BATCH, EVAL_SEED
from ..cpu import allocator
from ..errors import UserError
from . import custom, results, scoring, tasks
from .summary import bar, summary
from .task import ChoiceItem, Settings, Task, chance_rate, sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PERPLEXITY = "perplexity:"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model: smollm2-135m | gemma3-270m | tiny-random-llama | folder | hub id")
    p.add_argument("--checkpoint", default=None, help="a full fine-tuned model folder or a LoRA adapter folder (merged before scoring)")
    p.add_argument("--tasks", default="hellaswag,arc_challenge,winogrande",
                   help="comma-separated: hellaswag, arc_challenge, arc_easy, winogrande, piqa, boolq, mmlu, gsm8k[:5shot|:chat], "
                        "humaneval, perplexity:<corpus>, forgetting, or a custom-task .yaml")
    p.add_argument("--limit", type=int, default=None, help="score a seeded, fixed sample of N items per task (same items for every model)")
    p.add_argument("--generation-limit", type=int, default=None, help="sample size for gsm8k/humaneval/custom generation tasks (default: --limit)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the --limit sample (and of sampling when --temperature > 0)")
    p.add_argument("--out", required=True, help="folder for results_<timestamp>.json and samples_<task>_<timestamp>.jsonl")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH, help="items per forward pass (multiple choice) / sequences per batch (generation)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="weights and compute: float32 (default; agrees with lm-eval to float rounding) or bfloat16 "
                        "(~1.6x faster on CPUs with AVX512-BF16; log-likelihoods move by ~0.1 nat, see README)")
    p.add_argument("--num-samples", type=int, default=1, help="humaneval: completions per problem (pass@k for k <= this)")
    p.add_argument("--temperature", type=float, default=0.0, help="humaneval sampling temperature (0 = greedy)")
    p.add_argument("--ppl-tokens", type=int, default=20000, help="perplexity tasks: held-out tokens scored")
    p.add_argument("--ppl-seq-len", type=int, default=512, help="perplexity tasks: tokens per row")


# ----------------------------------------------------------------------------- task names


def _known(name: str) -> bool:
    return name in tasks.names() or custom.is_custom(name) or (name.startswith(PERPLEXITY) and len(name) > len(PERPLEXITY))


def parse_tasks(spec: str) -> list[str]:
    """Validated task names in order (duplicates dropped); unknown names are a one-line UserError."""
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        for n in tasks.paper_forgetting() if name == "forgetting" else [name]:
            if not _known(n):
                known = ", ".join(tasks.names() + [f"{PERPLEXITY}<corpus>", "forgetting", "<file>.yaml"])
                raise UserError(f"--tasks: unknown task '{n}' (known: {known})")
            if n not in names:
                names.append(n)
    if not names:
        raise UserError("--tasks: no task given")
    return names


def resolve(name: str) -> Task:
    """The Task behind a validated name: a registered benchmark, held-out perplexity, or a custom YAML."""
    if name.startswith(PERPLEXITY):
        return Task(name, "perplexity", f"held-out split of '{name[len(PERPLEXITY):]}'", ("loss", "ppl"), "loss",
                    role="heldout", run=run_perplexity, config={"corpus": name[len(PERPLEXITY):]})
    if custom.is_custom(name):
        return custom.task(name)
    return tasks.get(name)


# ----------------------------------------------------------------------------- model + checkpoint


def load_model(spec: str, checkpoint: str | None, dtype: str = "float32"):
    """(model, tokenizer, info). A LoRA adapter is merged into the base for speed (same numbers).
    Weights are loaded and merged in float32 and only then cast to `dtype`, so a bfloat16 evaluation
    rounds each merged weight once."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(sorted(DTYPES))}, got {dtype!r}")
    model, tok, info = _load_float32(spec, checkpoint)
    info["dtype"] = dtype
    return model.to(DTYPES[dtype]), tok, info


def _load_float32(spec: str, checkpoint_dir: str | None):
    info = {"model": spec, "checkpoint": checkpoint_dir, "adapter_merged": False}
    if checkpoint_dir is None:
        model, tok = models.load(spec)
        return model, tok, info
    model = checkpoint.load(spec, checkpoint_dir, merge=True)
    info["adapter_merged"] = checkpoint.is_adapter(checkpoint_dir)
    return model, checkpoint.tokenizer(spec, checkpoint_dir), info


# ----------------------------------------------------------------------------- running


def run_choice(model, tok, name: str, items: list[ChoiceItem], metrics: tuple[str, ...], primary: str,
               source: str, batch_size: int, show_progress: bool = True) -> dict:
    t0 = time.perf_counter()
    with bar(name, len(items), show_progress) as b:
        scored = scoring.score(model, tok, items, batch_size=batch_size, progress=b.update)
    seconds = time.perf_counter() - t0
    per_item: dict[str, list[float]] = {m: [] for m in metrics}
    samples = []
    for item, (lls, greedy) in zip(items, scored):
        m = scoring.item_metrics(item, lls)
        for k in metrics:
            per_item[k].append(m[k])
        samples.append({"doc_id": item.id, "gold": item.gold, "prediction": m["pred"], "prediction_norm": m["pred_norm"],
                        "loglikelihoods": lls, "is_greedy": greedy, "acc": m["acc"], "acc_norm": m["acc_norm"],
                        "pass": bool(m[primary]), "arguments": [list(r) for r in item.requests]})
    return summary(name, per_item, primary, chance_rate(items), [it.id for it in items], samples, source, seconds)


def run_perplexity(model, tok, task: Task, settings: Settings) -> dict:
    from .. import heldout
    from ..data import corpora

    corpus, seq_len = task.config["corpus"], settings.ppl_seq_len
    t0 = time.perf_counter()
    ids, labels = corpora.heldout_set(corpus, tok, seq_len, settings.ppl_tokens)
    res = heldout.score(model, ids, labels, tok.eos_token_id, batch_size=max(1, min(settings.batch_size, 8)))
    res["ppl"] = math.exp(min(res["loss"], 50.0))
    seconds = time.perf_counter() - t0
    return {"alias": task.name, "source": f"held-out split of '{corpus}', {ids.shape[0]} rows x {seq_len} tokens",
            "loss,none": res["loss"], "ppl,none": res["ppl"], "tokens": res["tokens"], "metric": "loss", "primary_key": "loss,none", "value": res["loss"],
            "stderr": None, "n": res["tokens"], "chance": None, "verdict": "n/a", "items": None, "ids": [], "samples": [],
            "seconds": round(seconds, 2), "tokens_per_s": round(res["tokens"] / seconds, 1) if seconds > 0 else None}


def run_task(model, tok, task: Task, settings: Settings) -> dict:
    """One task's result: choice tasks are scored here, the others by their own `run`."""
    if task.kind == "choice":
        items = sample(task.load(), settings.limit, settings.seed, task.name)
        return run_choice(model, tok, task.name, items, task.metrics, task.primary, task.source, settings.batch_size,
                          settings.show_progress)
    return task.run(model, tok, task, settings)


def forgetting_line(results: dict) -> dict | None:
    """The paper's three-task mean, with each component's metric and verdict; None unless all three ran."""
    names = tasks.paper_forgetting()
    if not all(t in results for t in names):
        return None
    parts = {t: results[t] for t in names}
    metric = {t: tasks.get(t).primary for t in names}
    ses = [p["stderr"] for p in parts.values()]
    at_chance = [t for t, p in parts.items() if p["verdict"] != "above chance"]
    return {
        "alias": "forgetting", "metric": "mean(" + ", ".join(f"{t} {metric[t]}" for t in names) + ")",
        "value": sum(p["value"] for p in parts.values()) / len(parts),
        "stderr": None if None in ses else math.sqrt(sum(s * s for s in ses)) / len(parts),
        "components": {t: {"metric": metric[t], "value": p["value"], "stderr": p["stderr"], "verdict": p["verdict"]}
                       for t, p in parts.items()},
        "note": ("components at chance, which cannot show forgetting: " + ", ".join(at_chance)) if at_chance else "all components above chance",
    }


def evaluate_tasks(model, tok, task_names: list[str], limit: int | None = None, generation_limit: int | None = None, seed: int = 0,
                   batch_size: int = 8, num_samples: int = 1, temperature: float = 0.0, ppl_tokens: int = 20000,
                   ppl_seq_len: int = 512, show_progress: bool = True) -> dict:
    """Score `task_names` on an already-loaded model: {task: result}, plus "_forgetting" when its three tasks ran.

    Each result has lm-eval keys ("acc,none", ...), and "metric"/"value"/"stderr"/"n"/"chance"/"verdict",
    "items" (0/1 per item of the primary metric, in item order), "ids" and per-item "samples".
    """
    names = parse_tasks(",".join(task_names))
    settings = Settings(limit, limit if generation_limit is None else generation_limit, seed, batch_size, num_samples,
                        temperature, ppl_tokens, ppl_seq_len, show_progress)
    out: dict = {}
    for name in names:
        task = resolve(name)
        out[task.name] = run_task(model, tok, task, settings)
    line = forgetting_line(out)
    if line:
        out["_forgetting"] = line
    return out


# ----------------------------------------------------------------------------- output


def _fmt(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: dict) -> str:
    """A plain-text table: one line per task metric, then the forgetting line."""
    head = f"{'task':<22} {'metric':<30} {'value':>8} {'± se':>8} {'n':>6} {'chance':>7}  {'verdict':<13} {'detect':>7} {'items/s':>8}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        keys = [k for k in r if "," in k and "_stderr," not in k]
        for k in keys:
            m, f = k.split(",")
            primary = k == r.get("primary_key")
            se = r.get(f"{m}_stderr,{f}")
            lines.append(f"{name:<22} {k:<30} {_fmt(r[k]):>8} {_fmt(se):>8} {r['n']:>6} {_fmt(r['chance'], 3):>7}  "
                         f"{(r['verdict'] if primary else ''):<13} {(_fmt(r.get('detectable_diff'), 3) if primary else ''):>7} "
                         f"{_fmt(r.get('items_per_s') or r.get('tokens_per_s'), 2):>8}")
    if "_forgetting" in results:
        f = results["_forgetting"]
        lines.append(f"{'forgetting':<22} {'mean of 3 (see note)':<30} {_fmt(f['value']):>8} {_fmt(f['stderr']):>8}")
        lines.append(f"  forgetting = {f['metric']}; {f['note']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    names = parse_tasks(args.tasks)  # validate before the (slow) model load
    task_of = {}
    for n in names:
        t = resolve(n)  # reads custom task files now: their errors come before the model load too
        task_of[t.name] = t
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    allocator.tune()  # this process only evaluates, then exits: keeping freed memory costs nothing later
    model, tok, info = load_model(args.model, args.checkpoint, args.dtype)
    t0 = time.perf_counter()
    res = evaluate_tasks(model, tok, names, args.limit, args.generation_limit, args.seed, args.batch_size,
                         args.num_samples, args.temperature, args.ppl_tokens, args.ppl_seq_len)
    config = {**info, "model_path": models.resolve(args.model) if args.model != models.TINY else args.model,
              "batch_size": args.batch_size, "limit": args.limit, "generation_limit": args.generation_limit, "seed": args.seed,
              "tasks": names, "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 2)}
    path = results.write(Path(args.out), res, config, task_of)
    print(table(res))
    print(f"wrote {path}")
    return 0
