"""Diversity of sampled solutions (analysis/diversity.py) and the study's analysis stage (study/analyse.py):
numbers on stub samples whose answer is known, the unbiased pass@k against brute force, nucleus sampling,
the CLI, and spectrum / intruders / diversity rows that the report turns into findings (f) and (g)."""

import json
from itertools import combinations
from math import comb

import pytest

from learnforget import cli, config, models, report
from learnforget.study import analyse, plan
from learnforget.analysis import diversity as div
from learnforget.errors import UserError
from learnforget.evaluate import generation
from learnforget.evaluate.tasks import gsm8k, humaneval

from test_study import write_study

ADD = {"task_id": "stub/add", "prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n", "entry_point": "add",
       "test": "def check(f):\n    assert f(1, 2) == 3\n    assert f(-1, 1) == 0\n"}
NEG = {"task_id": "stub/neg", "prompt": "def neg(x):\n", "entry_point": "neg", "test": "def check(f):\n    assert f(2) == -2\n"}
# 3 correct that differ only in formatting and comments (one solution), 2 other correct ones, 3 wrong ones.
ADD_SAMPLES = ["    return a + b\n", "    return a+b  # the sum\n", "    return (a + b)\n\n",
               "    return b + a\n", "    s = a + b\n    return s\n",
               "    return a - b\n", "    return 0\n", "    return a * b\n"]
NEG_SAMPLES = ["    return -x\n"] + ["    return x\n"] * 7  # 1 correct of 8


def test_normalize_code():
    same = [div.normalize_code(ADD["prompt"] + s) for s in ADD_SAMPLES[:3]]
    assert len(set(same)) == 1
    assert div.normalize_code(ADD["prompt"] + ADD_SAMPLES[3]) != same[0]
    # the docstring does not count; code that does not parse is compared as text
    assert div.normalize_code("def f():\n    'doc'\n    return 1\n") == div.normalize_code("def f():\n    return 1  # one\n")
    assert div.normalize_code("def f(:\n  x  \n\n") == div.normalize_code("def f(:\n  x\n")
    assert div.normalize_text("The answer  is\n42.") == div.normalize_text("the answer is 42.")


