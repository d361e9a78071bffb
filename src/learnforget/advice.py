"""From runs' first checkpoints to advice: per method, forecasts at the budget (held-out target loss, KL drift and
general-text loss, 90% intervals), crossover budgets, a recommendation with its reasons, and backtests that
score forecasts against the same runs' later checkpoints.

A run here is a dict in results.json's shape (study.gather.run_row): "label", "lr", "seed", "schedule"
({budget_tokens, step_tokens, warmup}) and "checkpoints", each {"tokens", "heldout": {"target", "general"}},
a held-out entry holding per-document "units" ("loss", "tokens", "kl"). `base` holds the base model's
"target" and "general" entries on the same documents.
"""

from __future__ import annotations

import math

import numpy as np

from . import forecast as fc
from .config import MARGINS

SIGNALS = {  # forecast name: (held-out set, unit field, sign: +1 change from base, -1 gain over base)
    "target_loss": ("target", "loss", -1.0),
    "kl": ("general", "kl", 1.0),
    "general_loss": ("general", "loss", 1.0),
}
HORIZON = 10.0  # crossovers are searched up to this many times the budget


def schedule(run: dict) -> fc.Schedule:
    s = run["schedule"]
    return fc.Schedule(int(s["budget_tokens"]), int(s["step_tokens"]), float(s["warmup"]))


def pilot_tokens(sch: fc.Schedule, fraction: float) -> int:
    """The first `fraction` of a run's budget in whole steps (at least 4): what a pilot trains, what a backtest fits on."""
    return max(4, math.ceil(fraction * sch.budget_tokens / sch.step_tokens - 1e-9)) * sch.step_tokens


def _signal(runs: list[dict], base: dict, name: str, upto: float) -> tuple[np.ndarray, fc.Signal]:
    """Checkpoint tokens (0 = the base first) and one signal over `runs` (seeds of one method) up to `upto` tokens."""
    set_, field, sign = SIGNALS[name]
    cks = [c for c in runs[0]["checkpoints"] if c["tokens"] <= upto + 1e-9]
    tokens = np.array([0.0] + [c["tokens"] for c in cks])
    b = base[set_]["units"]
    base_sums = np.zeros(len(b["tokens"])) if field == "kl" else np.asarray(b[field], float)
    scores = []
    for r in runs:
        by_tokens = {c["tokens"]: c for c in r["checkpoints"]}
        scores.append([base_sums] + [np.asarray(by_tokens[c["tokens"]]["heldout"][set_]["units"][field], float) for c in cks])
    counts = np.asarray(b["tokens"], float)
    return tokens, fc.Signal(f"{set_}:{field}", np.asarray(scores), counts, base_sums, sign)


def base_value(base: dict, name: str) -> float:
    set_, field, _ = SIGNALS[name]
    return 0.0 if field == "kl" else float(base[set_]["loss"])


def method_forecast(runs: list[dict], base: dict, upto: float, grid_points: int = 48) -> tuple[dict, dict]:
    """One method (its seeds' runs) fitted on checkpoints up to `upto` tokens: (JSON entry, replicate draws at the
    budget per signal, for paired comparisons between methods)."""
    sch = schedule(runs[0])
    budget = sch.total_steps * sch.step_tokens  # the budget's last step (a budget that is not whole steps ends past it)
    grid = np.unique(np.concatenate([np.geomspace(sch.step_tokens, budget, grid_points), [upto, budget]]))
    out = {"label": runs[0]["label"], "lr": runs[0]["lr"], "seeds": [r["seed"] for r in runs], "fitted_on_tokens": upto,
           "budget_tokens": budget, "points": {}, "forecast": {}, "curve": {"tokens": grid.tolist()}, "fit": {}}
    draws: dict = {}
    gain = None
    for name in SIGNALS:  # the target loss first: the forgetting signals link to its gain beyond the pilot
        tokens, sig = _signal(runs, base, name, upto)
        pts = fc.Query.along(sch, tokens)
        b0 = base_value(base, name)
        to_value = (lambda g, b0=b0: b0 - g) if sig.sign < 0 else (lambda d, b0=b0: b0 + d)  # noqa: E731 - change back to a value
        out["points"][name] = {"tokens": tokens.tolist(), "value": [float(v) for v in to_value(sig.values())]}
        f = fc.fit_clocks(pts, sig, need_positive=name == "target_loss")
        if not f.ok:
            out["forecast"][name] = {"reason": f.reason}
            continue
        out["fit"][name] = {"clocks": [{"clock": x.clock, "c": x.c, "exponent": x.b, "scale": x.s_ref, "residual_sd": x.residual_sd}
                                       for x in (f.fits if isinstance(f, fc.Mixture) else [f])]}
        if name == "target_loss":
            gain = f
        elif gain is not None:
            f = fc.Linked.of(f, gain, fc.Query.along(sch, [tokens[-1]]))
            out["fit"][name]["beyond_pilot"] = f"linked to the target-loss gain, exponent {fc.LINK[0]:g}-{fc.LINK[1]:g}"
        end, along = fc.Query.along(sch, [budget]), fc.Query.along(sch, grid)
        at = f.predict_boot(end)[:, 0]
        if name == "kl":  # KL is never negative; a replicate's power law extrapolated below 0 means ~0
            at = np.maximum(at, 0.0)
        lo, hi = fc.band(to_value(at))
        mid = float(to_value(f.predict(end)[0]))
        out["forecast"][name] = {"mid": mid, "lo": float(min(lo, hi)), "hi": float(max(lo, hi))}
        clo, chi = fc.band(to_value(f.predict_boot(along)))
        out["curve"][name] = {"mid": to_value(f.predict(along)).tolist(), "lo": np.minimum(clo, chi).tolist(),
                              "hi": np.maximum(clo, chi).tolist()}
        draws[name] = to_value(at)
        draws[name + ":fit"] = (f, to_value)
    return out, draws


