"""The study runner on the tiny model: grid expansion, caching by input hash, results.json, report."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from learnforget import cli
from learnforget.study import cost, plan
from learnforget.errors import UserError


def write_study(tmp_path: Path, corpus: Path, **over) -> Path:
    spec = {
        "name": "tiny",
        "model": "tiny-random-llama",
        "seq_len": 64,
        "experiments": [{"name": "code-cpt", "regime": "cpt", "domain": "code", "data": str(corpus), "tokens": 512, "checkpoints": [256, 512]}],
        "methods": [{"method": "full", "lr": [1e-3]}, {"method": "lora", "rank": [2, 4], "targets": "all", "lr": [1e-2]}],
        "train": {"batch_tokens": 128, "micro_batch": 2},
        "eval": {"forgetting": [], "learning": {"code": [], "math": []}, "heldout_tokens": 128, "general": str(corpus)},
    }
    spec.update(over)
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_grid_expands_and_ids_are_stable(code_corpus, tmp_path):
    s = plan.load(write_study(tmp_path, code_corpus))
    runs = plan.expand(s, tmp_path / "out")
    assert [r.config.method.label() for r in runs] == ["full", "lora-r2-all", "lora-r4-all"]
    assert [r.family for r in runs] == ["full", "lora", "lora"]
    again = plan.expand(plan.load(write_study(tmp_path, code_corpus)), tmp_path / "out")
    assert [r.id for r in runs] == [r.id for r in again]
    # adding one rank adds one run and leaves the others' ids (and so their cache) alone
    more = plan.load(write_study(tmp_path, code_corpus, methods=[{"method": "full", "lr": [1e-3]},
                                                                   {"method": "lora", "rank": [2, 4, 8], "targets": "all", "lr": [1e-2]}]))
    ids = [r.id for r in plan.expand(more, tmp_path / "out")]
    assert len(ids) == 4 and set(r.id for r in runs) <= set(ids)


def test_bad_study_files(tmp_path, code_corpus):
    with pytest.raises(UserError, match="no such study file"):
        plan.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nexperiments: []\n")
    with pytest.raises(UserError, match="missing field 'methods'"):
        plan.load(bad)
    p = write_study(tmp_path, code_corpus, methods=[{"method": "full"}])
    with pytest.raises(UserError, match=r"methods\[0\]: missing field 'lr'"):
        plan.load(p)
    p = write_study(tmp_path, code_corpus, experiments=[{"name": "e", "regime": "cpt", "domain": "code", "data": "x", "tokenz": 5}])
    with pytest.raises(UserError, match="unknown field.*tokenz"):
        plan.load(p)


def test_extends_merges_mappings_and_keeps_the_runs(code_corpus, tmp_path):
    base = write_study(tmp_path, code_corpus, analysis={"spectrum": True})
    (tmp_path / "sub").mkdir()
    more = tmp_path / "sub" / "more.yaml"
    more.write_text("extends: ../study.yaml\nanalysis: {intruders: true}\neval: {limit: 7}\n")
    s, b = plan.load(more), plan.load(base)
    assert s.analysis.spectrum and s.analysis.intruders and not b.analysis.intruders  # mappings merge
    assert s.eval.limit == 7 and s.eval.heldout_tokens == b.eval.heldout_tokens == 128
    assert s.name == b.name and [r.id for r in plan.expand(s, tmp_path)] == [r.id for r in plan.expand(b, tmp_path)]
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(UserError, match="extends itself"):
        plan.load(loop)
    gone = tmp_path / "gone.yaml"
    gone.write_text("extends: nowhere.yaml\n")
    with pytest.raises(UserError, match=r"nowhere.yaml: no such study file \(extended by .*gone.yaml\)"):
        plan.load(gone)


def test_study_runs_caches_and_reports(code_corpus, tmp_path, capsys):
    cfg = write_study(tmp_path, code_corpus)
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    root = out / "tiny"
    results = json.loads((root / "results.json").read_text())
    assert results["version"] == 2 and len(results["runs"]) == 3
    base = results["base"]["heldout"]
    assert "cpt-code" in base and "general" in base and "kl" not in base["general"]
    for run in results["runs"]:
        assert [c["tokens"] for c in run["checkpoints"]] == [256, 512]
        for c in run["checkpoints"]:
            for name, ref in (("target", "cpt-code"), ("general", "general")):
                h = c["heldout"][name]
                # per document, on the base model's units; KL drift from the base's reference is positive once trained
                assert h["loss"] > 0 and h["kl"] > 0 and len(h["units"]["kl"]) == len(base[ref]["units"]["tokens"])
                assert h["units"]["tokens"] == base[ref]["units"]["tokens"]
                assert abs(sum(h["units"]["loss"]) / sum(h["units"]["tokens"]) - h["loss"]) < 1e-9
    assert (root / "report" / "report.html").exists() and (root / "report" / "report.md").exists()
    split = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[study] wall time")]
    assert len(split) == 1 and "base model" in split[0] and "report" in split[0] and "the 3 runs trained" in split[0]
    # a second run trains nothing: every run is cached
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.count(": cached") == 3 and ": training" not in log and "runs trained" not in log
    assert json.loads((root / "results.json").read_text())["runs"] == results["runs"]


def test_dry_run_prints_the_plan(code_corpus, tmp_path, capsys, monkeypatch):
    assert cli.main(["study", str(write_study(tmp_path, code_corpus)), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 runs, " in out and "estimated wall time" in out and "TFLOP" in out
    # the clock is measured: one training-row time per kind of run (full, each LoRA rank), a checkpoint write each
    measured = next(ln for ln in out.splitlines() if ln.strip().startswith("measured just now"))
    assert all(k in measured for k in ("full ", "lora-r2-", "lora-r4-")) and "a held-out row" in measured
    assert not (tmp_path / "s").exists()
    # power: measured on the base model's per-document losses of the planned held-out sets
    lines = [ln for ln in out.splitlines() if ln.startswith("code-cpt") and "held-out" in ln]
    assert len(lines) == 2 and all(float(ln.split()[4]) > 0 for ln in lines)
    # without the probe: FLOPs at a measured matmul rate, counting the held-out scoring at every checkpoint
    monkeypatch.setattr(cost, "measure_matmul_flops", lambda seconds=1.0: 1e11)
    s = plan.load(write_study(tmp_path, code_corpus))
    with_eval = cost.dry_run(s, plan.expand(s, tmp_path))
    s = plan.load(write_study(tmp_path, code_corpus, eval={"heldout_tokens": 0, "forgetting": [], "general": None}))
    without = cost.dry_run(s, plan.expand(s, tmp_path))
    extra = [a["est_seconds"] - b["est_seconds"] for a, b in zip(with_eval, without)]
    assert extra[0] > 0 and extra == pytest.approx([extra[0]] * 3)


def test_dry_run_time_is_the_measured_clock_times_the_plans_counts(code_corpus, tmp_path):
    from learnforget.study import probe

    s = plan.load(write_study(tmp_path, code_corpus, executor={"workers": 2}, analysis={"spectrum": True, "checkpoints": "all"}))
    runs = plan.expand(s, tmp_path)
    kinds = {r.id: probe.kind(r.config) for r in runs}
    assert sorted(set(kinds.values())) == ["full", "lora-r2-all", "lora-r4-all"]  # the learning rate does not change a step's cost
    clock = probe.Clock(threads=1, precision="fp32", load=1.0, data={"code-cpt": 2.0}, score_row=0.1, kinds=kinds,
                        row={k: (0.5 if k == "full" else 0.25) for k in kinds.values()},
                        save={k: (3.0 if k == "full" else 0.5) for k in kinds.values()}, analysis_first=4.0,
                        analysis={k: (2.0 if k == "full" else 0.5) for k in kinds.values()})
    rows = cost.dry_run(s, runs, clock)
    # 512 tokens = 8 rows of 64; 2 checkpoints, each a write and the target + general sets (2 x 128 tokens = 4 rows)
    assert [r["est_seconds"] for r in rows] == pytest.approx([1 + 2 + 8 * 0.5 + 2 * (3 + 4 * 0.1), 1 + 2 + 8 * 0.25 + 2 * (0.5 + 0.4),
                                                             1 + 2 + 8 * 0.25 + 2 * (0.5 + 0.4)])
    split = cost.study_seconds(s, runs, rows, clock)
    # two runs at a time: half the sum (13.7 s), but never less than the longest run (13.8 s)
    assert split["training"] == pytest.approx(max(sum(r["est_seconds"] for r in rows) / 2, rows[0]["est_seconds"])) == 13.8
    s.executor.workers = 1
    assert cost.study_seconds(s, runs, rows, clock)["training"] == pytest.approx(sum(r["est_seconds"] for r in rows))
    # a load, the base's vectors once, then 2 checkpoints of each run at its kind's cost
    assert split["analysis"] == pytest.approx(1 + 4 + 2 * 2.0 + 2 * 0.5 + 2 * 0.5)
    assert split["total"] == pytest.approx(split["training"] + split["analysis"] + split["base model held-out"])


def test_study_scores_benchmark_tasks_on_shared_items(code_corpus, tmp_path):
    cfg = write_study(tmp_path, code_corpus, methods=[{"method": "full", "lr": [1e-3]}],
                      eval={"forgetting": ["arc_easy", "piqa"], "learning": {"code": []}, "limit": 6, "heldout_tokens": 128,
                            "general": str(code_corpus), "batch_size": 4})
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    results = json.loads((out / "tiny" / "results.json").read_text())
    base = results["base"]["tasks"]
    final = results["runs"][0]["checkpoints"][-1]["tasks"]
    assert set(base) == set(final) == {"arc_easy", "piqa"}
    for name in base:
        assert base[name]["n"] == final[name]["n"] == 6 and len(final[name]["items"]) == 6
        assert base[name]["metric"] in ("acc", "acc_norm")
    assert results["runs"][0]["checkpoints"][0]["tasks"] == {}  # tasks_at: final


# Fields that measure the machine, not the study: they differ between any two executions.
VOLATILE = {"created", "tokens_per_s", "peak_rss_mb"}


def stable(obj):
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


def test_killed_study_resumes_to_the_same_results(code_corpus, tmp_path, kill_when):
    import os
    import subprocess
    import sys

    from learnforget import checkpoint

    cfg = write_study(tmp_path, code_corpus, experiments=[{"name": "code-cpt", "regime": "cpt", "domain": "code", "data": str(code_corpus),
                                                            "tokens": 4096, "checkpoints": [1024, 2048, 4096]}])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def study_cli(out):
        return subprocess.Popen([sys.executable, "-m", "learnforget.cli", "study", str(cfg), "--out", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    assert study_cli(tmp_path / "ref").wait() == 0
    p = study_cli(tmp_path / "killed")
    runs = tmp_path / "killed" / "tiny" / "runs"

    def second_run_has_a_checkpoint() -> bool:  # kill -9 in the middle of the second run: the first is done
        dirs = sorted(runs.iterdir(), key=lambda d: d.stat().st_mtime) if runs.exists() else []
        return len(dirs) >= 2 and bool(checkpoint.complete(dirs[1]))

    kill_when(p, second_run_has_a_checkpoint, timeout=120, poll=0.01, what="study")
    assert not (tmp_path / "killed" / "tiny" / "results.json").exists()
    again = study_cli(tmp_path / "killed")
    log = again.communicate()[0]
    assert again.returncode == 0, log
    assert ": cached" in log and "resuming from tokens-" in log
    ref = json.loads((tmp_path / "ref" / "tiny" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "tiny" / "results.json").read_text())
    assert stable(resumed) == stable(ref)


def _row(rid, lr, losses, label="full"):
    held = {"loss": sum(losses) / (10 * len(losses)), "tokens": 10 * len(losses), "units": {"loss": list(losses), "tokens": [10] * len(losses)}}
    return {"id": rid, "experiment": "code-cpt", "label": label, "lr": lr, "domain": "code", "regime": "cpt",
            "checkpoints": [{"tokens": 100, "heldout": {"target": held}, "tasks": {}}]}


def test_failed_runs_are_not_chosen_and_an_unbracketed_best_lr_is_flagged():
    from learnforget.study.gather import mark_best

    rng = np.random.default_rng(0)
    base_units = 20 + rng.normal(0, 1, 40)
    base = {"tasks": {}, "heldout": {"cpt-code": {"loss": 2.0, "tokens": 400, "units": {"loss": list(base_units), "tokens": [10] * 40}}}}
    rows = [_row("lo", 1e-5, base_units - 0.5), _row("mid", 1e-4, base_units - 1.0),
            _row("hi", 1e-3, base_units - 3.0),
            _row("bad", 1e-2, base_units + 2.0), _row("nan", 1e-1, [float("nan")] * 40)]
    best = mark_best(rows, base)
    by = {r["id"]: r for r in rows}
    assert by["bad"]["failed"].startswith("worse than the base model") and by["nan"]["failed"].startswith("diverged")
    assert by["lo"]["failed"] is None and by["hi"]["failed"] is None
    assert best == {"hi"} and by["hi"]["best_lr_edge"] is None  # 1e-3 is inside the grid that includes the failed lrs
    del rows[3:]  # without the failed lrs, 1e-3 is the top of the grid: the optimum was not bracketed
    assert mark_best(rows, base) == {"hi"} and rows[2]["best_lr_edge"] == "high"


def test_wall_split_adds_the_stages_and_the_runs_own_split(tmp_path):
    from types import SimpleNamespace

    from learnforget.study import wall_split

    runs = []
    for i, (wall, steps) in enumerate([(120.0, 90.0), (60.0, 30.0)]):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "run.json").write_text(json.dumps({"wall_seconds": wall, "train_seconds_this_session": steps}))
        runs.append(SimpleNamespace(config=SimpleNamespace(out=str(tmp_path / f"r{i}"))))
    clock = {"start": 0.0, "base model": 6.0, "training": 186.0, "report": 192.0}
    assert wall_split(clock, runs) == ("[study] wall time 3.2 min: base model 0.1, training 3.0, report 0.1; the 2 runs "
                                       "trained: 3.0 run-min, of which optimizer steps 2.0 and load, held-out scoring "
                                       "and checkpoints 1.0")
    assert wall_split(clock, []).endswith("report 0.1")


def test_set_overrides_fields_and_names_itself_in_errors(code_corpus, tmp_path):
    cfg = write_study(tmp_path, code_corpus)
    s = plan.load(cfg, ["seeds=[5, 6, 7]", "experiments.0.tokens=256", "search.seed=11"])
    assert s.seeds == [5, 6, 7] and s.experiments[0].tokens == 256 and s.search.seed == 11
    with pytest.raises(UserError, match=r"--set seeds: seeds: expected a list"):
        plan.load(cfg, ["seeds=fast"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        plan.load(cfg, ["seeds"])
    with pytest.raises(UserError, match="search.seed: 5 is also in seeds"):
        plan.load(cfg, ["seeds=[5]", "search.seed=5"])


def test_a_search_chooses_each_rate_on_its_own_seed_and_the_verdicts_train_it_on_the_others(code_corpus, tmp_path):
    cfg = write_study(tmp_path, code_corpus, seeds=[1, 2, 3], search={"seed": 0},
                      experiments=[{"name": "code-cpt", "regime": "cpt", "domain": "code", "data": str(code_corpus), "tokens": 256,
                                    "checkpoints": [128, 256], "heldout_fraction": 0.5, "chunk_chars": 80, "heldout_docs": 16,
                                    "heldout_selection": 0.25}],
                      methods=[{"method": "full", "lr": [1e-4, 1e-3]}, {"method": "lora", "rank": 2, "targets": "all", "lr": [1e-2]}],
                      eval={"forgetting": [], "learning": {"code": [], "math": []}, "heldout_tokens": 128, "general": "general-text"})
    s = plan.load(cfg)
    planned = plan.expand(s, tmp_path / "out" / "tiny")
    # full's grid on seed 0; its verdict runs on seeds 1-3 at a stand-in rate until the search chooses; LoRA's single
    # rate is not searched
    assert [(r.role, r.config.train.seed, r.chosen) for r in planned if r.family == "full"] == \
        [("search", 0, True), ("search", 0, True), ("verdict", 1, False), ("verdict", 2, False), ("verdict", 3, False)]
    assert [(r.role, r.config.train.seed, r.chosen) for r in planned if r.family == "lora"] == [("verdict", s, True) for s in (1, 2, 3)]
    out = tmp_path / "out"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    res = json.loads((out / "tiny" / "results.json").read_text())
    search = [r for r in res["runs"] if r["role"] == "search"]
    verdict = [r for r in res["runs"] if r["role"] == "verdict"]
    # the chosen rate is the search run with the lower final loss on the selection documents
    best = min(search, key=lambda r: r["checkpoints"][-1]["heldout"]["select"]["loss"])
    assert {r["lr"] for r in verdict if r["family"] == "full"} == {best["lr"]} and all(r["best_lr"] for r in verdict)
    assert not any(r["best_lr"] for r in search) and sorted(r["seed"] for r in verdict) == [1, 1, 2, 2, 3, 3]
    assert all(r["documents"] >= 3 for r in res["runs"])  # 4 rows of pieces of 80 characters: several files
    design = res["design"]
    assert design["seeds"] == [1, 2, 3] and design["search_seed"] == 0 and len(design["experiments"]["code-cpt"]["corpus_hash"]) == 16
    assert design["experiments"]["code-cpt"]["heldout_documents"] == {"cpt-code": 12, "cpt-code:select": 4, "general": 16}
    summary = json.loads((out / "tiny" / "report" / "summary.json").read_text())
    assert {f["family"] for f in summary["findings"] if f["claim"] in "ab"} == {"primary"}
    assert all(f["seeds"] == 3 for f in summary["findings"] if f["claim"] in "ab" and f["verdict"] != "not run")
    assert "primary rows decided" in summary["stability"]
    page = (out / "tiny" / "report" / "report.md").read_text()
    assert page.index("The answer") < page.index("| model |")
