"""The sandbox against an adversarial set: every program must fail, the harness must live on,
and nothing outside the sandbox's temporary directory may change.

Protections that depend on the kernel (namespaces, a fresh uid) are checked when
`isolation_report()` says they are active, and skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import resource
import secrets
import socket
import textwrap
import time

import pytest

from learnforget.evaluate.sandbox import ExecResult, isolation_report, run_many, run_program

ISOLATION = isolation_report()
needs_nproc = pytest.mark.skipif(
    not {"uid", "user"} & set(ISOLATION),
    reason="neither a fresh uid nor a user namespace: RLIMIT_NPROC would count all our processes",
)
needs_pidns = pytest.mark.skipif("pid" not in ISOLATION, reason="kernel refused unshare(CLONE_NEWPID)")
needs_readonly = pytest.mark.skipif("readonly_fs" not in ISOLATION, reason="no read-only mount namespace here")
needs_net = pytest.mark.skipif("net" not in ISOLATION, reason="kernel refused unshare(CLONE_NEWNET)")


def run(source: str, **kw) -> ExecResult:
    return run_program(textwrap.dedent(source), **kw)


def processes_named(comm: str, within: float = 5.0) -> list[int]:
    """Pids of live (not zombie) processes anywhere on the machine whose name (/proc/PID/comm) is `comm`, once
    none is left or `within` seconds have passed: SIGKILL to a whole pid namespace or group is delivered at
    once but the processes take a moment to exit, so an immediate look can see a process that is already dying."""
    deadline = time.monotonic() + within
    while True:
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/comm") as f:
                        if f.read().strip() != comm:
                            continue
                    with open(f"/proc/{name}/status") as f:
                        if "\nState:\tZ" not in f.read():
                            pids.append(int(name))
                except OSError:
                    pass
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


# Lets the program give itself (and the children it forks) a name we can look for afterwards.
SET_NAME = """
import ctypes
ctypes.CDLL(None).prctl(15, {name!r}.encode(), 0, 0, 0)  # PR_SET_NAME
"""


def assert_harness_alive() -> None:
    r = run_program("print(6 * 7)\n", timeout=10)
    assert r.passed and r.stdout.strip() == "42", r


# ---------------------------------------------------------------- ordinary programs


def test_normal_program_passes():
    r = run("""
        import math
        assert math.gcd(12, 18) == 6
        print("ok")
    """)
    assert r.passed and r.status == "passed" and r.returncode == 0, r
    assert r.stdout == "ok\n"
    assert r.seconds < 5


def test_failing_assertion_fails():
    r = run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert not r.passed and r.status == "failed" and r.returncode == 1, r
    assert "AssertionError: arithmetic" in r.stderr


def test_program_can_use_its_own_directory():
    r = run("""
        import os, tempfile
        open("scratch.txt", "w").write("hello")
        assert open("scratch.txt").read() == "hello"
        with tempfile.NamedTemporaryFile() as f:  # TMPDIR points into the sandbox
            f.write(b"x")
        print(os.getcwd())
    """)
    assert r.passed, r
    assert not os.path.exists(r.stdout.strip())  # the work dir is gone afterwards


def test_expect_token_required_for_pass():
    token = secrets.token_hex(16)
    assert run(f"print({token!r})\n", expect=token).passed
    r = run("print('something else')\n", expect=token)
    assert not r.passed and r.status == "failed"


def test_run_many_keeps_order():
    sources = [f"print({i})\n" if i % 3 else "raise SystemExit(3)\n" for i in range(6)]
    results = run_many(sources, workers=2)
    for i, r in enumerate(results):
        if i % 3:
            assert r.passed and r.stdout.strip() == str(i)
        else:
            assert not r.passed and r.returncode == 3


def test_environment_is_minimal():
    r = run("""
        import os, sys
        print(sorted(os.environ))
        print(sys.flags.isolated)
    """)
    assert r.passed, r
    names, isolated = r.stdout.splitlines()
    assert "PYTHONPATH" not in names and eval(names) == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert isolated == "1"


# ---------------------------------------------------------------- the adversarial set


def test_infinite_loop_times_out():
    r = run("while True:\n    pass\n", timeout=1.5)
    assert not r.passed and r.status == "timeout", r
    assert r.seconds < 4
    assert_harness_alive()


def test_fork_bomb_is_contained():
    name = "lf" + secrets.token_hex(6)
    r = run(SET_NAME.format(name=name) + textwrap.dedent("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """), timeout=2)
    assert not r.passed and r.status in ("timeout", "killed"), r
    if "pid" in ISOLATION or "uid" in ISOLATION:
        assert processes_named(name) == []  # every child is gone
    assert_harness_alive()


