"""HumanEval scoring: canonical solutions all pass, a wrong completion fails all, pass@k is right."""

from __future__ import annotations

import gzip
import json
import math
from itertools import combinations

import pytest

from learnforget.evaluate.tasks.humaneval import (
    STOP_SEQUENCES,
    load_problems,
    pass_at_k,
    program,
    score,
    truncate,
)


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_problems()


def test_loads_the_164_problems(problems):
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[-1]["task_id"] == "HumanEval/163"
    assert all(p["prompt"] and p["test"] and p["entry_point"] for p in problems)


def test_loads_any_jsonl(tmp_path, problems):
    plain, packed = tmp_path / "two.jsonl", tmp_path / "two.jsonl.gz"
    text = "".join(json.dumps(p) + "\n" for p in problems[:2])
    plain.write_text(text)
    with gzip.open(packed, "wt") as f:
        f.write(text)
    assert load_problems(str(plain)) == problems[:2] == load_problems(str(packed))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"task_id": "x", "prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="lacks"):
        load_problems(str(tmp_path / "bad.jsonl"))


def test_canonical_solutions_pass_and_wrong_completion_fails_all(problems):
    # Both sets in one run_many call so the two workers stay busy: 328 sandboxed programs.
    n = len(problems)
    completions = [[p["canonical_solution"]] for p in problems] + [["    return None\n"]] * n
    result = score(problems + problems, completions)
    canonical, wrong = result["samples"][:n], result["samples"][n:]
    failed = [(s["task_id"], s["status"], s["error"]) for s in canonical if not s["passed"]]
    assert failed == []
    assert not any(s["passed"] for s in wrong)
    assert {s["status"] for s in wrong} == {"failed"}


def test_score_summary_and_sys_exit_guard(problems):
    first = problems[0]
    good = first["canonical_solution"]
    samples = [good, "    return None\n", "    import sys; sys.exit(0)\n", good]
    result = score([first], [samples])
    assert [s["passed"] for s in result["samples"]] == [True, False, False, True]
    assert result["samples"][2]["reason"] == "exited 0 before the end of the program"
    assert result["pass@1"] == pytest.approx(0.5)
    assert "pass@10" not in result  # only 4 samples
    assert result["problems"][0]["correct"] == 2 and result["n_samples"] == 4
    assert result["pass@1_stderr"] is None  # one problem: no spread to measure


def test_pass_at_1_stderr_across_problems(problems):
    some = problems[:4]
    completions = [[p["canonical_solution"]] if i % 2 else ["    return None\n"] for i, p in enumerate(some)]
    result = score(some, completions)
    assert result["pass@1"] == 0.5
    # per-problem values 0,1,0,1: sample sd = sqrt(1/3), over sqrt(4)
    assert result["pass@1_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)


def test_program_layout(problems):
    p = problems[0]
    text = program(p, "    return False\n")
    assert text == p["prompt"] + "    return False\n" + "\n" + p["test"] + "\n" + "check(has_close_elements)\n"
    assert program(p, "    pass\n", sentinel="abc").endswith("check(has_close_elements)\nprint('abc')\n")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("    return x + 1\n", "    return x + 1\n"),
        ("    return x + 1\n\ndef helper():\n    pass\n", "    return x + 1\n"),
        ("    return x\n\n\nif __name__ == '__main__':\n    main()\n", "    return x\n\n"),
        ("    y = x  # indented comment\n    return y\n# trailing\n", "    y = x  # indented comment\n    return y"),
        ("    return 1\nprint(f(2))\nclass A: pass\n", "    return 1"),
        ("    return 1\nclass A: pass\nprint(1)\n", "    return 1"),
        ("    if x:\n        return 1\n    return 2\n", "    if x:\n        return 1\n    return 2\n"),
        ("", ""),
    ],
)
def test_truncate(completion, expected):
    assert truncate(completion) == expected


def test_truncate_keeps_every_canonical_solution(problems):
    assert STOP_SEQUENCES == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert all(truncate(p["canonical_solution"]) == p["canonical_solution"] for p in problems)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the size-k subsets of n samples (c of them correct) with a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = brute_force_pass_at_k(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    assert pass_at_k(200, 0, 100) == 0.0
    assert pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    assert pass_at_k(200, 200, 100) == 1.0
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100))
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_instruct_mode_is_lm_evals_humaneval_instruct(problems):
    """Chat models get lm-eval's humaneval_instruct: the problem in a user turn, the assistant turn pre-filled
    with the prompt in a code block; the body ends at the closing fence. A model answering with the canonical
    body, the fence and prose passes; plain mode keeps the bare prompt and the five stop sequences."""
    from learnforget import models
    from learnforget.evaluate.tasks import humaneval

    _, tok = models.load("tiny-random-llama")  # has a chat template
    p = problems[2]
    assert humaneval.default_mode(tok) == "instruct" and humaneval.default_mode(None) == "plain"
    text = humaneval.prompt(p, "instruct", tok)
    user = tok.apply_chat_template([{"role": "user", "content": humaneval.INSTRUCT_USER.format(prompt=p["prompt"])}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == user + "Here is the completed function:\n```python\n" + p["prompt"] + "\n"
    assert "Write a solution to the following problem and make sure that it passes the tests:\n```python\n" in text
    stops = humaneval.stop_sequences("instruct", tok)
    assert stops[:5] == STOP_SEQUENCES and "```" in stops and tok.eos_token in stops
    answer = truncate(p["canonical_solution"] + "```\n\nThis function returns the decimal part.", stops)
    assert answer == p["canonical_solution"]
    assert score([p], [[answer]], workers=1)["pass@1"] == 1.0
    assert humaneval.prompt(p, "plain", tok) == p["prompt"] and humaneval.stop_sequences("plain", tok) == STOP_SEQUENCES
    with pytest.raises(ValueError, match="humaneval mode"):
        humaneval.prompt(p, "chat", tok)


# Completions that try to make the tests pass without solving the problem. Each runs in the same program
# as the tests, so what stops it is the program layout (the tests are defined after the completion) and
# the random sentinel printed after check(): an exit code of 0 alone does not pass.
CHEATS = {
    "defines its own check": "    return None\n\ndef check(candidate):\n    pass\n",
    "replaces AssertionError": "    return None\n\nimport builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n",
    "exits 0 from the excepthook": "    return None\n\nimport os, sys\nsys.excepthook = lambda *a: os._exit(0)\n",
    "exits 0 at exit": "    return None\n\nimport atexit, os\natexit.register(lambda: os._exit(0))\n",
    "shadows the candidate": "    return None\n\nimport builtins\nbuiltins.check = lambda candidate: None\n",
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_completions_that_patch_the_tests_fail(problems, cheat):
    result = score(problems[:1], [[CHEATS[cheat]]], workers=1)
    assert result["pass@1"] == 0.0, (cheat, result["samples"] if "samples" in result else result)