def crossovers(forecasts: dict[str, dict], draws: dict[str, dict], sch: fc.Schedule, margin: float) -> list[dict]:
    """Budgets (same batch and warm-up) where full fine-tuning's forecast target loss overtakes each LoRA's, and
    where a lower rank falls `margin` behind the highest: medians over the replicates that cross, and how many do."""
    budgets = np.geomspace(sch.step_tokens * 4, sch.budget_tokens * HORIZON, 120)
    ends = fc.Query(budgets, sch.end_area(budgets))  # at the end of a run of each budget
    curves = {k: d["target_loss:fit"][1](d["target_loss:fit"][0].predict_boot(ends)) for k, d in draws.items() if "target_loss:fit" in d}
    out = []

    def add(kind: str, a: str, b: str, diff: np.ndarray) -> None:
        at = [fc.crossing(budgets, row) for row in diff]
        hits = [x for x in at if x is not None]
        out.append({"kind": kind, "a": a, "b": b, "share": len(hits) / max(len(at), 1),
                    "from_start": float(np.mean(diff[:, 0] > 0)),  # already past it at the smallest budget searched
                    "start_tokens": float(budgets[0]),
                    "tokens": float(np.median(hits)) if hits else None,
                    "lo": float(np.quantile(hits, 0.05)) if hits else None, "hi": float(np.quantile(hits, 0.95)) if hits else None})

    full = [k for k in curves if forecasts[k]["label"].startswith("full")]
    lora = sorted((k for k in curves if forecasts[k]["label"].startswith("lora")), key=lambda k: _rank(forecasts[k]["label"]))
    for f in full:
        for lo_ in lora:
            add("full overtakes", f, lo_, curves[lo_] - curves[f])  # > 0: full's loss is lower
    if len(lora) > 1:
        top = lora[-1]
        for low in lora[:-1]:
            add("capacity", low, top, curves[low] - curves[top] - margin)
    return out


