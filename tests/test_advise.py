"""learnforget advise on the tiny model: pilots chosen by successive halving and paused, a forecast page, the
continue study resuming the very pilots to the budget, forecasts beside measurements, and backtests."""

import json
from pathlib import Path

import pytest

from learnforget import cli
from learnforget.errors import UserError


def advise_args(corpus: Path, out: Path, *extra) -> list[str]:
    return ["advise", "--model", "tiny-random-llama", "--data", str(corpus), "--budget-tokens", "2048", "--methods", "full,lora-r4",
            "--seq-len", "64", "--batch-tokens", "128", "--micro-batch", "2", "--heldout-tokens", "256", "--general", str(corpus),
            "--workers", "1", "--full-lr", "1e-3", "--bracket", "2", "--pilot-fraction", "0.25", "--out", str(out), *extra]


def runs_of(out: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "run.json").read_text()) for p in sorted((out / "runs").iterdir())}


def test_advise_pilots_forecast_continue_and_backtest(code_corpus, tmp_path, capsys):
    out = tmp_path / "adv"
    assert cli.main(advise_args(code_corpus, out)) == 0
    result = json.loads((out / "forecast.json").read_text())
    assert result["schema"] == "learnforget.advise/1" and result["pilot_tokens"] == 512  # 1/4 of 16 steps of 128
    assert set(result["methods"]) == {"full", "lora-r4"}
    for key, m in result["methods"].items():
        assert sum(r["kept"] for r in m["lr_bracket"]) == 1 and len(m["lr_bracket"]) == 2  # the bracket, one kept
        assert m["points"]["target_loss"]["tokens"] == [0, 128, 256, 512]
        assert m["measured"] is None
        assert m["cost"]["here"]["peak_rss_mb"] > 0 and m["cost"]["gpus"][0]["gpu_hours"] > 0
    rec = result["recommendation"]
    assert rec["leader"] in ("full", "lora-r4") and rec["reasons"][-1].startswith(f"{rec['leader']} at 2,048 tokens here: ")
    assert all((out / f).exists() for f in ("forecast.md", "forecast.html", "forecast.png", "continue.yaml"))
    runs = runs_of(out)
    assert len(runs) == 4  # 2 learning rates x 2 methods
    chosen = {(m["label"], m["lr"]) for m in result["methods"].values()}
    for name, rec in runs.items():
        assert rec["status"] == "paused"
        lr = rec["config"]["train"]["lr"]
        label = "full" if rec["config"]["method"]["method"] == "full" else "lora-r4"
        assert rec["paused_at"]["tokens"] == (512 if (label, lr) in chosen else 128)  # the others stopped at the rung
    # the continue study resumes the chosen pilots to the budget (the others stay paused)
    continue_yaml = out / "continue.yaml"
    assert cli.main(["study", str(continue_yaml), "--out", str(tmp_path)]) == 0
    runs = runs_of(out)
    assert sorted(r["status"] for r in runs.values()) == ["done", "done", "paused", "paused"]
    done = [r for r in runs.values() if r["status"] == "done"]
    assert all(r["plan"]["total_steps"] == 16 for r in done)
    # its forecast block: the report shows each run's forecast from its pilot beside what it measured later
    fc = json.loads((out / "results.json").read_text())["forecast"]
    assert fc["fraction"] == 0.25 and {s["run"] for s in fc["summary"]} == {"full", "lora-r4-all"}
    assert all(r["tokens"] in (1024, 2048) for r in fc["rows"] if "error" in r)
    assert "Forecasts from each run's first 0.25 of its budget vs measured" in (out / "report" / "report.md").read_text()
    capsys.readouterr()
    # the same advise again trains nothing and shows what was measured beside each forecast
    assert cli.main(advise_args(code_corpus, out)) == 0
    assert "training" not in capsys.readouterr().out.replace("trained", "")
    again = json.loads((out / "forecast.json").read_text())
    for m in again["methods"].values():
        assert m["measured"]["tokens"] == [1024, 2048]
    # a backtest of the continued study: every run, every signal, scored or with its reason
    bt_out = tmp_path / "bt"
    assert cli.main(["advise", "--backtest", str(out), "--pilot-fraction", "0.25", "--out", str(bt_out)]) == 0
    bt = json.loads((bt_out / "backtest.json").read_text())["backtest"]
    assert {(s["run"], s["signal"]) for s in bt["summary"]} == {(r, s) for r in ("full", "lora-r4-all") for s in ("target_loss", "kl", "general_loss")}
    scored = [r for r in bt["rows"] if "error" in r]
    assert all(r["tokens"] > 512 for r in scored) and all(r["error"] == pytest.approx(r["forecast"] - r["measured"]) for r in scored)


def test_bad_advise_input_is_one_line(code_corpus, tmp_path, capsys):
    assert cli.main(advise_args(code_corpus, tmp_path / "a", "--methods", "full,lora-16")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'lora-16' is not a method" in err
    assert cli.main(["advise", "--out", str(tmp_path / "b")]) == 2
    assert "give --data and --budget-tokens" in capsys.readouterr().err
    assert cli.main(["advise", "--backtest", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2
    assert "results.json: no such file" in capsys.readouterr().err
