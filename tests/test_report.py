"""The study report on a synthetic results.json: verdicts follow the effects built into the data,
tasks at chance are kept out of the signal score, and the pages and figures are written."""

import copy
import json
import re

import numpy as np
import pytest

from learnforget import report, stats
from learnforget.errors import UserError

TOKENS = [1000, 2000, 4000]
BASE = {"humaneval": (0.20, None), "hellaswag": (0.45, 0.25), "piqa": (0.65, 0.50), "arc_challenge": (0.25, 0.25)}


def _task(p, n, rng, chance=None, metric="acc"):
    items = (rng.random(n) < p).astype(int).tolist()
    v = float(np.mean(items))
    return {"metric": metric, "value": v, "stderr": float(np.sqrt(v * (1 - v) / n)), "n": n, "chance": chance, "items": items}


def make_results(learn=None, forget=None, target=None, general=None, n=400, seed=0, lrs=(1e-4,), regularized=False,
                 analysis=None, same_items=False):
    """base + full + lora runs of code CPT with 3 checkpoints; item scores drawn with the given true rates.
    learn / forget: label -> per-checkpoint true accuracy of humaneval / of hellaswag and piqa (offset from base);
    target / general: label -> per-checkpoint held-out losses. Extra lrs get slightly worse learning."""
    learn = learn or {"full": [0.30, 0.45, 0.60], "lora": [0.25, 0.30, 0.35]}
    forget = forget or {"full": [-0.06, -0.10, -0.15], "lora": [0.0, -0.01, -0.01]}
    target = target or {"full": [2.0, 1.8, 1.6], "lora": [2.1, 2.0, 1.9]}
    general = general or {"full": [3.1, 3.2, 3.3], "lora": [3.02, 3.03, 3.04]}
    rng = np.random.default_rng(seed)
    base = {t: _task(p, n, rng, c, "pass@1" if t == "humaneval" else "acc") for t, (p, c) in BASE.items()}
    labels = list(learn) + (["full-wd0.1"] if regularized else [])
    runs = []
    for li, label in enumerate(labels):
        key = "full" if label == "full-wd0.1" else label
        for k, lr in enumerate(lrs):
            ckpts = []
            for i, tok in enumerate(TOKENS):
                r = np.random.default_rng(seed + 1000 + (0 if same_items else li) * 100 + k * 10 + i)
                tasks = {"humaneval": _task(learn[key][i] - 0.08 * k, n, r, None, "pass@1"),
                         "hellaswag": _task(0.45 + forget[key][i] * (0.5 if regularized and label == "full-wd0.1" else 1), n, r, 0.25),
                         "piqa": _task(0.65 + forget[key][i], n, r, 0.5), "arc_challenge": _task(0.25, n, r, 0.25)}
                reg = 0.5 if label == "full-wd0.1" else 0.0
                ckpts.append({"tokens": tok, "budget": tok / TOKENS[-1], "flops": 6e8 * tok,
                              "heldout": {"target": {"loss": target[key][i] + 0.05 * k + reg * 0.2, "tokens": 4096},
                                          "general": {"loss": general[key][i] - reg * (general[key][i] - 3.0), "tokens": 4096}},
                              "tasks": tasks})
            fam = "full-regularized" if label == "full-wd0.1" else ("lora" if label.startswith("lora") else "full")
            runs.append({"id": f"{label}-{k}", "label": label, "family": fam, "regime": "cpt", "domain": "code", "lr": lr * (10 if fam == "lora" else 1),
                         "rank": 16 if fam == "lora" else None, "targets": "all" if fam == "lora" else None, "seed": 0,
                         "trainable_params": 1_000_000 if fam == "lora" else 135_000_000, "total_params": 135_000_000,
                         "peak_rss_mb": 5000.0, "tokens_per_s": 120.0, "checkpoints": ckpts})
    res = {"version": 1, "study": {"name": "synthetic", "model": "tiny", "model_note": "synthetic data", "created": "2026-01-01T00:00:00",
                                   "hardware": "2-core CPU", "config": {}},
           "base": {"tasks": base, "heldout": {"general": {"loss": 3.0, "tokens": 4096}, "cpt-code": {"loss": 2.2, "tokens": 4096}}},
           "runs": runs}
    if analysis:
        res["analysis"] = analysis
    return res


def _verdicts(found, claim, signal=None):
    """Verdicts of one claim's rows (optionally those whose signal mentions `signal`); `found` = findings or results."""
    found = report.findings(found) if isinstance(found, dict) else found
    return [f["verdict"] for f in found if f["claim"] == claim and (signal is None or signal in f["signal"])]


