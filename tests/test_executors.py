"""`learnforget study --executor ray` on a local Ray instance and the tiny model: same results as the
local executor, a failing run named with its error while the others finish, and clear errors when
Ray is missing or the executor mapping is wrong."""

import json
import os
import sys
from pathlib import Path

import pytest
import ray
from test_study import write_study

from learnforget import cli, config
from learnforget.study import executors, plan
from learnforget.errors import UserError

VOLATILE = ("created", "tokens_per_s", "peak_rss_mb", "wall", "seconds", "elapsed")


@pytest.fixture(scope="module")
def ray_local():
    """One small local Ray instance for the module (starting one takes seconds); the executor joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _stable(value):
    """results.json without what differs between two identical runs: timestamps, speeds, memory, wall times."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(w in k for w in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


TWO_RUNS = [{"method": "full", "lr": [1e-3]}, {"method": "lora", "rank": [2], "targets": "all", "lr": [1e-2]}]


def test_ray_executor_gives_the_local_results(code_corpus, tmp_path, ray_local, capsys):
    cfg = write_study(tmp_path, code_corpus, methods=TWO_RUNS, executor={"num_cpus": 1})
    assert cli.main(["study", str(cfg), "--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    assert cli.main(["study", str(cfg), "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    log = capsys.readouterr().out
    assert "[study] ray: 2 runs to train (0 cached)" in log and "2/2 runs done" in log
    local = json.loads((tmp_path / "local" / "tiny" / "results.json").read_text())["runs"]
    remote = json.loads((tmp_path / "ray" / "tiny" / "results.json").read_text())["runs"]
    assert len(remote) == 2 and all(len(r["checkpoints"]) == 2 for r in remote)
    assert _stable(remote) == _stable(local)
    # a second study run: everything is cached, Ray has nothing to do
    assert cli.main(["study", str(cfg), "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert "all 2 runs are done (cached)" in capsys.readouterr().out


def test_a_failing_run_is_named_and_the_others_finish(code_corpus, tmp_path, ray_local, capsys):
    experiments = [{"name": "good", "regime": "cpt", "domain": "code", "data": str(code_corpus), "tokens": 256},
                   {"name": "bad", "regime": "cpt", "domain": "code", "data": str(tmp_path / "no-such-corpus"), "tokens": 256}]
    cfg = write_study(tmp_path, code_corpus, experiments=experiments, methods=[{"method": "full", "lr": [1e-3]}])
    out = tmp_path / "studies"
    assert cli.main(["study", str(cfg), "--out", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 training runs failed" in err
    assert "bad-full-lr0.001-s0-" in err and "no-such-corpus: no such file, folder or glob match" in err
    runs = {p.name.split("-")[0]: p for p in (out / "tiny" / "runs").iterdir()}
    assert json.loads((runs["good"] / "run.json").read_text())["status"] == "done"
    assert not (out / "tiny" / "results.json").exists()


def test_missing_ray_is_a_clear_error(code_corpus, tmp_path, monkeypatch):
    s = plan.load(write_study(tmp_path, code_corpus, methods=TWO_RUNS))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UserError, match=r'pip install "learnforget\[ray\]"'):
        executors.train_ray(plan.expand(s, tmp_path / "out"), s.executor)


@pytest.mark.parametrize("mapping, message", [
    ({"num_cpus": 0}, r"executor.num_cpus: must be > 0"),
    ({"num_gpus": -1}, r"executor.num_gpus: must be >= 0"),
    ({"num_cpus": "two"}, r"study.yaml:\d+: executor.num_cpus: expected a number, got .two."),
    ({"gpus": 1}, r"executor: unknown field\(s\) \['gpus'\]"),
])
def test_bad_executor_mapping(code_corpus, tmp_path, mapping, message):
    with pytest.raises(UserError, match=message):
        plan.load(write_study(tmp_path, code_corpus, executor=mapping))


def test_executor_resources_load(code_corpus, tmp_path):
    s = plan.load(write_study(tmp_path, code_corpus, executor={"num_cpus": 2, "num_gpus": 1, "memory_gb": 8}))
    assert (s.executor.num_cpus, s.executor.num_gpus, s.executor.memory_gb) == (2, 1, 8)
    assert plan.load(write_study(tmp_path, code_corpus)).executor == config.ExecutorSpec()


def test_a_cluster_needs_an_absolute_study_folder(code_corpus, tmp_path):
    s = plan.load(write_study(tmp_path, code_corpus, methods=TWO_RUNS))
    with pytest.raises(UserError, match="give --out as an absolute path"):
        executors.train_ray(plan.expand(s, Path("runs/studies/tiny")), s.executor, address="auto")


def test_local_workers_give_the_one_process_results(code_corpus, tmp_path, capsys):
    """executor.workers: 2 trains two runs at once in spawned processes (1 thread each here, as the test pins)."""
    one = write_study(tmp_path, code_corpus, methods=TWO_RUNS)
    assert cli.main(["study", str(one), "--out", str(tmp_path / "one")]) == 0
    (tmp_path / "w").mkdir()
    two = write_study(tmp_path / "w", code_corpus, methods=TWO_RUNS, executor={"workers": 2})
    capsys.readouterr()
    assert cli.main(["study", str(two), "--out", str(tmp_path / "two")]) == 0
    assert "2 runs to train (0 cached), 2 at a time" in capsys.readouterr().out
    a = json.loads((tmp_path / "one" / "tiny" / "results.json").read_text())["runs"]
    b = json.loads((tmp_path / "two" / "tiny" / "results.json").read_text())["runs"]
    assert _stable(a) == _stable(b) and all(len(r["checkpoints"]) == 2 for r in b)


def _blocked_on(lock_file: Path) -> int:
    """How many processes wait for the flock on this file (/proc/locks: blocked requests start with '->')."""
    inode = f":{os.stat(lock_file).st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line + " ")


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="observes the waiters in /proc/locks (Linux)")
def test_two_workers_given_the_same_run_train_it_once(code_corpus, tmp_path, ray_local):
    from learnforget import locks

    s = plan.load(write_study(tmp_path, code_corpus, methods=[{"method": "full", "lr": [1e-3]}]))
    run = plan.expand(s, tmp_path / "tiny")[0]
    held = locks.Lock(run.config.out, "run folder")  # both tasks meet at the lock: this test releases it once both wait
    task = ray.remote(executors._train_one).options(num_cpus=1)
    refs = [task.remote(run.config.to_dict()) for _ in range(2)]
    while _blocked_on(held.path) < 2:
        ready, _ = ray.wait(refs, timeout=0.05)
        assert not ready, ray.get(ready)  # a task that ends before it waits: the lock did not hold it
    held.release()
    assert ray.get(refs) == [run.config.out] * 2
    steps = [r["step"] for r in map(json.loads, (Path(run.config.out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and json.loads((Path(run.config.out) / "run.json").read_text())["status"] == "done"
