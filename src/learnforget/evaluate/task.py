"""What a benchmark task is: the `Task` record every task file fills in, and the pieces they share.

A task says what kind it is and how to get its items; the runner does the rest:
  choice      items are `ChoiceItem`s, scored by log-likelihood (`scoring.py`); metrics acc / acc_norm
  generate    the task's own `run` generates and scores (gsm8k, humaneval, custom generation tasks)
  perplexity  held-out text, mean token loss (`learnforget/heldout.py`)
The registry of built-in tasks is `evaluate.tasks` (one file per benchmark); custom YAML tasks
(`custom.py`) build the same record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

from ..errors import UserError

Kind = Literal["choice", "generate", "perplexity"]
Role = Literal["forgetting", "learning", "custom", "heldout"]


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    gold: int
    norm_lengths: tuple[int, ...]  # characters of each choice text: acc_norm divides the log-likelihood by these


@dataclass(frozen=True)
class Settings:
    """How a run is done, the same for every task of one evaluation."""

    limit: int | None = None  # choice tasks: a seeded sample of this many items
    generation_limit: int | None = None  # generate tasks: the same (already defaulted to limit by the runner)
    seed: int = 0
    batch_size: int = 8
    num_samples: int = 1  # humaneval: completions per problem
    temperature: float = 0.0  # humaneval: 0 is greedy
    ppl_tokens: int = 20000
    ppl_seq_len: int = 512
    show_progress: bool = True


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    source: str  # split and origin, recorded in the results file
    metrics: tuple[str, ...]  # lm-eval metric names ("acc", "exact_match,flexible-extract", ...)
    primary: str  # the metric the task is judged by (verdict, forgetting line, study plots)
    version: str | None = None  # lm-eval 0.4.13's task version (its YAML metadata.version); None: no lm-eval task
    n_shot: int = 0
    modes: Mapping[str, int] = field(default_factory=dict)  # prompt mode -> n-shot, where the mode decides it
    role: Role = "forgetting"  # forgetting: general ability a fine-tune may lose; learning: what a domain trains
    domain: str | None = None  # learning tasks: the training domain they measure (code, math)
    paper: int = 0  # position (1-3) in the paper's forgetting mean; 0: not one of its three tasks
    load: Callable[[], list] | None = None  # choice tasks: their items
    run: Callable[..., dict] | None = None  # generate / perplexity tasks: (model, tok, task, settings) -> result
    config: Mapping = field(default_factory=dict)  # task settings for the results file (split, prompt, generation)

    def chance(self, items: list) -> float | None:
        """Expected primary metric of random guessing (choice tasks), else None."""
        return chance_rate(items) if self.kind == "choice" else None

    def shots(self, mode: str | None) -> int:
        """n-shot of a run: the mode's where the task has modes (gsm8k 5shot / chat), else n_shot."""
        return self.modes.get(mode, self.n_shot) if mode else self.n_shot


def choice_item(id_: str, context: str, choices: list[str], gold: int, delimiter: str = " ") -> ChoiceItem:
    """The usual shape: one shared context, each choice as the continuation (lm-eval's target_delimiter " ")."""
    if not 0 <= gold < len(choices):
        raise UserError(f"item {id_}: gold index {gold} is outside its {len(choices)} choices")
    return ChoiceItem(id_, tuple((context, delimiter + c) for c in choices), gold, tuple(len(c) for c in choices))


def chance_rate(items: list[ChoiceItem]) -> float:
    """Expected accuracy of random guessing: the mean of 1/choices (ARC items have 3 to 5 choices)."""
    return sum(1 / len(it.requests) for it in items) / max(len(items), 1)


def sample(items: list, limit: int | None, seed: int, task: str) -> list:
    """A seeded, fixed subset of `limit` items, kept in dataset order.

    The subset depends only on (task, seed, limit, the dataset): never on the model, so every
    checkpoint of a study is scored on the same items. Subsets are nested: the first 200 of the
    seeded permutation are also in the 300-item subset.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    order = list(range(len(items)))
    random.Random(f"{task}:{seed}").shuffle(order)  # str seeds hash with SHA-512: stable across runs
    keep = sorted(order[:limit])
    return [items[i] for i in keep]
