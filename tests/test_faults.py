"""The fault suite on the tiny model: every file of a full and a LoRA checkpoint truncated or deleted is
refused by every reader (load, eval, analyze, the study, resume) with one line naming folder and file;
folders learnforget did not write load or fail by name; a checkpoint write that fails half-way keeps the
previous checkpoint; a failed start leaves nothing, or a run.json that says so and accepts its fix; two
studies on one folder train each run once and write the results of one."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

from learnforget import checkpoint, cli, locks
from learnforget.errors import UserError
from learnforget.study import plan
from learnforget.train import loop

TINY = "tiny-random-llama"


def _corpus(d: Path) -> Path:
    d.mkdir()
    for i in range(40):
        body = "\n".join(f"    total += {i} * {j}  # step {j}" for j in range(12))
        (d / f"mod_{i:02d}.py").write_text(f"def f_{i}(x):\n    total = x\n{body}\n    return total\n")
    return d


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished two-run study (full, LoRA r2) with a spectrum: the checkpoints every reader is tried on."""
    tmp = tmp_path_factory.mktemp("faults")
    corpus = _corpus(tmp / "corpus")
    spec = {"name": "tiny", "model": TINY, "seq_len": 64,
            "experiments": [{"name": "code-cpt", "regime": "cpt", "domain": "code", "data": str(corpus), "tokens": 512, "checkpoints": [256, 512]}],
            "methods": [{"method": "full", "lr": [1e-3]}, {"method": "lora", "rank": [2], "targets": "all", "lr": [1e-2]}],
            "train": {"batch_tokens": 128, "micro_batch": 2},
            "eval": {"forgetting": [], "learning": {"code": []}, "heldout_tokens": 128, "general": str(corpus)},
            "analysis": {"spectrum": True, "intruders": False}}
    cfg = tmp / "study.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    out = tmp / "studies"
    commits = []  # the files committed by a rename into the study folder: the kill points of test_kill_9_...
    rename = os.replace

    def counted(src, dst, **kw):
        rename(src, dst, **kw)
        if Path(dst).is_relative_to(out):
            commits.append(Path(dst).relative_to(out))

    with mock.patch("os.replace", counted):
        assert cli.main(["study", str(cfg), "--out", str(out)]) == 0
    runs = plan.expand(plan.load(cfg), out / "tiny")
    return SimpleNamespace(cfg=cfg, out=out, corpus=corpus, tmp=tmp, runs=runs, commits=commits,
                           results=json.loads((out / "tiny" / "results.json").read_text()),
                           cks={r.family: checkpoint.complete(r.config.out)[-1] for r in runs})


def _damage(f: Path, how: str) -> None:
    if how == "deleted":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and "Traceback" not in "\n".join(err), err
    return err[-1]


def _readers(s, ck: Path, tmp: Path):
    """Every way a checkpoint is read: (name, call returning the one-line error it gave)."""
    def load(merge):
        def call(capsys):
            with pytest.raises(UserError) as e:
                checkpoint.load(TINY, ck, merge=merge)
            return str(e.value)
        return call

    def command(argv):
        return lambda capsys: _one_line_error(capsys, cli.main(argv))

    return [("load merged", load(True)), ("load", load(False)),
            ("eval", command(["eval", "--model", TINY, "--checkpoint", str(ck), "--tasks", f"perplexity:{s.corpus}",
                              "--ppl-tokens", "128", "--ppl-seq-len", "64", "--out", str(tmp / "eval")])),
            ("analyze", command(["analyze", "--base", TINY, "--checkpoint", str(ck)])),
            ("study", command(["study", str(s.cfg), "--out", str(s.out)]))]


@pytest.mark.parametrize("family", ["full", "lora"])
@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_every_reader_refuses_a_damaged_checkpoint(study, family, how, tmp_path, capsys):
    ck = study.cks[family]
    files = sorted(p.relative_to(ck) for p in ck.rglob("*") if p.is_file())
    assert len(files) >= 7 and Path("manifest.json") in files
    for name in files:
        f = ck / name
        original = f.read_bytes()
        _damage(f, how)
        try:
            for reader, call in _readers(study, ck, tmp_path):
                message = call(capsys)
                assert str(ck) in message and str(name) in message and "not read" in message, (reader, name, message)
        finally:
            f.write_bytes(original)
    assert checkpoint.is_complete(ck) and checkpoint.load(TINY, ck, merge=True) is not None  # restored: read again


