"""`learnforget advise`: pilots (pilot.py) -> forecasts per method (advice.py) -> forecast.json and the page (page.py).

    learnforget advise --model smollm2-135m --data python-code --budget-tokens 100000 \
        --methods full,lora-r1,lora-r16,lora-r256 --out runs/advise/code
    learnforget study runs/advise/code/continue.yaml --out runs/advise     # the chosen runs, to the budget
    learnforget advise ... (the same command again)                        # forecasts beside what was measured
    learnforget advise --backtest runs/studies/demo-cpu --out runs/backtest # any study: forecasts from its first 1/8
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import advice, locks
from ..config import MARGINS, AdviseConfig, RunConfig
from ..errors import UserError
from ..study import cost, gpu_plan, gpus
from . import page, pilot

SCHEMA = "learnforget.advise/1"


def main(cfg: AdviseConfig) -> int:
    root = Path(cfg.out)
    t0 = time.time()
    if cfg.backtest:
        result = backtest(Path(cfg.backtest), cfg.pilot_fraction)
    else:
        with locks.held(root, "advise folder"):
            p = pilot.run(cfg, root)
        result = from_pilots(cfg, root, p)
    result["wall_seconds"] = time.time() - t0
    root.mkdir(parents=True, exist_ok=True)
    name = "backtest.json" if cfg.backtest else "forecast.json"
    tmp = root / f".{name}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(root / name)
    html = page.write(root, result)
    _print(result)
    print(f"[advise] {root / name}; page: {html}")
    return 0


def assemble(groups: dict[str, list[dict]], base: dict, upto_of, margins: dict) -> dict:
    """Forecasts per method key (its seeds' run rows), crossovers and the recommendation."""
    forecasts, draws, memory, trainable = {}, {}, {}, {}
    for k, rows in groups.items():
        forecasts[k], draws[k] = advice.method_forecast(rows, base, upto_of(rows[0]))
        forecasts[k]["label"] = k
        forecasts[k]["trainable"] = rows[0].get("trainable_params")
        forecasts[k]["measured"] = _measured(rows[0], upto_of(rows[0]))
        memory[k], trainable[k] = rows[0].get("peak_rss_mb"), rows[0].get("trainable_params")
    sch = advice.schedule(next(iter(groups.values()))[0])
    return {"methods": forecasts, "crossovers": advice.crossovers(forecasts, draws, sch, margins["loss"]),
            "recommendation": advice.recommend(forecasts, draws, margins, trainable, {k: v for k, v in memory.items() if v})}


def _measured(row: dict, upto: float) -> dict | None:
    later = [c for c in row["checkpoints"] if c["tokens"] > upto + 1e-9]
    if not later:
        return None
    out = {"tokens": [c["tokens"] for c in later]}
    for name in advice.SIGNALS:
        out[name] = [advice.measured_value(c, name) for c in later]
    return out


def from_pilots(cfg: AdviseConfig, root: Path, p: dict) -> dict:
    study, ms = p["study"], p["milestones"]
    first = next(iter(p["runs"].values()))[0]
    base = pilot.base_row(study, root, first)
    groups = {k: [pilot.run_row(r, study.eval.general) for r in rs] for k, rs in p["runs"].items()}
    out = assemble(groups, base, lambda row: ms["pilot"], MARGINS)
    for k, entry in out["methods"].items():
        entry["lr_bracket"] = p["brackets"][k]
        entry["cost"] = _cost(cfg, groups[k][0], p["runs"][k][0].config, len(ms["checkpoints"]))
    rec = out["recommendation"]
    for k in [rec.get("method") or rec.get("leader")] if rec.get("leader") else []:
        rec["reasons"].append(_cost_line(k, out["methods"][k]["cost"], cfg.hardware, cfg.budget_tokens))
    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(), "model": cfg.model, "data": cfg.data,
            "regime": cfg.regime, "budget_tokens": cfg.budget_tokens, "pilot_tokens": ms["pilot"], "pilot_fraction": cfg.pilot_fraction,
            "hardware": cfg.hardware, "machine": f"{platform.machine()} {len(os.sched_getaffinity(0))} CPUs", **out,
            "commands": {"continue": f"learnforget study {root / 'continue.yaml'} --out {root.parent}"}}


def _cost(cfg: AdviseConfig, row: dict, rc: RunConfig, checkpoints: int) -> dict:
    """The budget's run on this machine (measured training speed; held-out scoring at a third of a training token's
    cost per token, a forward pass of the three) and on GPUs (FLOPs at the MFU of study/gpus.py)."""
    tps = row.get("tokens_per_s") or 0.0
    here = {"peak_rss_mb": row.get("peak_rss_mb"), "tokens_per_s": tps, "seconds": None}
    if tps:
        eval_tokens = checkpoints * 2 * cfg.heldout_tokens
        here["seconds"] = cfg.budget_tokens / tps + eval_tokens / (3 * tps)
    shape = cost.shape(rc.model)
    out = []
    for g in gpus.GPUS:
        t = gpu_plan.throughput(shape, rc, g)
        out.append({"gpu": g.name, "gpu_hours": cfg.budget_tokens / t / 3600 * rc.train.processes,
                    "memory_gb": gpu_plan.memory(shape, rc)["total, no checkpointing"] / gpu_plan.GB})
    return {"here": here, "gpus": out, "mfu": gpus.MFU}


