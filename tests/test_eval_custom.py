"""Custom YAML tasks: end to end on the tiny model, and one-line errors naming file, line and field."""

import json
from pathlib import Path

import pytest

from learnforget import models
from learnforget.errors import UserError
from learnforget.evaluate import custom, runner


def _write(tmp: Path, rows: list, spec: str, name: str = "quiz") -> Path:
    (tmp / f"{name}.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    y = tmp / f"{name}.yaml"
    y.write_text(spec.replace("DATA", f"{name}.jsonl"))
    return y


MC_ROWS = [{"id": f"q{i}", "question": f"What is {i} plus one?", "choices": [str(i + 1), str(i + 7), "blue"], "gold": 0 if i % 2 else str(i + 1)}
           for i in range(6)]
MC_SPEC = "type: multiple_choice\ndata: DATA\nid_field: id\ntemplate: \"Question: {question}\\nAnswer:\"\n"


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-random-llama")


def test_multiple_choice_task_end_to_end(tmp_path, tiny):
    model, tok = tiny
    y = _write(tmp_path, MC_ROWS, MC_SPEC)
    task = custom.load(str(y))
    assert task.name == "quiz" and task.kind == "multiple_choice" and len(task.items) == 6
    assert task.items[0].requests[0] == ("Question: What is 0 plus one?\nAnswer:", " 1") and task.items[0].gold == 0
    res = runner.evaluate_tasks(model, tok, [str(y)], limit=4, seed=0, batch_size=2, show_progress=False)
    r = res["quiz"]
    assert r["n"] == 4 and 0 <= r["acc,none"] <= 1 and "acc_norm,none" in r and r["chance"] == pytest.approx(1 / 3)
    assert len(r["samples"]) == 4 and set(r["ids"]) <= {f"q{i}" for i in range(6)}


def test_generation_task_end_to_end_with_each_checker(tmp_path, tiny):
    model, tok = tiny
    rows = [{"prompt": f"Say {i}:", "reference": str(i)} for i in range(3)]
    for checker, extra in [("exact", ""), ("number", ""), ("regex", "pattern: '(\\d+)'\n")]:
        y = _write(tmp_path, rows, f"name: say-{checker}\ntype: generation\ndata: DATA\nchecker: {checker}\n{extra}max_new_tokens: 5\nstop: ['\\n']\n",
                   name=f"say_{checker}")
        r = runner.evaluate_tasks(model, tok, [str(y)], batch_size=3, show_progress=False)[f"say-{checker}"]
        assert r["n"] == 3 and all("completion" in s for s in r["samples"])


def test_checkers():
    t = custom.CustomTask("t", "generation", "", [], checker="number")
    assert t.check("so it is $1,234.", "1234") and not t.check("12", "1234") and not t.check("none", "1")
    t.checker = "exact"
    assert t.check("  Paris \n", "Paris") and not t.check("Paris.", "Paris")
    t.checker, t.pattern = "regex", r"Answer: (\w+)"
    assert t.check("blah Answer: Paris!", "Paris") and not t.check("Paris", "Paris")


@pytest.mark.parametrize("rows, spec, message", [
    (MC_ROWS[:2] + ["{not json"], MC_SPEC, "quiz.jsonl:3: not valid JSON"),
    ([{"id": "a", "question": "q", "choices": ["x", "y"]}], MC_SPEC, "quiz.jsonl:1: missing field 'gold'"),
    ([{"id": "a", "question": "q", "choices": ["x", "y"], "gold": 5}], MC_SPEC, "quiz.jsonl:1: field 'gold'"),
    ([{"id": "a", "question": "q", "choices": "xy", "gold": 0}], MC_SPEC, "quiz.jsonl:1: field 'choices'"),
    ([{"id": "a", "choices": ["x", "y"], "gold": 0}], MC_SPEC, "quiz.jsonl:1: template needs field 'question'"),
    ([{"id": "a", "question": "q", "choices": ["x", "y"], "gold": 0}] * 2, MC_SPEC, "quiz.jsonl:2: duplicate id 'a'"),
    ([{"prompt": "p"}], "type: generation\ndata: DATA\n", "quiz.jsonl:1: missing field 'reference'"),
    ([{"prompt": "p", "reference": "r"}], "type: generation\ndata: DATA\nchecker: fuzzy\n", "field 'checker'"),
    ([{"prompt": "p", "reference": "r"}], "type: generation\ndata: DATA\nchecker: regex\n", "needs field 'pattern'"),
    ([{"prompt": "p", "reference": "r"}], "type: essay\ndata: DATA\n", "field 'type'"),
    ([{"prompt": "p", "reference": "r"}], "type: generation\ndata: DATA\ncolour: red\n", "unknown field(s) colour"),
    ([{"prompt": "p", "reference": "r"}], "type: generation\ndata: missing.jsonl\n", "field 'data'"),
])
def test_bad_input_is_a_one_line_user_error(tmp_path, rows, spec, message):
    y = _write(tmp_path, rows, spec)
    with pytest.raises(UserError) as e:
        custom.load(str(y))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(y.parent) in str(e.value)  # names the file
