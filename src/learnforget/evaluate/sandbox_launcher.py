"""The sandbox launcher: the process L of `sandbox.py`'s diagram, and its forks C and P.

Run as a script, never imported by the evaluator: `python -I -S -B sandbox_launcher.py <config>`,
where <config> is a Python literal (str, int, None, list, dict) built by `sandbox.run_program`. It
imports only cheap builtin modules, because its start-up time is paid once per program (importing
sandbox.py here, with dataclasses, subprocess and friends, costs far more). -S: it needs no
site-packages, and skipping site is faster. It runs in L, and in its forks C and P, never in the
evaluator. L is single-threaded, which unshare(CLONE_NEWNS) requires.
It reports to the evaluator through the status pipe, one "key value" line at a time.
"""

import ctypes
import os
import resource
import signal
import stat
import sys


CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38

# Set by start() from the command line; module-level so the functions below read them as before.
CONFIG: dict = {}
WORKDIR = PROGRAM_PATH = ""
libc = None


def report(key, value):
    os.write(CONFIG["status_fd"], f"{key} {value}\n".encode())


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    return libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(path, flags, attr_set, attr_clr):
    attr = MountAttr(attr_set, attr_clr, 0, 0)
    rc = libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                      ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    return rc == 0


def blocked_ancestor(path):
    """The top-most directory on `path` that others may not traverse, or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def enter_user_namespace():
    """Without root: a new user namespace gives us the capabilities to make the others.

    Our uid maps to itself, not to 0, so the program loses every capability when it execs.
    """
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        return False
    try:
        maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
        for name, text in maps:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        return False
    return True


def expose(paths):
    """Make the interpreter reachable for an unprivileged uid.

    If an ancestor such as /root (mode 0700) blocks it, hide that ancestor under a tmpfs
    (mode 0755) and bind the interpreter's directories back at their own paths.
    """
    blocked = {}
    for p in paths:
        a = blocked_ancestor(p)
        if a is not None:
            blocked.setdefault(a, []).append(p)
    old_umask = os.umask(0o022)
    for ancestor, inside in blocked.items():
        staged = []
        for i, p in enumerate(inside):
            stage = os.path.join(WORKDIR, f".stage{i}")
            os.mkdir(stage)
            mount(p, stage, None, MS_BIND | MS_REC)
            staged.append((stage, p))
        mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for stage, p in staged:
            os.makedirs(p, exist_ok=True)
            mount(stage, p, None, MS_BIND | MS_REC)
            libc.umount2(stage.encode(), MNT_DETACH)
            os.rmdir(stage)
    os.umask(old_umask)


def setup_mounts(uid, userns):
    """tmpfs work dir holding the program; everything else read-only. True if all worked."""
    with open(PROGRAM_PATH, "rb") as f:
        source = f.read()
    if not mount(None, "/", None, MS_REC | MS_PRIVATE):  # nothing propagates to the host
        return False
    owner = f",uid={uid},gid={uid}" if uid is not None and not userns else ""
    opts = f"size={CONFIG['tmpfs_mb']}m,nr_inodes=4096,mode=0700{owner}"
    if not mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, opts):
        return False
    with open(PROGRAM_PATH, "wb") as f:
        f.write(source)
    if uid is not None:
        os.chown(PROGRAM_PATH, uid, uid)
        expose(CONFIG["exe_paths"])
    ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    if not mount_setattr("/", AT_RECURSIVE, ro, 0):
        return False
    return mount_setattr(WORKDIR, 0, 0, MOUNT_ATTR_RDONLY)


def isolate():
    """Enter new namespaces and set up mounts; returns what worked and the uid to drop to."""
    iso = dict.fromkeys(("user", "net", "ipc", "mount", "readonly_fs", "uid", "pid"), False)
    uid = CONFIG["uid"]
    if uid is not None and blocked_ancestor(os.path.dirname(WORKDIR)):
        raise RuntimeError(f"the sandbox uid cannot reach {WORKDIR}: set TMPDIR to e.g. /tmp")
    if os.geteuid() != 0:
        iso["user"] = enter_user_namespace()
    iso["net"] = libc.unshare(CLONE_NEWNET) == 0
    iso["ipc"] = libc.unshare(CLONE_NEWIPC) == 0  # SysV shm and semaphores die with the run
    if libc.unshare(CLONE_NEWNS) == 0:
        iso["mount"] = True
        iso["readonly_fs"] = setup_mounts(uid, iso["user"])
    if uid is not None and not iso["mount"]:
        if any(blocked_ancestor(p) for p in CONFIG["exe_paths"]):
            uid = None  # the unprivileged uid could not even start the interpreter
    iso["uid"] = uid is not None
    iso["pid"] = libc.unshare(CLONE_NEWPID) == 0
    return iso, uid


def count_own_processes():
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                n += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return n


def exec_program(iso, uid):
    """P: apply limits, drop privileges, become the program. Never returns."""
    try:
        os.chdir(WORKDIR)
        procs = CONFIG["procs"]
        if iso["user"]:  # the count is per user namespace, and L and C are in it too
            procs += 2
        elif uid is None:  # sharing our uid: leave room for what it already runs
            procs += count_own_processes()
        fsize = CONFIG["fsize_mb"] * 2**20
        limits = {
            resource.RLIMIT_CPU: (CONFIG["cpu"], CONFIG["cpu"] + 1),
            resource.RLIMIT_AS: (CONFIG["memory"], CONFIG["memory"]),
            resource.RLIMIT_FSIZE: (fsize, fsize),
            resource.RLIMIT_NPROC: (procs, procs),
            resource.RLIMIT_NOFILE: (CONFIG["nofile"], CONFIG["nofile"]),
            resource.RLIMIT_CORE: (0, 0),
        }
        for which, value in limits.items():
            resource.setrlimit(which, value)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot raise privileges
        exe = CONFIG["exe"]
        os.execve(exe, [exe, "-I", "-B", CONFIG["program"]], CONFIG["env"])
    except BaseException as e:  # a forked child: say why (the status pipe is open until exec)
        report("error", f"could not start the program: {type(e).__name__}: {e}")
    os._exit(127)


def wait(pid):
    while True:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


def kill_uid(uid):
    """Kill every process of `uid` (a fresh uid, so only the sandbox's)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # -1: every process this uid may signal: its own
        finally:
            os._exit(0)
    wait(pid)


def init(iso, uid):
    """C: pid 1 of the program's pid namespace. When it exits, the kernel kills the rest."""
    if iso["mount"]:  # a /proc that shows only this namespace
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    pid = os.fork()
    if pid == 0:
        exec_program(iso, uid)
    report("exit", wait(pid))
    os._exit(0)


def start(config_literal):
    """Read the config the evaluator passed (a Python literal of str, int, None, list, dict) and set up."""
    global CONFIG, WORKDIR, PROGRAM_PATH, libc
    # eval of our own literal, with no builtins: parsing it with ast or json would cost an import per program.
    CONFIG = eval(config_literal, {"__builtins__": {}})
    WORKDIR = CONFIG["workdir"]
    PROGRAM_PATH = os.path.join(WORKDIR, CONFIG["program"])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long


def main():
    os.set_inheritable(CONFIG["status_fd"], False)  # the program must not be able to fake a report
    try:
        iso, uid = isolate()
    except Exception as e:  # a harness bug: report it rather than run unprotected
        report("error", f"{type(e).__name__}: {e}")
        os._exit(0)
    # ...nor reach our fds through /proc (after isolate(): it writes /proc/self/uid_map).
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    report("isolation", ",".join(k for k, v in iso.items() if v))
    pid = os.fork()
    if pid == 0:
        if iso["pid"]:
            init(iso, uid)
        exec_program(iso, uid)
    code = wait(pid)
    if not iso["pid"]:
        report("exit", code)
        if uid is not None:
            kill_uid(uid)  # processes that escaped the group with setsid
    os._exit(0)


if __name__ == "__main__":
    start(sys.argv[1])
    main()
