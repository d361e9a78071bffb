"""Does a study's answer replicate? Compares the findings of two runs of one study with other seeds, row by row.

    .venv/bin/learnforget study configs/demo-cpu.yaml                                   # -> runs/studies/demo-cpu
    .venv/bin/learnforget study configs/demo-cpu.yaml --out runs/replica --set seeds=[6,7,8,9,10] --set search.seed=11
    .venv/bin/python benchmarks/replication.py runs/studies/demo-cpu runs/replica/demo-cpu

Rows are matched by (claim, experiment, signal, methods without their learning rates: the two searches may choose
different rates). Prints both findings tables' primary rows, then per family: rows decided in each, decided the
same way in both, and decided in opposite directions (reproduced in one, not reproduced in the other), and each
run's stability line. Exit status 1 if any row is decided in opposite directions.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DECIDED = ("reproduced", "not reproduced", "equivalent")


def rows(study: Path) -> tuple[dict, str]:
    s = json.loads((study / "report" / "summary.json").read_text())
    out = {}
    for f in s["findings"]:
        key = (f["claim"], f["group"], f["signal"], re.sub(r" \(lr [^)]*\)", "", f["comparison"]))
        out[key] = f
    return out, s.get("stability", "")


def _ci(f: dict) -> str:
    if f["estimate"] is None:
        return "–"
    lo, hi = f["ci"] or (None, None)
    return f"{f['estimate']:+.4f} [{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else f"{f['estimate']:+.4f}"


def main(a: str, b: str) -> int:
    (ra, sa), (rb, sb) = rows(Path(a)), rows(Path(b))
    keys = [k for k in ra if k in rb]
    print(f"| claim | signal | comparison | {Path(a).name}: verdict | estimate [95% CI] | stable | {Path(b).name}: verdict | "
          f"estimate [95% CI] | stable |\n|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        x, y = ra[k], rb[k]
        if x["family"] == "primary":
            print(f"| ({k[0]}) | {k[2]} | {k[3]} | {x['verdict']} | {_ci(x)} | {x['stable']} | {y['verdict']} | {_ci(y)} | {y['stable']} |")
    opposite = 0
    for fam in ("primary", "exploratory"):
        ks = [k for k in keys if ra[k]["family"] == fam]
        da = [k for k in ks if ra[k]["verdict"] in DECIDED]
        db = [k for k in ks if rb[k]["verdict"] in DECIDED]
        same = [k for k in da if rb[k]["verdict"] == ra[k]["verdict"]]
        opp = [k for k in da if {ra[k]["verdict"], rb[k]["verdict"]} == {"reproduced", "not reproduced"}]
        opposite += len(opp)
        print(f"\n{fam}: {len(ks)} rows; decided {len(da)} ({len(da) / max(len(ks), 1):.0%}) and {len(db)} "
              f"({len(db) / max(len(ks), 1):.0%}); the same verdict in both: {len(same)}; opposite directions: {len(opp)}"
              + "".join(f"\n  opposite: ({k[0]}) {k[2]} {k[3]}" for k in opp))
    print(f"\n{Path(a).name}: {sa}\n{Path(b).name}: {sb}")
    return 1 if opposite else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