def test_folders_learnforget_did_not_write(study, tmp_path):
    import shutil

    plain = tmp_path / "adapter"
    shutil.copytree(study.cks["lora"], plain)
    (plain / "manifest.json").unlink()
    assert checkpoint.load(TINY, plain, merge=True) is not None  # a PEFT folder without manifest: accepted
    weights = plain / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])  # truncated (was a SafetensorError traceback)
    with pytest.raises(UserError, match=rf"checkpoint {plain}: adapter_model.safetensors: .*truncated; not read"):
        checkpoint.load(TINY, plain, merge=True)
    weights.unlink()  # no weights at all (was an HFValidationError about repo ids)
    with pytest.raises(UserError, match=rf"checkpoint {plain}: no weights file \(adapter_model.safetensors"):
        checkpoint.load(TINY, plain, merge=True)
    full = tmp_path / "full"
    shutil.copytree(study.cks["full"], full)
    (full / "manifest.json").unlink()
    (full / "config.json").write_text("{\"model_type\": ")
    with pytest.raises(UserError, match=rf"checkpoint {full}: config.json: not valid JSON"):
        checkpoint.load(TINY, full, merge=True)


def args(corpus, out, *extra):
    return ["train", "--model", TINY, "--data", str(corpus), "--seq-len", "64", "--batch-tokens", "256", "--micro-batch", "2",
            "--eval-tokens", "0", "--method", "full", "--lr", "1e-3", "--tokens", "768", "--checkpoints", "256,512,768",
            "--out", str(out), *extra]


def train(argv):
    return loop.run(cli.train_config(cli.build_parser().parse_args(argv)))