def test_clear_effect_is_reproduced():
    res = report.findings(make_results())
    assert _verdicts(res, "a", "humaneval") == ["reproduced"]
    assert _verdicts(res, "a", "target loss") == ["reproduced"]
    assert _verdicts(res, "b", "forgetting score") == ["reproduced"]
    assert _verdicts(res, "b", "general loss") == ["reproduced"]
    assert _verdicts(res, "d", "humaneval") == ["reproduced"]
    assert {v for c in "cefg" for v in _verdicts(res, c)} == {"not run"}


def test_reversed_effect_is_not_reproduced():
    res = make_results(learn={"full": [0.25, 0.30, 0.35], "lora": [0.30, 0.45, 0.60]},
                       forget={"full": [0.0, -0.01, -0.01], "lora": [-0.06, -0.10, -0.15]},
                       target={"full": [2.1, 2.0, 1.9], "lora": [2.0, 1.8, 1.6]},
                       general={"full": [3.02, 3.03, 3.04], "lora": [3.1, 3.2, 3.3]})
    res = report.findings(res)
    for claim, sig in [("a", "humaneval"), ("a", "target loss"), ("b", "forgetting score"), ("b", "general loss"), ("d", "humaneval")]:
        assert _verdicts(res, claim, sig) == ["not reproduced"], (claim, sig)


def test_identical_systems_are_not_significant():
    same = {"learn": {"full": [0.3, 0.3, 0.3], "lora": [0.3, 0.3, 0.3]}, "forget": {"full": [-0.05] * 3, "lora": [-0.05] * 3},
            "target": {"full": [2.0, 1.9, 1.8], "lora": [2.0, 1.9, 1.8]}, "general": {"full": [3.1] * 3, "lora": [3.1] * 3}}
    res = report.findings(make_results(**same, same_items=True))  # the very same item scores
    for claim in "abd":
        assert set(_verdicts(res, claim)) == {"not significant"}, claim
    # independent draws at the same true rates: each interval still covers 0 in 95% of draws (a seeded draw
    # here; the other rows of the same draw can be 5% false positives, which is what an interval means)
    assert _verdicts(make_results(**same), "a", "humaneval") == ["not significant"]


def test_task_at_chance_cannot_carry_a_verdict():
    A = report.analyse(report.validate(make_results()))
    tasks = A["ctx"]["tasks"]
    assert tasks["arc_challenge"]["status"] == "at chance"
    assert tasks["arc_challenge"]["verdict"] == "cannot carry a verdict"
    assert tasks["hellaswag"]["verdict"] == "carries a verdict" and tasks["humaneval"]["role"] == "learning"
    assert A["ctx"]["signal"] == ["hellaswag", "piqa"]  # arc_challenge kept out of the signal score ...
    assert A["ctx"]["paper"] == ["hellaswag", "arc_challenge"]  # ... but in the paper's three-task line
    p = A["best"][0]["points"][-1]
    assert p["v"]["signal"][0] == pytest.approx((np.mean(p["tasks"]["hellaswag"]) + np.mean(p["tasks"]["piqa"])) / 2)
    paper = [f for f in A["findings"] if f["claim"] == "b" and "3-task" in f["signal"]][0]
    assert "at chance: arc_challenge" in paper["numbers"]


def test_no_task_above_chance_means_no_signal_score():
    res = make_results()
    for t in ("hellaswag", "piqa"):
        res["base"]["tasks"][t]["chance"] = 0.9
    rows = [f for f in report.findings(res) if f["claim"] == "b" and "forgetting score" in f["signal"]]
    assert rows[0]["verdict"] == "not run" and "above chance" in rows[0]["numbers"]


def test_bootstrap_interval_of_a_known_proportion():
    items = np.r_[np.ones(300), np.zeros(700)]
    v, lo, hi = stats.mean_ci(items, "known")
    se = np.sqrt(0.3 * 0.7 / 1000)
    assert v == pytest.approx(0.3) and lo < 0.3 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert stats.mean_ci(items, "known") == (v, lo, hi)  # seeded
    assert stats.min_detectable(0.5, 100) == pytest.approx(1.96 * np.sqrt(0.5 / 100))
    assert stats.pareto([1, 2, 3, 2], [3, 2, 1, 1]) == [0, 1, 2]


