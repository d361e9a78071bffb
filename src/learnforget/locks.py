"""One process at a time per folder: an exclusive flock on `<folder>/.lock`.

The lock is the operating system's (fcntl.flock on an open file): it is released when the holder closes
the file, exits or dies (kill -9 included), so a crashed run never leaves a stale lock to clear by hand.
A process that finds the folder locked says so, with the holder's pid, and waits; it then re-reads the
folder, usually to find the work done. Locks are taken by train.run (per run folder: CLI runs, a study's
runs, Ray workers) and by the study (per study folder: its shared files, results.json, the report).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking (one process per folder is then the user's to ensure)
    fcntl = None

NAME = ".lock"


class Lock:
    """An exclusive lock on one folder, held until release() or the end of the process."""

    def __init__(self, folder: str | Path, what: str):
        self.path = Path(folder) / NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        if fcntl is None:
            return
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[learnforget] {what} {folder} is in use by another process ({holder(self.path)}): "
                  f"waiting for it to finish", flush=True)
            fcntl.flock(self.file, fcntl.LOCK_EX)
            print(f"[learnforget] {what} {folder}: the other process is done; going on", flush=True)
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()  # closing drops the flock


def holder(path: Path) -> str:
    """Who holds a lock, as its file says (the holder writes its pid once it has the lock)."""
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


@contextmanager
def held(folder: str | Path, what: str):
    lock = Lock(folder, what)
    try:
        yield lock
    finally:
        lock.release()