@needs_nproc
def test_process_limit_holds_as_root():
    # RLIMIT_NPROC is not enforced for root: this checks the fresh uid makes it bite.
    r = run("""
        import os, time
        n = 0
        try:
            while n < 200:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
        raise SystemExit(1)
    """, max_procs=8, timeout=10)
    assert not r.passed
    assert int(r.stdout) < 8, r  # the program itself counts as one of the 8


@needs_pidns
def test_daemon_that_leaves_the_group_is_killed():
    name = "lf" + secrets.token_hex(6)
    r = run(SET_NAME.format(name=name) + textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            os.setsid()  # escape the process group the evaluator kills
            time.sleep(60)
            os._exit(0)
        time.sleep(0.2)
    """), timeout=5)
    assert r.passed, r  # the program itself did nothing wrong
    assert processes_named(name) == []


def test_memory_bomb_fails():
    r = run("""
        chunks = []
        while True:
            chunks.append(bytearray(64 * 2**20))
    """, memory_mb=256, timeout=10)
    assert not r.passed and r.status in ("failed", "killed"), r
    assert r.seconds < 8
    r = run("x = bytearray(64 * 2**30)\n", memory_mb=256)
    assert not r.passed and "MemoryError" in r.stderr, r
    assert_harness_alive()


def test_deep_recursion_segfault_is_a_failure():
    # Through map() every level also uses C stack, so it overflows the 8 MB stack: SIGSEGV.
    # (Plain Python recursion does not use C stack on 3.11+; it ends in RecursionError.)
    r = run("""
        import sys
        sys.setrecursionlimit(10**6)
        def f(n):
            return list(map(f, [n + 1]))
        f(0)
    """, timeout=10)
    assert not r.passed and r.status == "killed" and r.returncode == -11, r
    assert_harness_alive()


def test_writing_outside_is_refused(tmp_path):
    # tmp_path is 0700 and ours: a fresh uid cannot reach it. /tmp, /var/tmp and /dev/shm are
    # world-writable: only the read-only mount namespace protects them.
    tag = secrets.token_hex(8)
    targets = [str(tmp_path / "evil.txt")] + [f"{d}/lf-evil-{tag}" for d in ("/tmp", "/var/tmp", "/dev/shm")]
    if "readonly_fs" not in ISOLATION:
        if "uid" not in ISOLATION:
            pytest.skip("neither a read-only mount namespace nor a fresh uid: writes cannot be stopped")
        targets = targets[:1]
    r = run(f"""
        for path in {targets!r}:
            try:
                open(path, "w").write("pwned")
                print("WROTE", path)
            except OSError as e:
                print("refused", path, type(e).__name__)
        open({targets[0]!r}, "w").write("pwned")  # uncaught: the program must fail
    """)
    assert not r.passed and r.status == "failed", r
    assert "WROTE" not in r.stdout
    for path in targets:
        assert not os.path.exists(path), path


@needs_readonly
def test_deleting_files_is_refused():
    # A world-writable directory with a world-writable file: only the read-only file system
    # protects it from a different uid.
    import tempfile

    victim_dir = tempfile.mkdtemp(prefix="lf-victim-")
    try:
        os.chmod(victim_dir, 0o777)
        sentinel = os.path.join(victim_dir, "sentinel.txt")
        with open(sentinel, "w") as f:
            f.write("keep me")
        os.chmod(sentinel, 0o666)
        r = run(f"""
            import os, shutil
            for attempt in (lambda: open({sentinel!r}, "w").write("gone"),
                            lambda: shutil.rmtree({victim_dir!r})):
                try:
                    attempt()
                except OSError:
                    pass
            os.remove({sentinel!r})
        """)
        assert not r.passed and r.status == "failed", r
        with open(sentinel) as f:
            assert f.read() == "keep me"
        assert os.listdir(victim_dir) == ["sentinel.txt"]
    finally:
        import shutil

        shutil.rmtree(victim_dir)


@needs_net
def test_socket_to_local_server_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        r = run(f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"hello")
        """)
        assert not r.passed and r.status == "failed", r
        assert "OSError" in r.stderr or "unreachable" in r.stderr.lower(), r.stderr
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody ever connected
            server.accept()


