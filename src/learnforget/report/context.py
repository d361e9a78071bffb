"""What every part of the report reads: the tasks and what they can carry, the series and the best
learning rate (recorded by the study, not recomputed here), each point's signals with intervals."""

from __future__ import annotations

from dataclasses import dataclass

from .. import stats
from ..config import MARGINS  # the defaults when results.json declares none
from .schema import HIGHER_BETTER, MARGIN_OF, Point, Series, base_point, series
from ..stats import Signal


@dataclass
class TaskInfo:
    task: str
    metric: str
    role: str  # learning | forgetting
    n: int
    value: float
    lo: float
    hi: float
    chance: float | None
    status: str  # above | at chance | below
    mdd: float  # smallest accuracy difference the item count can detect (80% power)

    @property
    def verdict(self) -> str:
        if self.role == "learning":
            return "learning task"
        return "carries a verdict" if self.status == "above" else "cannot carry a verdict"


@dataclass
class Analysis:
    res: dict
    tasks: dict[str, TaskInfo]
    learning: dict[str, str]  # domain -> learning task name
    paper: list[str]  # the paper's forgetting tasks that were scored
    above: list[str]  # forgetting tasks whose base score is clear of chance: the "signal" score
    series: list[Series]
    best: list[Series]
    groups: list[str]
    base: dict[str, Point]  # per group
    learn: dict[str, str]  # per group: "metric" if a learning task was scored, else "target"
    margins: dict[str, float]

    def task_names(self, sig: str, domain: str) -> list[str]:
        if sig == "metric":
            t = self.learning.get(domain)
            return [t] if t in self.tasks else []
        return {"signal": self.above, "paper": self.paper}.get(sig, [])

    def signal(self, p: Point, sig: str, domain: str) -> Signal | None:
        """The units behind one signal at one point, or None if it was not measured there (a score is
        never averaged over fewer tasks than its definition)."""
        if sig in ("metric", "signal", "paper"):
            names = self.task_names(sig, domain)
            return {t: p.tasks[t] for t in names} if names and all(t in p.tasks for t in names) else None
        u = p.heldout.get(sig)
        return {u.key: u} if u is not None else None

    def value(self, p: Point, sig: str, domain: str) -> tuple[float, float, float] | None:
        """(value, lo, hi) of a signal at a point, with its 95% bootstrap interval."""
        s = self.signal(p, sig, domain)
        if s is None:
            return None
        return (stats.value(s), *stats.interval(stats.boot(s)))

    def margin(self, sig: str) -> float:
        return self.margins[MARGIN_OF[sig]]

    def of_family(self, group: str, family: str) -> list[Series]:
        return [s for s in self.best if s.group == group and s.family == family]


def _tasks(res: dict, learning: dict[str, str]) -> dict[str, TaskInfo]:
    out = {}
    for t, tr in res["base"]["tasks"].items():
        v, lo, hi = stats.mean_ci(tr["items"], t)
        out[t] = TaskInfo(t, tr["metric"], "learning" if t in learning.values() else "forgetting", tr["n"], v, lo, hi,
                          tr["chance"], stats.above_chance(lo, hi, tr["chance"]), stats.min_detectable(v, tr["n"]))
    return out


def analyse(res: dict) -> Analysis:
    """The typed view of a validated results dict."""
    learning = dict(res["tasks"]["learning"])
    tasks = _tasks(res, learning)
    every = series(res)
    # The sweeps (lr grids: the search seed's runs, or every run without a search) are `series`; the verdict runs (each
    # method at its chosen lr, every seed) are `best`, and stand in `series` for a label that was not searched.
    swept = {(s.group, s.label) for s in every if s.role == "search"}
    ss = [s for s in every if s.role != "verdict" or (s.group, s.label) not in swept]
    groups = sorted({s.group for s in every})
    A = Analysis(res, tasks, learning, [t for t in res["tasks"]["paper"] if t in tasks],
                 [t for t, i in tasks.items() if i.role == "forgetting" and i.status == "above"], ss, [s for s in every if s.best],
                 groups, {g: base_point(res, g) for g in groups}, {}, {**MARGINS, **res.get("margins", {})})
    A.learn = {g: "metric" if any(A.signal(p, "metric", s.domain) for s in A.best if s.group == g for p in s.points) else "target"
               for g in groups}
    return A


def better(sig: str) -> bool:
    return HIGHER_BETTER[sig]
