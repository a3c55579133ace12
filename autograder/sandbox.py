"""Run one submission's grading under limits.

- **Network**: on Linux as root, a new network namespace holding only loopback
  (``unshare --net``), so student servers cannot collide on ports across submissions and
  nothing can reach any other address. Elsewhere every server already binds port 0 on
  127.0.0.1, so submissions still get distinct ports.
- **Processes**: a new PID namespace (``unshare --pid --fork --kill-child``) when possible;
  when its first process dies the kernel kills everything left inside, daemons included.
  Otherwise the process group is killed.
- **Resources**: CPU seconds, file size (which also caps output written to files), and, per
  submission, the number of processes and memory, through cgroups where the machine lets
  us create them and through rlimits otherwise.
- **Wall clock**: the caller's deadline; past it the whole sandbox is killed.
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Limits:
    cpu_seconds: int = 1800
    memory_bytes: int = 4 * 2**30
    processes: int = 512
    file_bytes: int = 256 * 2**20
    output_bytes: int = 16 * 2**20
    notebook_seconds: float = 300.0
    submission_seconds: float = 900.0
    cell_seconds: float = 120.0  # per graded cell outside the kernel (autograder.outside)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunResult:
    returncode: int | None
    seconds: float
    timed_out: bool
    output_truncated: bool
    isolation: str


@functools.lru_cache(maxsize=1)
def network_isolation_available() -> bool:
    """True where ``unshare --net --pid`` works: Linux, as root, with util-linux and iproute2."""
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    try:
        probe = subprocess.run(
            ["unshare", "--net", "--pid", "--fork", "--kill-child", "--", "ip", "link", "set", "lo", "up"],
            capture_output=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class Cgroup:
    """A cgroup-v1 ``pids`` and ``memory`` group for one submission, when the machine allows it."""

    def __init__(self, limits: Limits):
        self.dirs: list[Path] = []
        name = f"servelab-{uuid.uuid4().hex[:12]}"
        for controller, settings in (
            ("pids", {"pids.max": str(limits.processes)}),
            ("memory", {"memory.limit_in_bytes": str(limits.memory_bytes)}),
            # An equal CPU share per submission, and at most one core: a fork bomb slows only
            # its own grading, and the submission graded beside it keeps a core.
            ("cpu", {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}),
        ):
            base = CGROUP_ROOT / controller
            if not base.is_dir() or not os.access(base, os.W_OK):
                continue
            path = base / name
            try:
                path.mkdir()
                for key, value in settings.items():
                    (path / key).write_text(value)
                self.dirs.append(path)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)

    @property
    def controllers(self) -> set[str]:
        return {d.parent.name for d in self.dirs}

    def join(self) -> None:
        """Move the calling process in; runs in the child between fork and exec."""
        for d in self.dirs:
            with open(d / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def kill_all(self) -> None:
        for d in self.dirs:
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        # Hundreds of processes (a fork bomb) can take seconds to exit after SIGKILL.
        for d in self.dirs:
            for _ in range(300):
                try:
                    d.rmdir()
                    break
                except OSError:
                    self.kill_all()
                    time.sleep(0.1)


def apply_limits(limits: Limits, cgroup_controllers: set[str]) -> None:
    """Set the rlimits for the calling process (and so for all it starts)."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    if "pids" not in cgroup_controllers:
        # RLIMIT_NPROC counts every process of the user and does not bind root; the
        # cgroup is the real limit where it exists.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    if "memory" not in cgroup_controllers:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    # A crashing kernel must not write core files into the course.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _preexec(limits: Limits, cgroup: Cgroup):
    def apply():
        os.setsid()
        cgroup.join()
        apply_limits(limits, cgroup.controllers)

    return apply


def run_nbgrader(args: list[str], *, cwd: Path, env: dict, limits: Limits, wall_seconds: float, log_path: Path,
                 entry: str | None = None, run_as: tuple[int, int] | None = None, hide: list[str] | None = None) -> RunResult:
    """``nbgrader <args>`` in the sandbox, forked from the preloaded zygote where possible.

    ``entry="outside"`` runs :func:`autograder.outside.main_sandboxed` with ``args`` instead,
    as ``run_as``. ``hide`` lists folders covered by an empty tmpfs in the sandbox (zygote
    path only).
    """
    if sys.platform != "linux" or os.environ.get("SERVELAB_NO_ZYGOTE"):
        program = [sys.executable, "-m", "autograder.outside"] if entry == "outside" else [str(Path(sys.executable).parent / "nbgrader")]
        return run_limited([*program, *args], cwd=cwd, env=env,
                           limits=limits, wall_seconds=wall_seconds, log_path=log_path)
    from autograder.zygote import shared

    zygote = shared()
    cgroup = Cgroup(limits)
    isolated = network_isolation_available()
    started = time.monotonic()
    timed_out = False
    code = None
    try:
        rid = zygote.start({
            "argv": args, "cwd": str(cwd), "env": env, "log": str(log_path), "limits": limits.to_dict(),
            "cgroups": [str(d) for d in cgroup.dirs], "isolate_net": isolated,
            "entry": entry, "run_as": list(run_as) if run_as else None, "hide": hide or [],
        })
        pid = zygote.wait(rid, "pid", 30)
        code = zygote.wait(rid, "exit", max(0.0, wall_seconds - (time.monotonic() - started))) if pid else None
        if pid and code is None:
            timed_out = zygote.alive()
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = zygote.wait(rid, "exit", 10)
        cgroup.kill_all()
        zygote.forget(rid)
    finally:
        cgroup.remove()
    truncated = _truncate(log_path, limits.output_bytes)
    isolation = ("netns" if isolated else "ports") + "".join(f"+{c}" for c in sorted(cgroup.controllers))
    if run_as:
        isolation += "+uid"
    if hide:
        isolation += "+hidden"
    return RunResult(None if timed_out else code, time.monotonic() - started, timed_out, truncated, isolation)


def run_limited(argv: list[str], *, cwd: Path, env: dict, limits: Limits, wall_seconds: float, log_path: Path) -> RunResult:
    """Run ``argv`` in a sandbox for at most ``wall_seconds``; its output goes to ``log_path``.

    The log is cut at ``limits.output_bytes``. Everything the command started is gone when
    this returns.
    """
    isolated = network_isolation_available()
    if isolated:
        argv = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--",
                "sh", "-c", 'ip link set lo up && exec "$@"', "sandbox", *argv]
    cgroup = Cgroup(limits)
    started = time.monotonic()
    timed_out = False
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_preexec(limits, cgroup),
            )
            try:
                proc.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                cgroup.kill_all()
                proc.wait()
    finally:
        cgroup.remove()
    truncated = _truncate(log_path, limits.output_bytes)
    isolation = ("netns+pidns" if isolated else "ports") + "".join(f"+{c}" for c in sorted(cgroup.controllers))
    return RunResult(None if timed_out else proc.returncode, time.monotonic() - started, timed_out, truncated, isolation)


def _truncate(path: Path, limit: int) -> bool:
    try:
        if path.stat().st_size <= limit:
            return False
        with open(path, "r+b") as f:
            f.truncate(limit)
            f.seek(0, os.SEEK_END)
            f.write(b"\n[output truncated by the grader]\n")
        return True
    except OSError:
        return False
