"""HumanEval scoring: canonical solutions all pass, a wrong completion fails all, pass@k is right."""

from __future__ import annotations

import gzip
import json
import math
from itertools import combinations

import pytest

from learnforget.evaluate.humaneval import (
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