def _rank(label: str) -> int:
    try:
        return int(label.split("-r", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return 0


def recommend(forecasts: dict[str, dict], draws: dict[str, dict], margins: dict | None = None,
              trainable: dict[str, int] | None = None, memory_mb: dict[str, float] | None = None) -> dict:
    """The method to use at the budget, and why, from paired replicate differences of the forecasts:
    the lowest forecast target loss; among the methods whose difference from it lies inside +-margin, the one with
    least KL drift (if that is decided), else the one with fewest trainable parameters. Undecided is said plainly."""
    m = {**MARGINS, **(margins or {})}
    ok = [k for k in forecasts if "mid" in forecasts[k]["forecast"].get("target_loss", {})]
    skipped = {k: forecasts[k]["forecast"]["target_loss"].get("reason", "") for k in forecasts if k not in ok}
    if not ok:
        return {"decided": False, "method": None, "text": "No method can be forecast: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                "reasons": [], "skipped": skipped}
    best = min(ok, key=lambda k: forecasts[k]["forecast"]["target_loss"]["mid"])
    rows, tied = [], [best]
    for k in ok:
        if k == best:
            continue
        d = draws[k]["target_loss"] - draws[best]["target_loss"]
        lo, hi = fc.band(d)
        est = forecasts[k]["forecast"]["target_loss"]["mid"] - forecasts[best]["forecast"]["target_loss"]["mid"]
        verdict = "equivalent" if -m["loss"] < lo and hi < m["loss"] else "worse" if lo > 0 else "undecided"
        rows.append({"method": k, "vs": best, "loss_diff": est, "lo": float(lo), "hi": float(hi), "verdict": verdict})
        if verdict == "equivalent":
            tied.append(k)
    undecided = [r["method"] for r in rows if r["verdict"] == "undecided"]
    choice, reasons = best, [f"{best}: lowest forecast held-out target loss at {forecasts[best]['budget_tokens']:,} tokens "
                             f"({_iv(forecasts[best]['forecast']['target_loss'])})"]
    if len(tied) > 1:
        choice, why = _least_forgetting(tied, forecasts, draws, m["kl"], trainable or {})
        reasons.append(why)
    for r in rows:
        reasons.append(f"{r['method']} vs {r['vs']}: target loss {r['loss_diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] nats/token, {r['verdict']}")
    if memory_mb and choice in memory_mb and best in memory_mb and choice != best:
        reasons.append(f"{choice} used {memory_mb[choice]:,.0f} MB in its pilot, {best} {memory_mb[best]:,.0f} MB")
    decided = not undecided
    text = (f"Use {choice}." if decided else
            f"The pilot is too short to decide between {', '.join([choice] + undecided)}: their forecasts at the budget differ "
            f"by less than their 90% intervals can tell and more than the {m['loss']:g}-nat margin; a longer pilot "
            f"(--pilot-fraction) or a second seed would narrow them.")
    return {"decided": decided, "method": choice if decided else None, "leader": best, "text": text, "reasons": reasons,
            "comparisons": rows, "skipped": skipped}


def _least_forgetting(tied: list[str], forecasts: dict, draws: dict, kl_margin: float, trainable: dict) -> tuple[str, str]:
    with_kl = [k for k in tied if "kl" in draws[k]]
    if with_kl:
        least = min(with_kl, key=lambda k: forecasts[k]["forecast"]["kl"]["mid"])
        others = [k for k in with_kl if k != least]
        if others and all(fc.band(draws[o]["kl"] - draws[least]["kl"])[0] > 0 for o in others):
            kl = forecasts[least]["forecast"]["kl"]
            return least, (f"{least}: within the loss margin of the best and the least forecast KL drift ({_iv(kl)}), "
                           f"decided against {', '.join(others)}")
    small = min(tied, key=lambda k: trainable.get(k, 0) or float("inf"))
    return small, f"{small}: within the loss margin of the best, with the fewest trainable parameters (KL drift not decided)"


def _iv(f: dict) -> str:
    return f"{f['mid']:.4f}, 90% interval [{f['lo']:.4f}, {f['hi']:.4f}]"


def backtest(runs: list[dict], base: dict, fraction: float) -> list[dict]:
    """Each run fitted on its checkpoints up to `fraction` of its budget, scored at every later checkpoint: the
    forecast, the measured value, the error and whether the 90% interval held it."""
    rows = []
    for r in runs:
        sch = schedule(r)
        upto = pilot_tokens(sch, fraction)
        entry, draws = method_forecast([r], base, upto)
        for name in SIGNALS:
            if name + ":fit" not in draws:
                rows.append({"run": r["label"], "lr": r["lr"], "seed": r["seed"], "signal": name,
                             "reason": entry["forecast"][name].get("reason", "")})
                continue
            f, to_value = draws[name + ":fit"]
            for c in r["checkpoints"]:
                if c["tokens"] <= upto + 1e-9:
                    continue
                measured = measured_value(c, name)
                if measured is None:
                    continue
                q = fc.Query.along(sch, [c["tokens"]])
                lo, hi = fc.band(to_value(f.predict_boot(q)[:, 0]))
                mid = float(to_value(f.predict(q))[0])
                lo, hi = float(min(lo, hi)), float(max(lo, hi))
                rows.append({"run": r["label"], "lr": r["lr"], "seed": r["seed"], "signal": name, "tokens": c["tokens"],
                             "horizon": c["tokens"] / upto, "forecast": mid, "lo": lo, "hi": hi, "measured": measured,
                             "error": mid - measured, "covered": lo <= measured <= hi})
    return rows


def measured_value(ck: dict, name: str) -> float | None:
    """A checkpoint's measured value of a signal (None if its set was not scored)."""
    set_, field, _ = SIGNALS[name]
    h = ck["heldout"].get(set_)
    if not h:
        return None
    return float(h.get("kl")) if field == "kl" else float(h["loss"])


def backtest_summary(rows: list[dict]) -> list[dict]:
    """Per run and signal: mean absolute error and interval coverage over its later checkpoints, and at the last."""
    out = []
    keys = sorted({(r["run"], r["lr"], r["seed"], r["signal"]) for r in rows}, key=str)
    for run, lr, seed, sig in keys:
        rs = [r for r in rows if (r["run"], r["lr"], r["seed"], r["signal"]) == (run, lr, seed, sig)]
        scored = [r for r in rs if "error" in r]
        if not scored:
            out.append({"run": run, "lr": lr, "seed": seed, "signal": sig, "reason": rs[0].get("reason", "")})
            continue
        last = max(scored, key=lambda r: r["tokens"])
        out.append({"run": run, "lr": lr, "seed": seed, "signal": sig, "checkpoints": len(scored),
                    "mae": float(np.mean([abs(r["error"]) for r in scored])), "coverage": float(np.mean([r["covered"] for r in scored])),
                    "last_tokens": last["tokens"], "last_error": last["error"], "last_covered": last["covered"]})
    return out