def test_pass_at_k_matches_brute_force():
    # P(at least one correct among k samples drawn without replacement from n with c correct), by enumeration.
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations([True] * c + [False] * (n - c), k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert humaneval.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
                assert brute == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert div.ks_for(8) == [1, 4, 8] and div.ks_for(2) == [1, 2] and div.ks_for(1) == [1]


def test_humaneval_stub_numbers_are_exact():
    res = div.score("humaneval", [ADD, NEG], [ADD_SAMPLES, NEG_SAMPLES], workers=2)  # the real sandbox
    add, neg = res["per_problem"]
    assert {k: v for k, v in add.items() if k != "pass_at_k"} == {"id": "stub/add", "n": 8, "correct": 5, "distinct": 6,
                                                                "distinct_correct": 3}
    assert add["pass_at_k"] == pytest.approx({"1": 5 / 8, "4": 1.0, "8": 1.0})
    assert neg["correct"] == 1 and neg["distinct"] == 2 and neg["distinct_correct"] == 1
    assert neg["pass_at_k"] == pytest.approx({"1": 1 / 8, "4": 1 - comb(7, 4) / comb(8, 4), "8": 1.0})
    t = res["totals"]
    assert t["distinct_correct"]["mean"] == 2.0 and t["correct"]["mean"] == 3.0
    assert t["pass@1"]["mean"] == pytest.approx((5 / 8 + 1 / 8) / 2) and t["pass@4"]["mean"] == pytest.approx(0.75)
    assert t["distinct_correct"]["lo"] <= 2.0 <= t["distinct_correct"]["hi"]
    assert [s["correct"] for s in res["completions"][:8]] == [True] * 5 + [False] * 3
    row = div.row({**res, "temperature": 0.8, "top_p": 0.95, "seed": 0}, "run1", 512)
    assert row["items"] == [3, 1] and row["n"] == 8 and row["pass_at_k"]["1"] == pytest.approx(0.375)
    report.validate({**_minimal_results(), "analysis": {"diversity": [row]}})  # the shape the report reads


def test_gsm8k_stub_numbers_are_exact():
    p = gsm8k.Problem("g1", "What is 6 times 7?", "6 * 7 = 42\n#### 42")
    samples = ["6 * 7 = 42. The answer is 42.", "6  * 7 = 42.\nThe answer is 42.", "Six sevens: 42", "It is 41."]
    res = div.score("gsm8k", [p], [samples])
    r = res["per_problem"][0]
    assert (r["correct"], r["distinct"], r["distinct_correct"]) == (3, 3, 2)
    assert r["pass_at_k"] == pytest.approx({"1": 0.75, "2": 1.0, "4": 1.0})


def test_run_with_a_fake_generator_uses_the_shared_problem_sample():
    from learnforget.evaluate import task as tasks

    problems = tasks.sample(humaneval.load_problems(), 2, 5, "humaneval")
    canonical = {p["prompt"]: p["canonical_solution"] for p in problems}
    seen = []

    def fake(prompts):  # per problem: the canonical solution twice, then two that fail
        seen.extend(prompts)
        return [canonical[p] if i % 4 < 2 else "    return None\n" for i, p in enumerate(prompts)]

    res = div.run(None, None, "humaneval", problems=2, samples=4, temperature=0.8, seed=5, generate=fake)
    assert [r["id"] for r in res["per_problem"]] == [p["task_id"] for p in problems]
    assert seen == [p["prompt"] for p in problems for _ in range(4)]
    for r in res["per_problem"]:
        assert (r["correct"], r["distinct_correct"]) == (2, 1)
        assert r["pass_at_k"] == pytest.approx({"1": 0.5, "2": 5 / 6, "4": 1.0})


def test_bad_options_are_named():
    with pytest.raises(UserError, match="--samples > 1 needs --temperature > 0"):
        div.validate("humaneval", 2, 4, 0.0, 0.95)
    with pytest.raises(UserError, match="--top-p must be in"):
        div.validate("humaneval", 2, 4, 0.8, 1.5)
    with pytest.raises(UserError, match="analysis.diversity.problems must be an integer"):
        plan.check_diversity(config.DiversitySpec(problems=0))
    with pytest.raises(UserError, match="analysis.diversity: unknown field"):
        config.AnalysisSpec(diversity={"sample": 3})


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-random-llama")


def test_top_p_nucleus(tiny):
    model, tok = tiny
    prompts = ["def add(a, b):\n", "x"]
    greedy = generation.generate(model, tok, prompts, stop=[], max_new_tokens=12)
    # a nucleus this small holds only the most likely token: sampling is greedy
    assert generation.generate(model, tok, prompts, stop=[], max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=1) == greedy
    a = generation.generate(model, tok, prompts * 3, stop=[], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1)
    assert a == generation.generate(model, tok, prompts * 3, stop=[], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1)


def test_cli_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "div.json"
    assert cli.main(["analyze", "diversity", "--model", "tiny-random-llama", "--task", "humaneval", "--problems", "2",
                     "--samples", "2", "--max-new-tokens", "16", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["problems"] == 2 and res["samples"] == 2 and len(res["completions"]) == 4
    assert res["row"]["run_id"] == "base" and res["row"]["tokens"] == 0 and len(res["row"]["items"]) == 2
    assert "distinct_correct" in capsys.readouterr().out


def test_gsm8k_run_on_the_tiny_model(tiny):
    model, tok = tiny
    res = div.run(model, tok, "gsm8k", problems=2, samples=2, temperature=0.8, seed=0, max_new_tokens=8, show_progress=False)
    again = div.run(model, tok, "gsm8k", problems=2, samples=2, temperature=0.8, seed=0, max_new_tokens=8, show_progress=False)
    assert res["mode"] in ("chat", "5shot") and len(res["per_problem"]) == 2 and len(res["completions"]) == 4
    assert [c["completion"] for c in res["completions"]] == [c["completion"] for c in again["completions"]]  # seeded


def _minimal_results():
    tr = {"metric": "acc", "value": 0.5, "stderr": 0.1, "n": 2, "chance": 0.25, "items": [0, 1]}
    held = {"loss": 1.0, "tokens": 8, "units": {"loss": [8.0], "tokens": [8]}}
    ck = {"tokens": 512, "budget": 512, "flops": 1.0, "heldout": {"target": held, "general": held}, "tasks": {"piqa": tr}}
    run = {"id": "run1", "label": "full", "family": "full", "regime": "cpt", "domain": "code", "lr": 1e-3, "rank": None, "targets": None,
           "seed": 0, "best_lr": True, "trainable_params": 1, "total_params": 1, "peak_rss_mb": 1.0, "tokens_per_s": 1.0, "checkpoints": [ck]}
    return {"version": 2, "study": {"name": "s", "model": "m", "model_note": "", "created": "", "hardware": "", "config": {}},
            "tasks": {"learning": {"code": "humaneval", "math": "gsm8k"}, "paper": ["hellaswag"]},
            "base": {"tasks": {"piqa": tr}, "heldout": {}}, "runs": [run]}


# ----------------------------------------------------------------------------- the study's analysis stage


def test_study_analysis_rows_feed_findings_f_and_g(code_corpus, tmp_path, monkeypatch, capsys):
    analysis = {"spectrum": True, "intruders": True, "k": 4,
                "diversity": {"task": "humaneval", "problems": 2, "samples": 2, "max_new_tokens": 16}}
    cfg = write_study(tmp_path, code_corpus, analysis=analysis)
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    root = out / "tiny"
    res = json.loads((root / "results.json").read_text())
    an = res["analysis"]
    ids = {r["label"]: r["id"] for r in res["runs"]}  # full, lora-r2-all, lora-r4-all
    # spectrum: every weight matrix of every run's final checkpoint (4 layers x 7 types); LoRA's rank90 <= its rank
    assert len(an["spectrum"]) == 3 * 28 and all(r["tokens"] == 512 for r in an["spectrum"])
    for label, rank in (("lora-r2-all", 2), ("lora-r4-all", 4)):
        assert all(0 < r["rank90"] <= rank for r in an["spectrum"] if r["run_id"] == ids[label])
    assert {r["full_rank"] for r in an["spectrum"]} == {32, 64}  # k/v are 32 x 64 in the tiny model
    # intruders: one row per (run, eps), k as asked, 28 matrices x 4 directions checked
    assert len(an["intruders"]) == 3 * 5 and {r["k"] for r in an["intruders"]} == {4}
    assert {r["directions"] for r in an["intruders"]} == {28 * 4}
    # diversity: the base model and the three runs (one learning rate each: all are "best"), 2 problems x 2 samples
    assert sorted(r["run_id"] for r in an["diversity"]) == sorted(["base", *ids.values()])
    assert all(r["n"] == 2 and len(r["items"]) == 2 and r["task"] == "humaneval" for r in an["diversity"])
    f = report.findings(res)
    assert [r["verdict"] for r in f if r["claim"] == "f"] and all(r["verdict"] != "not run" for r in f if r["claim"] == "f")
    g = [r for r in f if r["claim"] == "g"]  # the tiny model solves nothing: said so, not decided on zeros
    assert g and all(r["verdict"] != "not run" or "no sample is correct" in r["numbers"] for r in g)
    page = (root / "report" / "report.html").read_text()
    assert "Intruder dimensions" in page and "Diversity of sampled solutions" in page
    assert (root / "report" / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
    # a second run finds everything cached: nothing is recomputed
    monkeypatch.setattr(analyse.div, "run", lambda *a, **k: pytest.fail("diversity recomputed"))
    monkeypatch.setattr(analyse, "_spectrum_rows", lambda *a, **k: pytest.fail("spectrum recomputed"))
    capsys.readouterr()
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    assert "[study] analysis" not in capsys.readouterr().out
    assert json.loads((root / "results.json").read_text())["analysis"] == an


def test_study_without_analysis_has_no_analysis_key(code_corpus, tmp_path):
    s = plan.load(write_study(tmp_path, code_corpus))
    assert s.analysis is None
    s = plan.load(write_study(tmp_path, code_corpus, analysis={"diversity": True}))
    d = s.analysis.diversity
    assert plan.diversity_task(d, "code") == "humaneval" and plan.diversity_task(d, "math") == "gsm8k"
    with pytest.raises(UserError, match="analysis.svd"):
        plan.load(write_study(tmp_path, code_corpus, analysis={"svd": "qr"}))


def test_analysis_skips_a_diverged_run(code_corpus, tmp_path, capsys):
    """A run whose weights went NaN has no spectrum: the stage says so and the study still reports."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from learnforget import checkpoint, cli
    from test_study import write_study

    cfg = write_study(tmp_path, code_corpus, methods=[{"method": "full", "lr": [1e-3]}], analysis={"spectrum": True})
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    root = out / "tiny"
    ck = checkpoint.complete(next((root / "runs").iterdir()))[-1]
    w = load_file(ck / "model.safetensors")
    name = next(k for k in w if "q_proj" in k)
    w[name] = torch.full_like(w[name], float("nan"))
    save_file(w, ck / "model.safetensors", metadata={"format": "pt"})
    for p in (root / "analysis").glob("spectrum-*"):
        p.unlink()
    capsys.readouterr()
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    assert "the run diverged" in capsys.readouterr().out
    assert json.loads((root / "results.json").read_text()).get("analysis", {}).get("spectrum") in (None, [])
