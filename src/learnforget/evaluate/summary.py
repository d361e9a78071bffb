"""One task's result dict: lm-eval metric keys, the primary metric, its verdict against chance."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from .scoring import mean_stderr

Z = 1.96


def verdict(value: float, stderr: float | None, chance: float | None) -> str:
    if chance is None or stderr is None:
        return "n/a"
    if value - Z * stderr > chance:
        return "above chance"
    if value + Z * stderr < chance:
        return "below chance"
    return "at chance"


def summary(name: str, per_item: dict[str, list[float]], primary: str, chance: float | None, ids: list[str],
            samples: list[dict], source: str, seconds: float, filter_name: str = "none") -> dict:
    """lm-eval keys ("acc,none", "acc_stderr,none"), the primary metric and its verdict, and the smallest
    difference between two evaluations of this size that the item count can detect (1.96·√2·SE)."""
    out: dict = {"alias": name, "source": source, "n": len(ids), "chance": chance}
    for metric, values in per_item.items():
        m, f = (metric.split(",") + [filter_name])[:2]
        out[f"{m},{f}"] = sum(values) / len(values)
        out[f"{m}_stderr,{f}"] = mean_stderr(values)
    out["primary_key"] = primary if "," in primary else f"{primary},{filter_name}"
    se = mean_stderr(per_item[primary])
    out.update({
        "metric": primary, "value": sum(per_item[primary]) / len(ids), "stderr": se,
        "verdict": verdict(sum(per_item[primary]) / len(ids), se, chance),
        "detectable_diff": None if se is None else Z * math.sqrt(2) * se,
        "items": per_item[primary], "ids": ids, "samples": samples,
        "seconds": round(seconds, 2), "items_per_s": round(len(ids) / seconds, 3) if seconds > 0 else None,
    })
    return out


def bar(name: str, n: int, show: bool):
    return tqdm(total=n, desc=name, unit="item", disable=not show, leave=False)
