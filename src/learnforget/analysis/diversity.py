"""Diversity of sampled solutions: does fine-tuning collapse the variety of correct answers?

The paper (arXiv 2405.09673, generation diversity) samples many HumanEval solutions per problem at a
temperature above 0 and counts the distinct correct ones: full fine-tuning collapses them more than
LoRA. Here, for one model (base, or a checkpoint: full model or LoRA adapter):

  1. P problems: a seeded fixed sample (`evaluate.tasks.sample`), the same for every model, and the
     same items `learnforget eval --limit P --seed S` scores;
  2. n samples per problem at temperature T with nucleus top_p (0.95, the Codex / lm-eval convention),
     from the batched KV-cache generator, seeded: the same model and options give the same samples;
  3. each sample checked: HumanEval runs prompt + completion + tests in the sandbox (parallel
     processes); GSM8K compares the flexible-extract answer with the gold one (lm-eval's rule);
  4. per problem: correct c, distinct, distinct correct, unbiased pass@k for k in {1, n/2, n};
     totals: means over problems with bootstrap 95% intervals over problems.

"Distinct" compares normalised solutions. HumanEval: the AST (`ast.dump`) of prompt + completion with
docstrings dropped; comments, blank lines and formatting never reach the AST, so `return a+b` and
`return a + b  # sum` are one solution, while renaming a variable makes another. Code that does not
parse (it cannot pass either) is compared as text without trailing spaces and blank lines. GSM8K: the
reasoning text, case-folded, whitespace collapsed.

    learnforget analyze diversity --model smollm2-135m --checkpoint runs/x/checkpoints/tokens-... \
        --task humaneval --problems 20 --samples 8 --temperature 0.8 --seed 0 --out div.json
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError

TASKS = ("humaneval", "gsm8k")
MAX_NEW_TOKENS = {"humaneval": 512, "gsm8k": 256}  # what `learnforget eval` allows each task
TOP_P = 0.95


# ----------------------------------------------------------------------------- normalisation


def normalize_code(source: str) -> str:
    """A key equal for programs that differ only in comments, docstrings, blank lines or formatting."""
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
        return ast.dump(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes
        lines = (line.rstrip() for line in source.splitlines())
        return "\n".join(line for line in lines if line)


def normalize_text(text: str) -> str:
    """GSM8K reasoning: case-folded, runs of whitespace as one space."""
    return " ".join(text.lower().split())


# ----------------------------------------------------------------------------- problems and checking


def ks_for(n: int) -> list[int]:
    """pass@k reported for k in {1, n/2, n}."""
    return sorted({1, max(1, n // 2), n})


def load(task: str, tok, problems: int | None, seed: int) -> tuple[list, list[str], list[str], str | None]:
    """(problems, prompts, stop strings, prompt mode) for `task`, on the seeded shared sample."""
    from ..evaluate import task as tasks
    from ..evaluate.tasks import gsm8k, humaneval

    if task == "humaneval":
        mode = humaneval.default_mode(tok)  # instruct for chat models, as lm-eval's humaneval_instruct
        items = tasks.sample(humaneval.load_problems(), problems, seed, "humaneval")
        return items, [humaneval.prompt(p, mode, tok) for p in items], humaneval.stop_sequences(mode, tok), mode
    if task == "gsm8k":
        mode = gsm8k.default_mode(tok)  # the same for every checkpoint: they share the tokenizer
        items = tasks.sample(gsm8k.load_problems("test"), problems, seed, "gsm8k")
        shots = gsm8k.load_problems("train")[:gsm8k.N_SHOTS] if mode == "5shot" else []
        return items, [gsm8k.prompt(p, mode, tok, shots) for p in items], gsm8k.stop_strings(tok), mode
    raise UserError(f"diversity task must be one of {', '.join(TASKS)}, got '{task}'")


def check(task: str, problems: list, completions: list[list[str]], workers: int = 2) -> list[list[bool]]:
    """Whether each sample is correct: HumanEval tests in the sandbox, GSM8K flexible-extract exact match."""
    from ..evaluate.tasks import gsm8k, humaneval

    if task == "humaneval":
        res = humaneval.score(problems, completions, workers=workers)
        correct = [[False] * len(cs) for cs in completions]
        index = {p["task_id"]: i for i, p in enumerate(problems)}
        for s in res["samples"]:
            correct[index[s["task_id"]]][s["sample"]] = bool(s["passed"])
        return correct
    if task == "gsm8k":
        return [[gsm8k.score(c, p.answer)["flexible-extract"] == 1.0 for c in cs] for p, cs in zip(problems, completions)]
    raise UserError(f"diversity task must be one of {', '.join(TASKS)}, got '{task}'")


def problem_id(task: str, problem) -> str:
    return problem["task_id"] if task == "humaneval" else problem.id


def problem_stats(keys: list[str], correct: list[bool], ks: list[int]) -> dict:
    """One problem's numbers from its samples' normalised keys and correctness."""
    from ..evaluate.tasks.humaneval import pass_at_k

    n, c = len(keys), sum(correct)
    return {"n": n, "correct": c, "distinct": len(set(keys)),
            "distinct_correct": len({k for k, ok in zip(keys, correct) if ok}),
            "pass_at_k": {str(k): pass_at_k(n, c, k) for k in ks}}


def score(task: str, problems: list, completions: list[list[str]], correct: list[list[bool]] | None = None,
          workers: int = 2) -> dict:
    """Per-problem and total diversity numbers for `completions[i]`, the samples of `problems[i]`.

    `correct` skips the checking (tests give it directly); otherwise `check` runs.
    """
    from .. import stats

    if len(problems) != len(completions) or not problems:
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    n = len(completions[0])
    if n < 1 or any(len(cs) != n for cs in completions):
        raise ValueError("every problem needs the same number (>= 1) of samples")
    t0 = time.perf_counter()
    if correct is None:
        correct = check(task, problems, completions, workers)
    ks = ks_for(n)
    per_problem = []
    for p, cs, ok in zip(problems, completions, correct):
        if task == "humaneval":
            keys = [normalize_code(p["prompt"] + c) for c in cs]
        else:
            keys = [normalize_text(c) for c in cs]
        per_problem.append({"id": problem_id(task, p), **problem_stats(keys, ok, ks)})
    totals = {}
    for metric in ("correct", "distinct", "distinct_correct"):
        v, lo, hi = stats.mean_ci([r[metric] for r in per_problem], f"diversity:{task}:{metric}")
        totals[metric] = {"mean": v, "lo": lo, "hi": hi}
    for k in ks:
        v, lo, hi = stats.mean_ci([r["pass_at_k"][str(k)] for r in per_problem], f"diversity:{task}:pass@{k}")
        totals[f"pass@{k}"] = {"mean": v, "lo": lo, "hi": hi}
    samples = [{"id": problem_id(task, p), "sample": j, "completion": c, "correct": bool(o)}
               for p, cs, ok in zip(problems, completions, correct) for j, (c, o) in enumerate(zip(cs, ok))]
    return {"task": task, "problems": len(problems), "samples": n, "ks": ks, "per_problem": per_problem,
            "totals": totals, "completions": samples, "check_seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- sampling


def run(model, tok, task: str, problems: int = 20, samples: int = 8, temperature: float = 0.8, top_p: float = TOP_P,
        seed: int = 0, batch_size: int = 8, max_new_tokens: int | None = None, workers: int = 2,
        generate: Callable[[list[str]], list[str]] | None = None, show_progress: bool = True) -> dict:
    """Sample `samples` completions for each of `problems` seeded problems, check them, and score diversity.

    `generate` (prompts -> completions) replaces the model's sampling, for tests.
    """
    validate(task, problems, samples, temperature, top_p, batch_size, max_new_tokens)
    from ..evaluate import generation
    from ..evaluate.tasks import humaneval

    items, prompts, stop, mode = load(task, tok, problems, seed)
    max_new = max_new_tokens or MAX_NEW_TOKENS[task]
    repeated = [p for p in prompts for _ in range(samples)]  # n copies side by side: they batch together
    t0 = time.perf_counter()
    if generate is None:
        from tqdm.auto import tqdm

        with tqdm(total=len(repeated), desc=f"diversity {task}", unit="sample", disable=not show_progress, leave=False) as bar:
            texts = generation.generate(model, tok, repeated, stop, max_new, batch_size, temperature=temperature,
                                        seed=seed, top_p=top_p, progress=bar.update)
    else:
        texts = generate(repeated)
    gen_seconds = time.perf_counter() - t0
    if task == "humaneval":
        texts = [humaneval.truncate(t, stop) for t in texts]  # the function body ends at the first stop sequence
    completions = [texts[i * samples:(i + 1) * samples] for i in range(len(items))]
    out = score(task, items, completions, workers=workers)
    return {**out, "temperature": temperature, "top_p": top_p, "seed": seed, "max_new_tokens": max_new,
            "batch_size": batch_size, "mode": mode, "generate_seconds": round(gen_seconds, 2)}


def validate(task: str, problems: int, samples: int, temperature: float, top_p: float, batch_size: int = 1,
             max_new_tokens: int | None = None, where: str = "--") -> None:
    """Clear errors naming the option: `where` is '--' for the CLI, 'analysis.diversity.' for a study file."""
    def name(field: str) -> str:
        return where + (field.replace("_", "-") if where == "--" else field)

    if task not in TASKS:
        raise UserError(f"{name('task')} must be one of {', '.join(TASKS)}, got '{task}'")
    for field, value in (("problems", problems), ("samples", samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name(field)} must be an integer >= 1, got {value!r}")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1):
        raise UserError(f"{name('max_new_tokens')} must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise UserError(f"{name('temperature')} must be a number >= 0, got {temperature!r}")
    if samples > 1 and temperature == 0:
        raise UserError(f"{name('samples')} > 1 needs {name('temperature')} > 0 (greedy samples would all be identical)")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise UserError(f"{name('top_p')} must be in (0, 1], got {top_p!r}")


def row(result: dict, run_id: str, tokens: int) -> dict:
    """The results.json `analysis.diversity` row (report/claims.py, claim g): means over problems, and
    `items` = distinct correct per problem and `distinct_items` = distinct outputs per problem, in the shared
    problem order (for the paired bootstrap; the second decides collapse where no model solves anything)."""
    t = result["totals"]
    return {"run_id": run_id, "tokens": tokens, "task": result["task"], "n": result["samples"], "problems": result["problems"],
            "correct": t["correct"]["mean"], "distinct": t["distinct"]["mean"], "distinct_correct": t["distinct_correct"]["mean"],
            "distinct_correct_ci": [t["distinct_correct"]["lo"], t["distinct_correct"]["hi"]],
            "pass_at_k": {str(k): t[f"pass@{k}"]["mean"] for k in result["ks"]},
            "items": [p["distinct_correct"] for p in result["per_problem"]],
            "distinct_items": [p["distinct"] for p in result["per_problem"]],
            "problem_ids": [p["id"] for p in result["per_problem"]],
            "temperature": result["temperature"], "top_p": result["top_p"], "seed": result["seed"]}


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model spec (smollm2-135m, folder, hub id)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder (full model or LoRA adapter); default: the base model")
    p.add_argument("--task", choices=TASKS, default="humaneval", help="humaneval (sandboxed tests) or gsm8k (final-answer match)")
    p.add_argument("--problems", type=int, default=20, help="problems: a seeded fixed sample, the same for every model")
    p.add_argument("--samples", type=int, default=8, help="samples per problem (pass@k for k in 1, n/2, n)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=TOP_P, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem sample and of the sampling")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per generation batch")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 512 for humaneval, 256 for gsm8k")
    p.add_argument("--workers", type=int, default=2, help="sandbox processes checking HumanEval samples in parallel")
    p.add_argument("--out", default=None, help="JSON file: per-problem numbers, totals, every sample, and the results.json row")


def _tokens(checkpoint: str | None) -> int:
    """Training tokens of a checkpoint (from its manifest), 0 for the base model."""
    from .. import checkpoint as ckpt

    if checkpoint is None or not (Path(checkpoint) / ckpt.MANIFEST).exists():
        return 0
    return int(ckpt.manifest(checkpoint).get("tokens", 0))


def main(args) -> int:
    from ..evaluate.runner import load_model

    validate(args.task, args.problems, args.samples, args.temperature, args.top_p, args.batch_size, args.max_new_tokens)
    t0 = time.perf_counter()
    model, tok, info = load_model(args.model, args.checkpoint)
    res = run(model, tok, args.task, args.problems, args.samples, args.temperature, args.top_p, args.seed,
              args.batch_size, args.max_new_tokens, args.workers)
    res = {"model": args.model, "checkpoint": args.checkpoint, "adapter_merged": info["adapter_merged"], **res,
           "seconds": round(time.perf_counter() - t0, 1)}
    res["row"] = row(res, "base" if args.checkpoint is None else str(args.checkpoint), _tokens(args.checkpoint))
    t = res["totals"]
    print(f"{args.task}: {res['problems']} problems x {res['samples']} samples, temperature {args.temperature}, top_p {args.top_p}, "
          f"seed {args.seed} ({res['generate_seconds']:.0f} s sampling, {res['check_seconds']:.0f} s checking)")
    for name, v in t.items():
        print(f"  {name:<17} {v['mean']:7.3f}  [{v['lo']:.3f}, {v['hi']:.3f}]  (mean per problem, 95% bootstrap over problems)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    return 0