@pytest.mark.parametrize("target", ["os.getppid()", "0", "-1"])
def test_killing_parent_leaves_harness_alive(target):
    # getppid() is the sandbox's own init (pid 1 of its pid namespace) or launcher, never the
    # evaluator; 0 is the sandbox's process group; -1 is every process the program may signal.
    token = secrets.token_hex(16)
    r = run(f"""
        import os, signal
        os.kill({target}, signal.SIGKILL)
        print({token!r})  # would pass if the kill were silently ignored
    """, expect=token)
    assert r.status != "error", r
    if target == "os.getppid()" and "uid" in ISOLATION:
        # As a fresh uid it may not signal its (root) parent: PermissionError, a failure.
        # (Without root, the parent is the namespace's init, which ignores the SIGKILL, and a
        # program that goes on to pass its tests passes: nothing was killed.)
        assert not r.passed and "PermissionError" in r.stderr, r
    assert_harness_alive()


def test_program_has_no_capabilities():
    r = run("""
        import ctypes, os
        caps = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
        libc = ctypes.CDLL(None, use_errno=True)
        MS_REMOUNT, MS_BIND = 32, 4096
        remount = libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None)  # try to make / writable
        print(caps, remount)
    """)
    assert r.passed, r
    caps, remount = r.stdout.split()
    if ISOLATION:
        assert int(caps, 16) == 0
    assert remount == "-1"


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "raise SystemExit"])
def test_exit_zero_before_the_tests_fails(exit_call):
    token = secrets.token_hex(16)
    r = run(f"""
        import os, sys
        def candidate():
            {exit_call}
        candidate()
        assert False  # the tests
        print({token!r})
    """, expect=token)
    assert r.returncode == 0, r  # it did exit 0...
    assert not r.passed and r.status == "failed", r  # ...and still does not pass


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_printing_gigabytes_is_capped(stream):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run(f"""
        import sys
        chunk = "x" * 2**20
        for _ in range(4096):  # 4 GB
            sys.{stream}.write(chunk)
    """, max_output=10_000, timeout=20)
    assert not r.passed and r.status == "killed" and r.reason == "output limit", r
    assert len(getattr(r, stream)) <= 10_000
    assert r.seconds < 5
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 100_000  # KiB: the harness did not hold the output
    assert_harness_alive()


def test_chmod_tricks_do_not_stop_cleanup():
    r = run("""
        import os
        os.makedirs("locked/inner")
        open("locked/inner/f", "w").write("x")
        os.chmod("locked/inner/f", 0)
        os.chmod("locked/inner", 0)
        os.chmod("locked", 0)
        print(os.getcwd())
        raise SystemExit(1)
    """)
    assert not r.passed
    assert not os.path.exists(r.stdout.strip())


def test_program_that_ignores_sigterm_is_still_stopped():
    # The deadline sends SIGKILL, which cannot be caught; a child that ignores SIGTERM goes with the group.
    name = "lf" + secrets.token_hex(6)
    r = run(SET_NAME.format(name=name) + textwrap.dedent("""
        import os, signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if os.fork() == 0:
            while True:
                pass
        while True:
            pass
    """), timeout=1.5)
    assert not r.passed and r.status == "timeout", r
    assert r.seconds < 4
    if "pid" in ISOLATION or "uid" in ISOLATION:
        assert processes_named(name) == []
    assert_harness_alive()


def test_secrets_in_the_evaluators_environment_are_not_visible(monkeypatch):
    # The program gets a fresh, minimal environment, and cannot read another process's /proc/PID/environ.
    secret = secrets.token_hex(16)
    monkeypatch.setenv("LF_TEST_API_KEY", secret)
    r = run("""
        import os
        print(sorted(os.environ.items()))
        seen = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    seen.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
                except OSError:
                    pass
        print("".join(seen))
    """)
    assert r.passed, r
    assert secret not in r.stdout and "LF_TEST_API_KEY" not in r.stdout
