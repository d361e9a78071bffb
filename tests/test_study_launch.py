"""A study run that asks for 2 processes (train.processes: 2) on the tiny model: launched through accelerate
launch by the local executor and from a Ray task by `--executor ray`, it trains the same steps to the same
losses as the 1-process run, is cached on a re-run, and a launch that fails is one line naming the run."""

import json
import re
from pathlib import Path

import pytest
from test_executors import ray_local  # noqa: F401  (the module's local Ray instance, shared)
from test_study import write_study

from learnforget import cli
from learnforget.config import ExecutorSpec
from learnforget.study import executors

# one row per process and micro-batch (2 rows a step), so 1 and 2 processes run the same global batches
TRAIN = {"batch_tokens": 128, "micro_batch": 1}
ONE_AND_TWO = [{"method": "full", "lr": [1e-3]}, {"method": "full", "lr": [1e-3], "processes": 2}]


def _runs(root: Path) -> dict[int, Path]:
    """The study's run folders by their process count (run.json records it)."""
    return {json.loads((d / "run.json").read_text())["processes"]: d for d in (root / "runs").iterdir()}


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _same_training(root: Path) -> None:
    runs = _runs(root)
    one, two = _losses(runs[1]), _losses(runs[2])
    assert len(one) == 4 and two == pytest.approx(one, rel=1e-5)
    assert sorted(p.name for p in (runs[2] / "checkpoints").iterdir()) == sorted(p.name for p in (runs[1] / "checkpoints").iterdir())
    results = json.loads((root / "results.json").read_text())["runs"]
    assert len(results) == 2
    held = [[c["heldout"]["target"]["loss"] for c in r["checkpoints"]] for r in results]
    assert len(held[0]) == 2 and held[1] == pytest.approx(held[0], rel=1e-4)


def test_a_two_process_run_trains_like_one_process_and_is_cached(code_corpus, tmp_path, capsys):
    cfg = write_study(tmp_path, code_corpus, methods=ONE_AND_TWO, train=TRAIN)
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    capsys.readouterr()
    _same_training(out / "tiny")
    assert (_runs(out / "tiny")[2] / "launch.json").exists()
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.count(": cached") == 2 and ": training" not in log


def test_ray_launches_a_two_process_run_from_a_task(code_corpus, tmp_path, ray_local, capsys):  # noqa: F811
    cfg = write_study(tmp_path, code_corpus, methods=ONE_AND_TWO, train=TRAIN, executor={"num_cpus": 1})
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out), "--executor", "ray"]) == 0
    log = capsys.readouterr().out
    assert "[study] ray: 2 runs to train (0 cached)" in log and "1 CPUs, 0 GPUs per process" in log and "2/2 runs done" in log
    _same_training(out / "tiny")
    assert cli.main(["study", str(cfg), "--out", str(out), "--executor", "ray"]) == 0
    assert "all 2 runs are done (cached)" in capsys.readouterr().out


def test_a_run_asks_ray_for_its_processes_resources():
    spec = ExecutorSpec(num_cpus=2, num_gpus=1, memory_gb=1.5)
    assert executors.resources(spec, 1) == {"num_cpus": 2, "num_gpus": 1, "memory": int(1.5 * 2**30)}
    assert executors.resources(spec, 4) == {"num_cpus": 8, "num_gpus": 4, "memory": int(6 * 2**30)}


# micro_batch 2 x 2 processes does not divide a step's 2 rows: the launched processes refuse it (a UserError)
BAD = {"method": "full", "lr": [1e-3], "processes": 2, "micro_batch": 2}
BAD_LINE = "its 2-process launch failed: batch_tokens 128 = 2 rows of 64; must be a multiple of micro_batch x processes = 2 x 2"


def test_a_failed_launch_is_one_line_naming_the_run(code_corpus, tmp_path, capsys):
    cfg = write_study(tmp_path, code_corpus, methods=[BAD])
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("learnforget: error: run code-cpt-full-lr0.001-s0-") and err[0].endswith(BAD_LINE)
    assert not any((out / "tiny" / "runs").iterdir())  # failed in set-up: no run folder, as in-process
    assert not (out / "tiny" / "results.json").exists()


def test_with_workers_a_failed_launch_is_named_and_the_others_finish(code_corpus, tmp_path, capsys):
    """executor.workers: 2 trains the 1-process run in the pool, then launches the 2-process one."""
    cfg = write_study(tmp_path, code_corpus, methods=[{"method": "full", "lr": [1e-3]}, BAD], executor={"workers": 2})
    assert cli.main(["study", str(cfg), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 training runs failed" in err and _names_the_bad_run(err)
    assert [json.loads((d / "run.json").read_text())["status"] for d in (tmp_path / "s" / "tiny" / "runs").iterdir()] == ["done"]


def test_ray_reports_a_failed_launch_like_a_failed_run(code_corpus, tmp_path, ray_local, capsys):  # noqa: F811
    cfg = write_study(tmp_path, code_corpus, methods=[BAD])
    assert cli.main(["study", str(cfg), "--out", str(tmp_path / "s"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "1 of 1 training runs failed" in err and _names_the_bad_run(err)


def _names_the_bad_run(err: str) -> bool:
    """The failure summary's line: `  <run folder name>: <the launch's error line>`. Matched within the line, not to
    its end: once in a full-suite run (not reproduced alone) other output was glued to the end of the line in the
    captured stderr."""
    return bool(re.search(r"^  code-cpt-full-lr0\.001-s0-[0-9a-f]+: " + re.escape(BAD_LINE), err, re.M))