def test_regularized_lr_spectrum_and_diversity_claims():
    analysis = {"spectrum": [{"run_id": rid, "tokens": 4000, "module_type": "q", "layer": i, "rank90": r, "full_rank": 576}
                             for i in range(8) for rid, r in (("full-0", 300 + i), ("lora-0", 12))],
                "diversity": [{"run_id": rid, "tokens": 4000, "task": "humaneval", "n": 8, "distinct": d + 1, "distinct_correct": d,
                               "pass_at_k": {"1": 0.3, "8": 0.5}} for rid, d in (("base", 3.0), ("full-0", 1.0), ("lora-0", 2.5))]}
    res = make_results(lrs=(1e-4, 1e-3), regularized=True, analysis=analysis)
    f = report.findings(res)
    c = [r for r in f if r["claim"] == "c"]
    assert c and c[0]["verdict"] != "not run"
    assert {r["verdict"] for r in f if r["claim"] == "e"} <= {"reproduced", "not reproduced", "not significant"}
    spec = [r for r in f if r["claim"] == "f"][0]
    assert spec["estimate"] == pytest.approx(303.5 / 16) and spec["verdict"] == "reproduced"
    # one row per LoRA rank: a rank near the matrix width cannot be exceeded 10x, and the row says so
    res256 = copy.deepcopy(res)
    res256["runs"] += [dict(copy.deepcopy(r), id=r["id"] + "-256", label="lora-r256", rank=256)
                       for r in res["runs"] if r["family"] == "lora"]
    spec = [r for r in report.findings(res256) if r["claim"] == "f"]
    assert [(r["comparison"].split()[-1], r["verdict"]) for r in spec] == [("16", "reproduced"), ("256", "not reproduced")]
    assert spec[1]["estimate"] == pytest.approx(303.5 / 256) and "at most 2.2x is possible" in spec[1]["numbers"]
    assert [r["verdict"] for r in f if r["claim"] == "g"] == ["reproduced"]
    for row in analysis["diversity"]:  # per-problem scores: a paired bootstrap over problems
        row["items"] = [row["distinct_correct"]] * 10
    g = [r for r in report.findings(res) if r["claim"] == "g"][0]
    assert g["verdict"] == "reproduced" and g["ci"] == pytest.approx([1.5, 1.5]) and "beyond this model" not in g["numbers"]
    for row in analysis["diversity"]:  # no correct sample anywhere (SmolLM2-135M on HumanEval): said in so many words
        row["distinct_correct"], row["items"] = 0.0, [0.0] * 10
    g = [r for r in report.findings(res) if r["claim"] == "g"][0]
    assert g["verdict"] == "not significant" and "no sample is correct for any model" in g["numbers"]


def _tasks_at_final_only(runs):
    for r in runs:
        for c in r["checkpoints"][:-1]:
            c["tasks"] = {}  # benchmarks only at the final checkpoint (a study's `tasks_at: final`)


def test_write_produces_pages_figures_and_summary(tmp_path):
    res = make_results(lrs=(1e-4, 1e-3))
    math = copy.deepcopy(res["runs"])  # a second experiment without a learning task: losses carry learning
    for r in math:
        r.update(regime="ift", domain="math", id=r["id"] + "-math")
    _tasks_at_final_only(math)
    res["runs"] += math
    (tmp_path / "results.json").write_text(json.dumps(res))
    html_path = report.write(tmp_path)
    out = tmp_path / "report"
    assert html_path == out / "report.html"
    page = html_path.read_text()
    names = ["learning", "forgetting", "tradeoff", "cost", "lr_sensitivity"]
    assert page.count("data:image/png;base64,") == len(names)
    assert "reproduced" in page and "cannot carry a verdict" in page
    assert "no 'ift-math' entry" in page  # a missing base reference is noted, not fatal
    md = (out / "report.md").read_text()
    for n in names:
        assert (out / f"{n}.png").read_bytes()[:4] == b"\x89PNG" and f"({n}.png)" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["findings"] and summary["checkpoints"] and summary["base_tasks"]["arc_challenge"]["verdict"] == "cannot carry a verdict"
    assert {f["group"] for f in summary["findings"] if f["claim"] == "a"} == {"cpt/code", "ift/math"}


def test_loss_only_study():
    res = make_results()
    _tasks_at_final_only(res["runs"])
    for r in res["runs"]:
        r["checkpoints"][-1]["tasks"].pop("humaneval")
    res["base"]["tasks"].pop("humaneval")
    f = report.findings(res)
    assert [r["signal"] for r in f if r["claim"] == "a"] == ["held-out target loss (lora - full)"]
    assert _verdicts(f, "a") == ["reproduced"] and _verdicts(f, "b", "forgetting score") == ["reproduced"]


@pytest.mark.parametrize("path, name", [
    (("runs", 1, "checkpoints", 0, "heldout", "general"), "runs[1].checkpoints[0].heldout.general"),
    (("study", "model_note"), "study.model_note"),
    (("base", "tasks", "piqa", "items"), "base.tasks.piqa.items"),
    (("runs",), "runs"),
])
def test_missing_field_is_named(path, name):
    res = copy.deepcopy(make_results(n=20))
    obj = res
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]
    with pytest.raises(UserError, match=re.escape(f"missing field '{name}'")):
        report.findings(res)


def test_mismatched_items_are_rejected():
    res = make_results(n=20)
    res["runs"][0]["checkpoints"][1]["tasks"]["piqa"]["items"].pop()
    with pytest.raises(UserError, match="runs\\[0\\].checkpoints\\[1\\].tasks.piqa.items"):
        report.validate(res)
