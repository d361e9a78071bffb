"""The built-in tasks, one file per benchmark, and the task facts the rest of the project reads.

    get(name)           the Task registered under `name` (e.g. "hellaswag", "gsm8k:5shot")
    names()             every registered name, in registry order
    forgetting()        the tasks a fine-tune may forget: the paper's three first, then the other choice tasks
    paper_forgetting()  the paper's forgetting score: the mean of these three (hellaswag, winogrande, arc_challenge)
    learning_task(d)    the task that measures what domain `d` trains (code: humaneval, math: gsm8k)
    domains()           the training domains that have a learning task
"""

from __future__ import annotations

from ...errors import UserError
from ..task import Task
from . import arc, boolq, gsm8k, hellaswag, humaneval, mmlu, piqa, winogrande

_REGISTRY: dict[str, Task] = {t.name: t for t in [
    hellaswag.TASK, arc.CHALLENGE, arc.EASY, winogrande.TASK, piqa.TASK, boolq.TASK, mmlu.TASK, *gsm8k.TASKS, *humaneval.TASKS,
]}


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Task:
    if name not in _REGISTRY:
        raise UserError(f"unknown task '{name}' (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def paper_forgetting() -> list[str]:
    """The paper's three forgetting tasks, in the order of its mean; each is judged by its primary metric."""
    return [t.name for t in sorted((t for t in _REGISTRY.values() if t.paper), key=lambda t: t.paper)]


def forgetting() -> list[str]:
    """Every forgetting task: general ability outside the trained domain (the paper's three first)."""
    paper = paper_forgetting()
    return paper + [n for n, t in _REGISTRY.items() if t.role == "forgetting" and n not in paper]


def domains() -> list[str]:
    return sorted({t.domain for t in _REGISTRY.values() if t.domain})


def learning_task(domain: str) -> str:
    """The task that measures learning in `domain`: the first registered for it (its plain name, e.g. gsm8k)."""
    for name, t in _REGISTRY.items():
        if t.domain == domain:
            return name
    raise UserError(f"no learning task for domain '{domain}' (known: {', '.join(domains())})")