def losses(out):
    return [r["loss"] for r in map(json.loads, Path(out, "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_resume_checks_it(study, tmp_path, monkeypatch, capsys):
    import errno

    import transformers.modeling_utils as mu

    real, calls = mu.safe_save_file, []

    def disk_full_at_the_second(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second checkpoint's weights: half a file written, then the disk is full
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(mu, "safe_save_file", disk_full_at_the_second)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"cannot write checkpoint .*tokens-000000000512 \(OSError: .*No space left on device; [\d,]+ MiB free on that disk\); "
                                        r"the previous checkpoint tokens-000000000256 is intact"):
        train(args(study.corpus, out))
    monkeypatch.undo()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["tokens-000000000256"]  # no half-written folder left
    ck = checkpoint.complete(out)[0]
    assert (ck / "resume").is_dir()  # still the newest: it keeps what a resume needs
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    # resume reads the checkpoint too: each of its files (resume state included) damaged is refused by name
    for name in sorted(p.relative_to(ck) for p in ck.rglob("*") if p.is_file()):
        for how in ("truncated", "deleted"):
            original = (ck / name).read_bytes()
            _damage(ck / name, how)
            try:
                with pytest.raises(UserError, match=rf"checkpoint {ck}: {name} (is missing|has [\d,]+ bytes|is truncated)"):
                    train(args(study.corpus, out))
            finally:
                (ck / name).write_bytes(original)
    capsys.readouterr()
    summary = train(args(study.corpus, out))  # the same command again: resumes from the intact checkpoint
    assert summary["status"] == "done" and "resuming from tokens-000000000256" in capsys.readouterr().out
    ref = tmp_path / "ref"
    train(args(study.corpus, ref))
    assert losses(out) == losses(ref)


def test_bad_data_leaves_no_run_folder_and_gives_advice_that_fits(tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.py").write_text("def f(x):\n    return x + 1\n" * 40)
    out = tmp_path / "never"
    rc = cli.main(args(one, out, "--eval-tokens", "128"))
    line = _one_line_error(capsys, rc)
    assert "single document cannot be split" in line and "--eval-tokens 0" in line and "raise --heldout-fraction" not in line
    assert not out.exists()
    short = tmp_path / "short"
    short.mkdir()
    for i in range(8):
        (short / f"m{i}.py").write_text(f"x = {i}\n")
    line = _one_line_error(capsys, cli.main(args(short, out, "--eval-tokens", "128")))
    assert "the whole corpus has" in line and "lower --seq-len" in line and not out.exists()


def test_a_failed_run_says_so_and_its_fix_is_accepted(study, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def broken(r, rows):
        raise RuntimeError("simulated failure in the first step")

    monkeypatch.setattr(loop, "_step", broken)
    with pytest.raises(RuntimeError):
        train(args(study.corpus, out))
    monkeypatch.undo()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "simulated failure" in record["error"]
    # a corrected command (here: another learning rate) on the same --out: nothing had trained, so it is accepted
    assert train(args(study.corpus, out, "--lr", "2e-3", "--tokens", "256", "--checkpoints", "256"))["status"] == "done"
    # what an older version left after a failed data check: run.json "running", empty metrics, TensorBoard files
    old = tmp_path / "old"
    (old / "tb").mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"status": "running", "config": {"model": TINY, "data": {"source": "/nope"}}}))
    (old / "metrics.jsonl").write_text("")
    assert train(args(study.corpus, old, "--tokens", "256", "--checkpoints", "256"))["status"] == "done"
    # a run that has trained is still not replaced by a different one
    with pytest.raises(UserError, match="holds a different run"):
        train(args(study.corpus, old, "--tokens", "512", "--checkpoints", "512"))


def test_list_options_and_argparse_errors_are_one_line(study, capsys):
    ck = str(study.cks["full"])
    line = _one_line_error(capsys, cli.main(["analyze", "--base", TINY, "--checkpoint", ck, "--eps", "0.5,fast"]))
    assert line == "learnforget: error: --eps: expected comma-separated numbers in (0, 1], got 'fast' in '0.5,fast'"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", "x", "--out", "y", "--checkpoints", "512,fast"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "argument --checkpoints: invalid comma-separated float value: '512,fast'" in err[0]


from test_study import stable  # results.json without the fields that measure the machine


def test_two_studies_on_one_folder_train_each_run_once(study, tmp_path):
    """Both processes are made to meet at the first run (this test holds its lock until both wait for it),
    then race freely: each run is trained once, and results.json is a single study's."""
    out = tmp_path / "studies"
    first = plan.expand(plan.load(study.cfg), out / "tiny")[0]
    held = locks.Lock(first.config.out, "run folder")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"study-{i}.log" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "learnforget.cli", "study", str(study.cfg), "--out", str(out)],
                              env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
    waiting = f"run folder {first.config.out} is in use by another process (pid {os.getpid()}): waiting"
    deadline = time.time() + 300
    while not all(waiting in log.read_text() for log in logs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
        time.sleep(0.05)
    held.release()
    for p in procs:
        p.wait(timeout=300)
    text = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], [t[-3000:] for t in text]
    assert sum(t.count("[learnforget] done:") for t in text) == len(study.runs)  # each run trained once
    assert sum(t.count("trained by the other process meanwhile") for t in text) >= 1
    assert stable(json.loads((out / "tiny" / "results.json").read_text())) == stable(study.results)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_commit_resumes_to_the_same_results(study, seed, tmp_path):
    """SIGKILL just before or just after a file commit drawn at random from the study's own, then resume:
    the same results.json as the study that was never killed."""
    import random

    rng = random.Random(seed)
    at, when = rng.randrange(1, len(study.commits) + 1), rng.choice(["before", "after"])
    out = tmp_path / "studies"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": str(at), "KILL_WHEN": when, "KILL_UNDER": str(out)}
    killed = subprocess.run([sys.executable, str(Path(__file__).with_name("killpoint.py")), "study", str(study.cfg), "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, (at, when, study.commits[at - 1], killed.stdout[-2000:], killed.stderr[-2000:])
    written = study.commits.index(Path("tiny/results.json")) + 1
    assert (out / "tiny" / "results.json").exists() == (at > written or (at == written and when == "after"))
    assert cli.main(["study", str(study.cfg), "--out", str(out)]) == 0
    assert stable(json.loads((out / "tiny" / "results.json").read_text())) == stable(study.results), (at, when, study.commits[at - 1])
