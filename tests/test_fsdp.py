"""FSDP (FSDP2) run, not assumed: 2 CPU processes over gloo train the tiny model with the 1-process run's loss
curve, save the same weights as a plain transformers model / PEFT adapter, and a killed run resumes to the same
result. Each test launches through a different entry: learnforget.train.launch (FSDP_FLAGS), the accelerate config
file configs/accelerate/fsdp-2cpu.yaml, and accelerate launch flags by hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learnforget import checkpoint, cli, models
from learnforget.train import launch
from learnforget.errors import UserError
from learnforget.train import run

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
# the reference is 1 process at the same global batch (4 rows of 64 tokens a step), in fp32: on a CPU with native
# bf16, precision auto would pick bf16, where FSDP2 keeps gathered weights in bf16 and matches 1 process only to ~1e-4
COMMON = ["--model", "tiny-random-llama", "--seq-len", "64", "--batch-tokens", "256", "--micro-batch", "2", "--eval-tokens", "0",
          "--precision", "fp32"]
TWO = ["--processes", "2", "--distributed", "fsdp"]


def args(corpus, out, *extra):
    return ["train", "--data", str(corpus), "--out", str(out), *COMMON, *extra]


def config(argv):
    return cli.train_config(cli.build_parser().parse_args(argv))


def losses(out, key="loss"):
    return [r[key] for r in map(json.loads, Path(out, "metrics.jsonl").read_text().splitlines()) if key in r]


def last(out) -> Path:
    return checkpoint.complete(out)[-1]


def via_launch(argv, port: int) -> list[str]:
    """The argv a study runs: learnforget.train.launch.command (FSDP_FLAGS) on the run's RUN.json."""
    cfg = config(argv)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    spec = Path(cfg.out).with_name(Path(cfg.out).name + ".json")
    spec.write_text(json.dumps(cfg.to_dict()))
    return launch.command(cfg, spec, port=port)


def finish(cmd, timeout=240) -> str:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def weights(ck: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(ck / name)


def close(a: dict, b: dict) -> float:
    """Largest difference between two checkpoints' weights (same names). Summation order differs between 1 and
    2 processes (reduce-scatter, the head's matmul), and Adam turns float-rounding differences of near-zero
    gradients into up to ~1% of a step (measured: 1e-7 to 8e-6 at lr 1e-3); a different run differs by far more."""
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


FULL = ["--method", "full", "--lr", "1e-3", "--tokens", "4096", "--checkpoints", "512,4096"]


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory):
    """The uninterrupted full fine-tuning runs, 1 process and 2 under FSDP (through learnforget.train.launch.command), shared
    by two tests (each launch costs ~10 s of start-up here). Corpus: tests/conftest.py's code_corpus, module-wide."""
    root = tmp_path_factory.mktemp("full")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):  # as conftest.code_corpus writes it
        body = "\n".join(f"    total += {i} * {j}  # step {j}" for j in range(12))
        (corpus / f"mod_{i:02d}.py").write_text(f"def f_{i}(x):\n    total = x\n{body}\n    return total\n")
    run(config(args(corpus, root / "one", *FULL)))
    finish(via_launch(args(corpus, root / "two", *FULL, *TWO), port=29531))
    return corpus, root / "one", root / "two"


def test_full_fine_tuning_matches_one_process_and_saves_a_plain_model(full_runs):
    from transformers import AutoModelForCausalLM

    _, one, two = full_runs
    record = json.loads((two / "run.json").read_text())
    assert record["processes"] == 2 and record["config"]["train"]["distributed"] == "fsdp"
    assert len(losses(two)) == 16 and losses(two) == pytest.approx(losses(one), rel=1e-5)
    # the consolidated checkpoint: one model.safetensors with an unsharded run's keys, loadable by plain transformers
    a, b = weights(last(one), "model.safetensors"), weights(last(two), "model.safetensors")
    assert close(a, b) < 2e-5  # 2% of a step at lr 1e-3
    reloaded = AutoModelForCausalLM.from_pretrained(last(two))
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # tied again, as saved by 1 process
    x = torch.randint(3, 200, (1, 16))
    with torch.no_grad():
        tuned = reloaded(x).logits
        assert torch.allclose(tuned, AutoModelForCausalLM.from_pretrained(last(one))(x).logits, atol=1e-4)
        assert not torch.allclose(tuned, models.load("tiny-random-llama")[0](x).logits, atol=1e-2)  # it trained


