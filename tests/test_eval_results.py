"""The results writer: lm-eval's shape and metadata (versions, n-shot, configs, git hash, packages)."""

import json
import subprocess
from pathlib import Path

from learnforget.evaluate import results, tasks


def _result(name: str, n: int, **extra) -> dict:
    ids = [str(i) for i in range(n)]
    return {"alias": name, "n": n, "ids": ids, "samples": [{"doc_id": i, "pass": True} for i in ids], "value": 1.0, **extra}


def test_writes_lm_eval_shape_with_metadata(tmp_path):
    res = {"hellaswag": _result("hellaswag", 3), "gsm8k": _result("gsm8k", 2, mode="chat"),
           "humaneval": _result("humaneval", 2, mode="instruct"), "_forgetting": {"value": 0.5}}
    config = {"model": "m", "checkpoint": "ck", "adapter_merged": True, "dtype": "bfloat16", "batch_size": 4}
    path = results.write(tmp_path, res, config, {n: tasks.get(n) for n in ("hellaswag", "gsm8k", "humaneval")})
    body = json.loads(path.read_text())
    assert path.name.startswith("results_") and set(body["results"]) == {"hellaswag", "gsm8k", "humaneval"}
    assert "samples" not in body["results"]["hellaswag"] and body["groups"] == {"forgetting": {"value": 0.5}}
    assert body["versions"] == {"hellaswag": "1.0", "gsm8k": "3.0", "humaneval": "2.0"}  # instruct mode: humaneval_instruct
    assert body["n-shot"] == {"hellaswag": 0, "gsm8k": 0, "humaneval": 0}  # gsm8k in chat mode is zero-shot
    assert body["configs"]["gsm8k"]["split"] == "test" and body["configs"]["gsm8k"]["mode"] == "chat"
    assert body["configs"]["hellaswag"]["metrics"] == ["acc", "acc_norm"] and body["configs"]["hellaswag"]["primary"] == "acc_norm"
    assert body["n-samples"]["hellaswag"] == {"effective": 3}
    cfg = body["config"]
    assert (cfg["dtype"], cfg["batch_size"], cfg["adapter_merged"]) == ("bfloat16", 4, True)
    assert {"learnforget", "torch", "transformers", "python"} <= set(cfg["versions"])
    assert cfg["item_ids"]["gsm8k"] == ["0", "1"]
    rows = [json.loads(line) for line in (tmp_path / cfg["samples_files"]["hellaswag"]).read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == ["0", "1", "2"]
    head = subprocess.run(["git", "-C", str(Path(results.__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert body["git_hash"] == (head.stdout.strip() if head.returncode == 0 else None)
    with_5shot = results.task_metadata({"gsm8k": tasks.get("gsm8k")}, {"gsm8k": {"mode": "5shot"}})
    assert with_5shot["n-shot"] == {"gsm8k": 5}


def test_git_hash_is_null_outside_a_checkout(monkeypatch, tmp_path):
    fake = tmp_path / "src" / "learnforget" / "evaluate" / "results.py"
    monkeypatch.setattr(results, "__file__", str(fake))
    assert results.git_hash() is None