def _cost_line(key: str, cost: dict, hardware: str, budget: int) -> str:
    """What the method costs at the budget where --hardware says: measured here, or GPU-hours at the stated MFU."""
    if hardware == "here":
        h = cost["here"]
        t = "unknown time" if h["seconds"] is None else f"~{h['seconds'] / 60:.0f} min"
        return f"{key} at {budget:,} tokens here: {t} at the pilot's {h['tokens_per_s']:.0f} tokens/s, peak {h['peak_rss_mb'] / 1024:.1f} GB"
    g = next(x for x in cost["gpus"] if x["gpu"].lower().startswith(hardware))
    return (f"{key} at {budget:,} tokens on one {g['gpu']}: {g['gpu_hours']:.3g} GPU-hours at {100 * cost['mfu']:.0f}% MFU, "
            f"{g['memory_gb']:.1f} GB")


def backtest(study_dir: Path, fraction: float) -> dict:
    """Each run of a study fitted on its first `fraction` of tokens, scored against its later checkpoints."""
    path = study_dir / "results.json"
    if not path.exists():
        raise UserError(f"{path}: no such file (run the study first: its results.json is what a backtest reads)")
    res = json.loads(path.read_text())
    cfg = res["study"]["config"]
    groups: dict[str, list[dict]] = {}
    for r in res["runs"]:
        r = {**r, "schedule": r.get("schedule") or _schedule(cfg, r)}
        groups.setdefault(f"{r['label']} lr{r['lr']:g}", []).append(r)
    exp = {e["name"]: e for e in cfg["experiments"]}
    first = res["runs"][0]
    e = exp[first["experiment"]]
    base = {"target": res["base"]["heldout"][f"{e['regime']}-{e['domain']}"], "general": res["base"]["heldout"].get("general")}
    if base["general"] is None:
        raise UserError(f"{path}: the study scored no general text (eval.general), which the forgetting forecasts need")

    def upto(row):
        return advice.pilot_tokens(advice.schedule(row), fraction)

    out = assemble(groups, base, upto, res.get("margins", MARGINS))
    rows = advice.backtest([r for rs in groups.values() for r in rs], base, fraction)
    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(), "model": res["study"]["model"],
            "data": e["data"], "regime": e["regime"], "budget_tokens": first["schedule"]["budget_tokens"] if "schedule" in first else e["tokens"],
            "pilot_tokens": upto(next(iter(groups.values()))[0]), "pilot_fraction": fraction, "hardware": "here",
            "machine": res["study"].get("hardware", ""), "study": str(study_dir), **out,
            "backtest": {"fraction": fraction, "rows": rows, "summary": advice.backtest_summary(rows)}, "commands": {}}


def _schedule(cfg: dict, run: dict) -> dict:
    """An older results.json's run schedule, from the study config (train defaults; the experiment's budget)."""
    e = next(x for x in cfg["experiments"] if x["name"] == run["experiment"])
    if e.get("tokens") is None:
        raise UserError(f"experiment {e['name']}: an epoch budget; a backtest needs a token budget")
    t = cfg.get("train", {})
    seq = cfg["seq_len"]
    step = max(1, int(t.get("batch_tokens", 4096)) // seq) * seq
    return {"budget_tokens": e["tokens"], "step_tokens": step, "warmup": float(t.get("warmup", 0.1))}


def _print(result: dict) -> None:
    print(f"\n[advise] {result['model']} on {result['data']}, budget {result['budget_tokens']:,} tokens, "
          f"fitted on the first {result['pilot_tokens']:,}:")
    for k, m in result["methods"].items():
        f = m["forecast"]
        cells = [f"{n} {v['mid']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}]" if "mid" in v else f"{n}: {v['reason']}" for n, v in f.items()]
        print(f"  {k} (lr {m['lr']:g}): " + "; ".join(cells))
    rec = result["recommendation"]
    print("  " + rec["text"])
    for line in rec["reasons"]:
        print("    - " + line)
    for s in (result.get("backtest") or {}).get("summary", []):
        if "mae" in s:
            print(f"  backtest {s['run']} lr {s['lr']:g} {s['signal']}: MAE {s['mae']:.4f}, coverage {s['coverage']:.0%} "
                  f"over {s['checkpoints']} checkpoints")
