"""Run the learnforget CLI and SIGKILL it at the N-th file commit (os.replace, which Path.replace calls).

Every file learnforget writes whole (checkpoints, manifests, run.json, the cache, results.json) is made
under a temporary name and committed by a rename, so those renames are the points where a crash can
leave a different state. `KILL_AT=N KILL_WHEN=before|after KILL_UNDER=<out> python tests/killpoint.py study ...` dies just
before or just after the N-th rename: a kill on an observed event, not a timer, so it cannot race.
"""

import os
import signal
import sys
from pathlib import Path

from learnforget import cli

_rename = os.replace
_at, _when, _seen = int(os.environ["KILL_AT"]), os.environ.get("KILL_WHEN", "before"), [0]
_under = Path(os.environ["KILL_UNDER"]).resolve()  # only renames into this folder count


def _replace(src, dst, **kw):
    if not Path(dst).resolve().is_relative_to(_under):
        return _rename(src, dst, **kw)
    _seen[0] += 1
    if _seen[0] == _at and _when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    _rename(src, dst, **kw)
    if _seen[0] == _at and _when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = _replace
sys.exit(cli.main(sys.argv[1:]))
