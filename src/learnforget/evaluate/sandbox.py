"""Run one untrusted Python program per call, in its own throwaway processes.

Used to score model-written code (HumanEval). The threat model is *accidental* harm from
generated code: loops that never end, runaway memory, fork bombs, stray file writes or
deletes, network calls, ``sys.exit``, killing the parent. It is not a security boundary
against a determined attacker.

How a program runs::

    evaluator --Popen--> launcher L (own session and process group; does the setup as root)
      L: new net, ipc, mount namespaces; a small tmpfs on the work dir; every other mount
         read-only; new pid namespace
      L --fork--> C (pid 1 of the new pid namespace; only waits and reports)
        C --fork--> P: rlimits; drop to a fresh unprivileged uid; no_new_privs;
                       exec ``python -I -B program.py``

What is protected, where the kernel allows it (``ExecResult.isolation`` and
``isolation_report()`` name what was active; on this project's machines, which run as root,
all of it is):

- Time: a wall-clock deadline SIGKILLs the process group; RLIMIT_CPU backs it up.
- Memory: RLIMIT_AS (``memory_mb``) per process; RLIMIT_FSIZE per file; the work dir is a
  tmpfs of ``_TMPFS_MB`` so writing many files cannot fill the disk.
- Processes: as root, RLIMIT_NPROC is not enforced, so the program runs as a fresh uid that no
  account owns; RLIMIT_NPROC (``max_procs``, threads included) then counts only this sandbox.
  When the program ends (or is killed) the pid namespace ends, and the kernel kills every
  process it started, including ones that called ``setsid``.
- Files: the whole file system is read-only to the program except its tmpfs work dir, which
  vanishes with the namespace; the program has no capabilities, so it cannot remount. The host
  work dir (``tempfile.mkdtemp``) is removed afterwards, whatever the program chmod-ed.
- Network: a new network namespace with no interface up, not even loopback.
- Signals: the program's parent is C (or L), never the evaluator, and the evaluator is in
  another session. As a fresh uid the program may signal only its own processes, and in the
  pid namespace it cannot name any other process anyway.
- Output: stdout and stderr are read as they come; only the last ``max_output`` bytes of each
  are kept, and a program printing more than ``_OUTPUT_KILL_FACTOR * max_output`` is killed.
- Early exit: ``run_program(..., expect=token)`` counts a run as passed only if it exits 0
  *and* printed ``token``. Callers print a random token after the tests, so ``sys.exit(0)`` or
  ``os._exit(0)`` before the tests does not pass.

What is NOT protected:

- A deliberately adversarial program: it can read its own source (and so the expect token),
  make ``assert`` pass with objects whose ``__eq__`` always returns True, and read every
  world-readable file on the machine (read-only, not hidden; only the parts of /root that
  the interpreter does not need are hidden).
- CPU contention: up to ``max_procs`` processes may spin until the deadline. The memory bound
  is per process: the worst case is ``max_procs * memory_mb`` per sandbox.
- Kernel bugs and side channels.
- Weaker machines. Without root, L first enters a user namespace (uid mapped to itself) to get
  the other namespaces; then the program runs as our own uid, its parent is C, and a SIGKILL
  to C is ignored (C is the namespace's init), so a program that tries to kill its parent and
  then passes its tests passes. Where ``unshare`` or ``mount`` are refused, the matching
  protection is silently absent: without the mount namespace the program can write where its
  uid may (with a fresh uid: world-writable directories such as /tmp); without a pid namespace
  a process that called ``setsid`` survives a timeout (after a normal end it is killed by uid).

The launcher is the script ``sandbox_launcher.py`` next to this file.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

STATUSES = ("passed", "failed", "timeout", "killed", "error")

_OUTPUT_KILL_FACTOR = 8  # kill a program that prints this many times max_output
_TMPFS_MB = 64  # size of the program's writable work dir
_FSIZE_MB = 16  # largest single file the program may write
_NOFILE = 256
_UID_RANGE = (1_000_000, 1_000_000_000)  # fresh uids; no account owns them
_PROGRAM = "program.py"
_DRAIN_SECONDS = 2.0  # once over, how long to wait for the program's processes to exit


@dataclass
class ExecResult:
    passed: bool  # exit code 0, not killed, and the expected token printed (if one was given)
    status: str  # one of STATUSES
    returncode: int | None  # the program's exit code; -N if killed by signal N; None if unknown
    stdout: str  # last max_output bytes
    stderr: str
    seconds: float
    reason: str = ""  # short human-readable cause of a non-pass
    isolation: tuple[str, ...] = field(default_factory=tuple)  # protections that were active

    @property
    def net_isolated(self) -> bool:
        return "net" in self.isolation


# --------------------------------------------------------------------------- evaluator side


def run_program(
    source: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_output: int = 64_000,
    max_procs: int = 8,
    expect: str | None = None,
) -> ExecResult:
    """Run `source` as a Python program in a fresh sandbox and report how it ended."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="lf-sandbox-")
    proc = None
    try:
        with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as f:
            f.write(source)
        uid = _fresh_uid() if os.geteuid() == 0 else None
        if uid is not None:  # only matters when no tmpfs can be mounted over it
            os.chown(workdir, uid, uid)
        status_r, status_w = os.pipe()
        config = {
            "workdir": workdir,
            "program": _PROGRAM,
            "uid": uid,
            "exe": sys.executable,
            "exe_paths": _interpreter_paths(),
            "env": _minimal_env(workdir),
            "cpu": math.ceil(timeout) + 1,
            "memory": memory_mb * 2**20,
            "procs": max_procs,
            "fsize_mb": _FSIZE_MB,
            "tmpfs_mb": _TMPFS_MB,
            "nofile": _NOFILE,
            "status_fd": status_w,
        }
        try:
            proc = subprocess.Popen(
                _launcher_command(config),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,  # own process group: one killpg ends everything
                cwd=workdir,
                env=_minimal_env(workdir),
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        out, err, status_text, ending = _collect(proc, status_r, start + timeout, max_output)
        proc.wait()
        return _result(out, err, status_text, ending, proc.returncode, expect, time.monotonic() - start)
    except OSError as e:  # could not even start: a harness problem, not the program's
        return ExecResult(False, "error", None, "", str(e), time.monotonic() - start, reason="sandbox error")
    finally:
        if proc is not None and proc.poll() is None:  # only while its pid cannot be reused
            _kill_group(proc.pid)
            proc.wait()
        _remove_tree(workdir)


def run_many(
    sources: list[str],
    *,
    workers: int = 2,
    expects: list[str | None] | None = None,
    **limits,
) -> list[ExecResult]:
    """run_program over `sources` with `workers` sandboxes at a time; results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    expects = expects if expects is not None else [None] * len(sources)
    if len(expects) != len(sources):
        raise ValueError("expects must be as long as sources")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run_program, s, expect=e, **limits) for s, e in zip(sources, expects)]
        return [f.result() for f in futures]


@functools.cache
def isolation_report() -> tuple[str, ...]:
    """Which protections are active on this machine (runs one trivial program, once).

    Names: "net", "ipc", "mount", "pid" (new namespaces), "readonly_fs" (all but the work dir
    read-only), "uid" (runs as a fresh unprivileged uid), "user" (a user namespace, when not root).
    """
    return run_program("pass\n", timeout=10.0).isolation


_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")


def _launcher_command(config: dict) -> list[str]:
    # The config travels as a Python literal (str, int, None, list, dict): no json import
    # needed in the launcher. -S: it needs no site-packages, and skipping site is faster.
    return [sys.executable, "-I", "-S", "-B", _LAUNCHER, repr(config)]


def _minimal_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


def _fresh_uid() -> int:
    # A uid no account owns: RLIMIT_NPROC then counts only this sandbox's processes, and the
    # program can signal nothing but itself.
    return _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])


def _interpreter_paths() -> list[str]:
    """Directories the sandboxed interpreter must be able to reach."""
    paths = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    # A directory inside another one on the list comes along with it.
    return sorted(p for p in paths if not any(p.startswith(q + os.sep) for q in paths))


class _Tail:
    """Keeps only the last `cap` bytes written to it, and counts all of them."""

    def __init__(self, cap: int) -> None:
        self.cap, self.total, self.buf = cap, 0, bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data[-self.cap :]
        if len(self.buf) > self.cap:
            del self.buf[: len(self.buf) - self.cap]

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


def _collect(proc: subprocess.Popen, status_fd: int, deadline: float, max_output: int):
    """Read stdout, stderr and the status pipe until the program is over.

    Over means: the launcher finished (status pipe closed), the deadline passed, or the output
    grew too large. Then the process group is killed and the pipes are drained until they
    close, which is when every process of the program has exited (or _DRAIN_SECONDS passed).
    """
    out, err, status = _Tail(max_output), _Tail(max_output), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    sel.register(status_fd, selectors.EVENT_READ, status)
    ending, drain_until = "", None

    def stop(why: str) -> None:
        nonlocal ending, drain_until
        if drain_until is None:
            ending = why
            _kill_group(proc.pid)
            drain_until = time.monotonic() + _DRAIN_SECONDS

    try:
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None and now >= deadline:
                stop("timeout")
            if drain_until is not None and now >= drain_until:
                break  # something still holds the pipes open; stop waiting for it
            limit = drain_until if drain_until is not None else deadline
            for key, _ in sel.select(timeout=max(0.0, limit - now)):
                fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    if fd == status_fd:  # the launcher has ended normally
                        stop("")
                elif key.data is status:
                    status += data
                else:
                    key.data.add(data)
            if out.total + err.total > _OUTPUT_KILL_FACTOR * max_output:
                stop("output")
    finally:
        _kill_group(proc.pid)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        os.close(status_fd)
    return out.text(), err.text(), status.decode("utf-8", errors="replace"), ending


def _result(out, err, status_text, ending, launcher_rc, expect, seconds) -> ExecResult:
    """Turn what the launcher reported into an ExecResult."""
    report: dict[str, str] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(" ")
        report[key] = value
    isolation = tuple(sorted(filter(None, report.get("isolation", "").split(","))))
    code = int(report["exit"]) if report.get("exit", "").lstrip("-").isdigit() else None

    def make(passed: bool, status: str, reason: str = "") -> ExecResult:
        return ExecResult(passed, status, code, out, err, seconds, reason, isolation)

    if ending == "timeout":
        return make(False, "timeout", "wall-clock timeout")
    if ending == "output":
        return make(False, "killed", "output limit")
    if "error" in report:
        return make(False, "error", "sandbox error: " + report["error"])
    if code is None:  # the launcher died before reporting (e.g. the program killed it)
        return make(False, "killed", f"launcher ended with {launcher_rc}")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return make(False, "killed", f"signal {name}")
    if code != 0:
        return make(False, "failed", f"exit code {code}")
    if expect is not None and expect not in out:
        return make(False, "failed", "exited 0 before the end of the program")
    return make(True, "passed")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_tree(path: str) -> None:
    """rmtree that also copes with a program that chmod-ed its files read-only."""

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