def test_lora_matches_one_process_and_saves_a_peft_adapter(code_corpus, tmp_path):
    from peft import PeftModel

    # held-out scoring too: under FSDP every process runs its forward passes, the main one records
    common = ["--method", "lora", "--rank", "4", "--targets", "attention", "--lr", "1e-2", "--dropout", "0", "--tokens", "2048",
              "--checkpoints", "1024,2048", "--eval-tokens", "256"]
    one = tmp_path / "one"
    run(config(args(code_corpus, one, *common)))
    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/fsdp-2cpu.yaml"),
                "--main_process_port", "29532", "-m", "learnforget.cli"]
    finish(launcher + args(code_corpus, two, *common, *TWO, "--micro-batch", "1"))  # 2 micro-batches a process: FSDP2's no_sync
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    held_out = lambda out: [r["eval"]["target"]["loss"] for r in map(json.loads, Path(out, "metrics.jsonl").read_text().splitlines()) if "eval" in r]  # noqa: E731
    assert len(held_out(two)) == 3 and held_out(two) == pytest.approx(held_out(one), rel=1e-5)
    adapter = lambda out: {**(c := json.loads((last(out) / "adapter_config.json").read_text())), "target_modules": sorted(c["target_modules"])}  # noqa: E731 (a set, saved in any order)
    assert adapter(two) == adapter(one)
    a, b = weights(last(one), "adapter_model.safetensors"), weights(last(two), "adapter_model.safetensors")
    assert close(a, b) < 1e-4  # 1% of a step at lr 1e-2
    base = models.load("tiny-random-llama")[0]
    x = torch.randint(3, 200, (1, 16))
    with torch.no_grad():
        before = base(x).logits.clone()
        tuned = PeftModel.from_pretrained(base, last(two))(x).logits
    assert not torch.allclose(tuned, before, atol=1e-3)


class _Tree:
    """A launched run's whole process tree (accelerate launch -> torchrun agent -> the 2 workers): kill_when's
    SIGKILL reaches every process of it at once, as a crash of the machine would. By pid, not by group: torchrun
    starts each worker in a session of its own, so killing the launcher's group leaves the workers training."""

    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)

    def poll(self):
        return self.p.poll()

    def send_signal(self, sig):
        import psutil

        tree = [psutil.Process(self.p.pid), *psutil.Process(self.p.pid).children(recursive=True)]
        for proc in tree:
            proc.send_signal(sig)
        psutil.wait_procs(tree, timeout=30)

    def wait(self):
        return self.p.wait()


def test_killed_run_resumes_to_the_same_result(full_runs, tmp_path, kill_when):
    corpus, _, ref = full_runs  # ref: the same run uninterrupted
    flags = [sys.executable, "-m", "accelerate.commands.launch", *launch.FSDP_FLAGS, "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", "-m", "learnforget.cli"]
    killed = tmp_path / "killed"
    first = killed / "checkpoints" / "tokens-000000000512"
    kill_when(_Tree(flags + args(corpus, killed, *FULL, *TWO)), lambda: checkpoint.is_complete(first), timeout=120, poll=0.02)
    assert '"done"' not in (killed / "run.json").read_text()
    assert checkpoint.complete(killed) == [first]
    assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= {p.name for p in (first / "resume").iterdir()}  # Accelerate's FSDP save
    log = finish(flags + args(corpus, killed, *FULL, *TWO))
    assert "resuming from tokens-000000000512" in log
    assert losses(killed) == losses(ref)  # every step's loss, bit for bit
    a, b = weights(last(ref), "model.safetensors"), weights(last(killed), "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_asked_for_is_fsdp_running(code_corpus, tmp_path):
    # asked for, not launched under it: refused before the run folder is touched
    out = tmp_path / "never"
    with pytest.raises(UserError, match="asks for FSDP.*started without it"):
        run(config(args(code_corpus, out, "--method", "full", "--tokens", "256", "--distributed", "fsdp")))
    assert not out.exists()
    # launched under FSDP, asked for DDP: refused too (its record would say ddp)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/fsdp-2cpu.yaml"),
           "--main_process_port", "29534", "-m", "learnforget.cli", *args(code_corpus, out, "--method", "full", "--tokens", "256",
                                                                        "--processes", "2")]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode != 0 and "started under FSDP" in r.stderr and "asks for ddp" in r.stderr
    assert not out.exists()
