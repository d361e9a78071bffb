"""The training loop on the tiny model: checkpoints load with plain transformers/PEFT, a killed run
resumes to the same result, 2-process DDP equals 1 process, and bad options fail cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learnforget import checkpoint, cli, models
from learnforget.errors import UserError
from learnforget.train import run


def args(corpus, out, *extra):
    return ["train", "--model", "tiny-random-llama", "--data", str(corpus), "--seq-len", "64",
            "--batch-tokens", "256", "--micro-batch", "2", "--eval-tokens", "256", "--out", str(out), *extra]


def train(argv):
    return run(cli.train_config(cli.build_parser().parse_args(argv)))


def losses(out):
    return [r["loss"] for r in map(json.loads, Path(out, "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_full_checkpoint_loads_with_plain_transformers(code_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    summary = train(args(code_corpus, out, "--method", "full", "--lr", "1e-3", "--tokens", "1024", "--checkpoints", "512,1024"))
    cks = checkpoint.complete(out)
    assert [c.name for c in cks] == ["tokens-000000000512", "tokens-000000001024"]
    assert not any((c / "resume").exists() for c in cks)  # a finished run keeps weights, not resume state
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
    reloaded = AutoModelForCausalLM.from_pretrained(cks[-1])
    base, _ = models.load("tiny-random-llama")
    x = torch.randint(3, 200, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(reloaded(x).logits, base(x).logits)  # it trained
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval" in m]
    assert [m["tokens"] for m in evals] == [0, 512, 1024]
    assert evals[-1]["eval"]["target"]["loss"] < evals[0]["eval"]["target"]["loss"]  # held-out loss falls
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "done" and run_json["peak_rss_mb"] > 0 and run_json["versions"]["torch"]


def test_lora_checkpoint_loads_with_peft(code_corpus, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    summary = train(args(code_corpus, out, "--method", "lora", "--rank", "4", "--targets", "attention",
                         "--lr", "1e-2", "--tokens", "512", "--dropout", "0"))
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"] / 5
    ck = checkpoint.complete(out)[-1]
    cfg = json.loads((ck / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    base, _ = models.load("tiny-random-llama")
    x = torch.randint(3, 200, (1, 16))
    with torch.no_grad():
        before = base(x).logits.clone()
        tuned = PeftModel.from_pretrained(base, ck)
        assert not torch.allclose(tuned(x).logits, before)


def _variant_run(corpus, tmp_path, *variant):
    """One step of LoRA r2 from B = 0: its adapter_config.json and adapter weights."""
    from safetensors.torch import load_file

    out = tmp_path / "v"
    summary = train(args(corpus, out, "--method", "lora", "--rank", "2", "--lr", "1e-3", "--tokens", "256", *variant))
    assert summary["status"] == "done" and summary["plan"]["total_steps"] == 1
    ck = checkpoint.complete(out)[-1]
    return out, ck, json.loads((ck / "adapter_config.json").read_text()), load_file(ck / "adapter_model.safetensors")


def test_rslora_scales_by_alpha_over_sqrt_r(code_corpus, tmp_path):
    from peft import PeftModel

    _, ck, cfg, _ = _variant_run(code_corpus, tmp_path, "--rslora")
    assert cfg["use_rslora"] is True and cfg["r"] == 2 and cfg["lora_alpha"] == 4
    tuned = PeftModel.from_pretrained(models.load("tiny-random-llama")[0], ck)
    q = tuned.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(4 / 2 ** 0.5)  # plain LoRA: alpha / r = 2


def test_dora_saves_magnitude_vectors(code_corpus, tmp_path):
    _, _, cfg, weights = _variant_run(code_corpus, tmp_path, "--dora")
    assert cfg["use_dora"] is True
    magnitudes = [k for k in weights if "lora_magnitude_vector" in k]
    assert len(magnitudes) == 4 * 7  # one per adapted module: 4 layers x all 7 linear types


def test_pissa_starts_from_the_principal_singular_vectors(code_corpus, tmp_path):
    from safetensors.torch import load_file

    out, _, cfg, _ = _variant_run(code_corpus, tmp_path, "--init", "pissa")
    assert cfg["r"] == 4  # converted back to plain LoRA on the original base: rank 2r
    init = json.loads((out / "pissa-init" / "adapter_config.json").read_text())
    w0 = load_file(out / "pissa-init" / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    ba = w0[f"{prefix}.lora_B.weight"] @ w0[f"{prefix}.lora_A.weight"] * init["lora_alpha"] / init["r"]
    # the initial adapter is the base weight's best rank-2 part (default init: B = 0, so BA = 0)
    W = models.load("tiny-random-llama")[0].model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.allclose(ba, _top_rank(W, 2), atol=1e-5)


def _top_rank(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


@pytest.mark.parametrize("ratio", [None, 16])
def test_loraplus_gives_b_ratio_times_the_learning_rate(code_corpus, tmp_path, ratio):
    # Adam's first step moves every weight with a nonzero gradient by its learning rate (m / sqrt(v) = ±1),
    # and B starts at 0: after one step max |B| is B's learning rate.
    _, _, _, weights = _variant_run(code_corpus, tmp_path, *(["--loraplus-ratio", str(ratio)] if ratio else []))
    b = max(float(w.abs().max()) for k, w in weights.items() if "lora_B" in k)
    assert b == pytest.approx((ratio or 1) * 1e-3, rel=1e-3)


def test_loraplus_optimizer_groups():
    from learnforget.config import MethodConfig, TrainConfig
    from learnforget.train import methods

    method = MethodConfig(method="lora", rank=2, loraplus_ratio=16)
    model = methods.apply(models.load("tiny-random-llama")[0], method)
    opt = methods.optimizer(model, method, TrainConfig(lr=1e-3, tokens=256))
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lr for n, lr in lr_of.items() if "lora_B" in n} == {16e-3}
    assert {lr for n, lr in lr_of.items() if "lora_A" in n} == {1e-3}


def test_ift_epochs_budget(qa_jsonl, tmp_path):
    out = tmp_path / "ift"
    summary = train(args(qa_jsonl, out, "--regime", "ift", "--method", "full", "--lr", "1e-3", "--epochs", "1", "--checkpoints", "0.5,1"))
    assert summary["plan"]["unit"] == "epochs" and len(checkpoint.complete(out)) == 2
    assert json.loads((checkpoint.complete(out)[0] / "manifest.json").read_text())["epochs"] == 0.5


def _cli(argv, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "learnforget.cli", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume_reaches_the_same_result(code_corpus, tmp_path, kill_when):
    common = ["--method", "full", "--lr", "1e-3", "--tokens", "6144", "--checkpoints", "1024,2048,4096", "--eval-tokens", "0"]
    ref = tmp_path / "ref"
    assert _cli(args(code_corpus, ref, *common)).wait() == 0
    killed = tmp_path / "killed"
    p = _cli(args(code_corpus, killed, *common))
    first = killed / "checkpoints" / "tokens-000000001024"
    kill_when(p, lambda: checkpoint.is_complete(first), timeout=120, poll=0.02)
    assert not (killed / "run.json").read_text().count('"done"')
    cks = checkpoint.complete(killed)
    assert (cks[-1] / "resume").exists() and not any((c / "resume").exists() for c in cks[:-1])  # newest only
    resumed = _cli(args(code_corpus, killed, *common))
    log = resumed.communicate()[0]
    assert resumed.returncode == 0, log
    assert "resuming from tokens-" in log
    assert losses(killed) == losses(ref)  # every step's loss, bit for bit
    a = checkpoint.complete(ref)[-1] / "model.safetensors"
    b = checkpoint.complete(killed)[-1] / "model.safetensors"
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_process_ddp_matches_one_process(code_corpus, tmp_path):
    common = ["--method", "full", "--lr", "1e-3", "--tokens", "2048", "--eval-tokens", "0"]
    one = tmp_path / "one"
    assert _cli(args(code_corpus, one, *common)).wait() == 0
    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", "-m", "learnforget.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(launcher + args(code_corpus, two, *common), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    assert losses(two) == pytest.approx(losses(one), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--method", "lora", "--targets", "qq_proj", "--tokens", "512"], "module.*qq_proj.*not in this model"),
    (["--method", "full", "--tokens", "100"], "smaller than one step"),
    (["--method", "full", "--tokens", "512", "--checkpoints", "1024"], "must lie in"),
])
def test_bad_options_fail_before_writing(code_corpus, tmp_path, extra, message):
    out = tmp_path / "never"
    with pytest.raises(UserError, match=message):
        train(args(code_corpus, out, *extra))
    assert not out.exists()


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    p = _cli(["train", "--model", "tiny-random-llama", "--data", str(tmp_path / "nope.jsonl"), "--tokens", "512", "--out", str(tmp_path / "o")])
    out = p.communicate()[0]
    assert p.returncode == 2
    assert "learnforget: error:" in out and "no such file" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()


def test_resume_refuses_a_different_run(code_corpus, tmp_path):
    out = tmp_path / "r"
    train(args(code_corpus, out, "--method", "full", "--lr", "1e-3", "--tokens", "256"))
    with pytest.raises(UserError, match="holds a different run"):
        train(args(code_corpus, out, "--method", "full", "--lr", "2e-3", "--tokens", "256"))


def test_a_batch_of_prompts_only_is_skipped_not_nan(tmp_path):
    # prompts far longer than a row: some rows (= global batches here) have no supervised token
    p = tmp_path / "long.jsonl"
    p.write_text("".join(json.dumps({"prompt": "tell me " * 40 + str(i), "response": f"ok {i}"}) + "\n" for i in range(30)))
    out = tmp_path / "ift"
    summary = train(["train", "--model", "tiny-random-llama", "--data", str(p), "--regime", "ift", "--seq-len", "64",
                     "--batch-tokens", "64", "--micro-batch", "1", "--eval-tokens", "128", "--method", "full", "--lr", "1e-3",
                     "--tokens", "1024", "--out", str(out)])
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "supervised_tokens" in r]
    assert any(r["supervised_tokens"] == 0 and r["loss"] is None for r in steps)  # the case happened, and was skipped
    assert all(r["loss"] == r["loss"] for r in steps if r["loss"] is not None)  # no NaN anywhere
    assert all(v["loss"] == v["loss"] for r in rows if "eval" in r for v in r["eval"].values())
    assert summary["final_loss"] is not None and summary["final_loss"] == summary["final_loss"]


def test_precision_auto_follows_the_hardware_and_is_recorded(code_corpus, tmp_path, monkeypatch):
    """auto: bf16 only where the CPU has native bf16 *and* it measured faster; run.json says which and why;
    bf16 really runs (its losses are close to fp32's, not equal)."""
    from learnforget.cpu import precision

    def trained(name, flags, speedup):
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
        monkeypatch.setattr(precision, "bf16_speedup", lambda: speedup)
        out = tmp_path / name
        train(args(code_corpus, out, "--method", "full", "--lr", "1e-3", "--tokens", "768", "--eval-tokens", "0"))
        rec = json.loads((out / "run.json").read_text())
        return rec["precision"], rec["precision_reason"], losses(out)

    fp32, why, ref = trained("none", set(), 9.0)
    assert fp32 == "fp32" and "without native bf16" in why
    slow, why, _ = trained("slow", {"avx512_bf16"}, 1.05)
    assert slow == "fp32" and "measured only 1.05x" in why
    bf16, why, got = trained("fast", {"avx512_bf16"}, 2.0)
    assert bf16 == "bf16" and "avx512_bf16" in why
    assert got != ref and got == pytest.approx(ref, rel=2e-2)
    # resumed on a machine that would resolve auto otherwise, a run keeps its checkpoints' precision
    from learnforget.train.loop import run_precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    cfg = cli.train_config(cli.build_parser().parse_args(args(code_corpus, tmp_path / "fast", "--method", "full", "--tokens", "768")))
    assert run_precision(cfg)[0] == "bf16"
    assert checkpoint.manifest(checkpoint.complete(tmp_path / "none")[-1])["precision"] == "fp32"


def test_a_bf16_run_is_scored_in_fp32_like_its_base(code_corpus, tmp_path):
    """Held-out scores during a bf16 mixed-precision run are the fp32 instrument the base is scored with: the saved
    checkpoint scored plainly gives the same numbers (through Accelerate's autocast wrapper they were off)."""
    from learnforget import heldout, models
    from learnforget.train.acceleration import accelerator
    from learnforget.train.heldout import heldout_sets

    out = tmp_path / "bf16"
    train(args(code_corpus, out, "--method", "full", "--lr", "1e-3", "--tokens", "512", "--precision", "bf16"))
    row = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in r][-1]["eval"]["target"]
    cfg = cli.train_config(cli.build_parser().parse_args(args(code_corpus, out, "--method", "full", "--tokens", "512")))
    base, tok = models.load("tiny-random-llama")
    ids, labels = heldout_sets(cfg, tok)["target"]
    model = checkpoint.load(base, checkpoint.complete(out)[-1], merge=False)
    plain = heldout.score(model, ids, labels, tok.eos_token_id)
    assert row["loss"] == plain["loss"]  # the same computation, bit for bit
    prepared = accelerator("bf16").prepare(model)
    with torch.no_grad():  # the wrapper's forward really differs (bf16 attention): the check above can fail
        wrapped, own = prepared(input_ids=ids[:2]).logits, prepared._original_forward(input_ids=ids[:2]).logits
    assert (wrapped - own).abs().max() > 1e-4
    assert heldout.score(prepared, ids, labels, tok.eos_token_id)["loss"] == plain["loss"]


def test_a_paused_run_resumes_to_the_uninterrupted_result(code_corpus, tmp_path):
    # advise's pilots: the first part of the budget's run, paused at a checkpoint, later resumed as if never stopped
    common = ("--method", "full", "--lr", "1e-3", "--tokens", "1024", "--checkpoints", "256,512,1024")
    whole = tmp_path / "whole"
    train(args(code_corpus, whole, *common))
    paused = tmp_path / "paused"
    cfg = cli.train_config(cli.build_parser().parse_args(args(code_corpus, paused, *common)))
    rec = run(cfg, stop_tokens=400)  # pauses at the first checkpoint at or after 400 tokens: 512
    assert rec["status"] == "paused" and rec["paused_at"]["tokens"] == 512 and rec["parameters"]["total"] > 0
    assert [c.name for c in checkpoint.complete(paused)] == ["tokens-000000000256", "tokens-000000000512"]
    assert (checkpoint.complete(paused)[-1] / "resume").exists()
    assert run(cfg, stop_tokens=512)["status"] == "paused"  # already there: nothing trained
    assert len(losses(paused)) == 2
    assert run(cfg)["status"] == "done"
    assert losses(paused) == losses(whole)
