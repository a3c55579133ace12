"""A process that has nbgrader imported and forks one sandboxed child per notebook to grade.

Starting ``nbgrader`` costs seconds of imports (nbconvert, nbclient, SQLAlchemy, traitlets)
before any student code runs; paid once per notebook, that is most of the overhead of
grading a class. The zygote pays it once: it imports nbgrader, then for each request
forks a child that sets up the sandbox (:mod:`autograder.sandbox`: new session, cgroups or
rlimits, and, on Linux as root, a network namespace with only loopback) and runs
``nbgrader <args>`` in-process.

Protocol (JSON lines): the parent writes ``{"id", "argv", "cwd", "env", "log", "limits",
"cgroups"}`` to the zygote's stdin; the zygote answers ``{"id", "pid"}`` when the child is
forked and ``{"id", "exit"}`` when it has ended. The zygote itself stays single-threaded,
so forking it is safe.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def _unshare_net() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    return subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


def _hide(paths: list[str]) -> bool:
    """In a new mount namespace, cover each of ``paths`` with an empty, root-only tmpfs.

    The grader's own files (solutions, git history, gradebooks, other submissions) then do
    not exist for anything this process starts, whatever user it runs as.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    if not _expose(libc, Path(sys.base_prefix).resolve()) or not _expose(libc, Path(sys.prefix).resolve()):
        return False
    for path in paths:
        if os.path.isdir(path) and libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, b"size=4k,mode=0700") != 0:
            return False
    return True


MS_BIND = 4096
MNT_DETACH = 2


def _expose(libc, target: Path) -> bool:
    """Make ``target`` reachable by other users inside this mount namespace.

    Python is often installed under a folder only root may enter (pyenv in /root). The first
    such ancestor is covered, in this namespace only, by a tmpfs that anyone may traverse,
    with the one child on the way to ``target`` bind-mounted back; nothing else of it shows.
    """
    parts = target.parts
    for i in range(1, len(parts)):
        folder = Path(*parts[:i])
        if os.stat(folder).st_mode & 0o001:
            continue
        keep = Path(*parts[: i + 1])
        stash = Path(f"/dev/shm/servelab-stash-{os.getpid()}")
        stash.mkdir(mode=0o700)
        ok = (libc.mount(str(keep).encode(), str(stash).encode(), None, MS_BIND | MS_REC, None) == 0
              and libc.mount(b"tmpfs", str(folder).encode(), b"tmpfs", 0, b"size=16m,mode=0755") == 0)
        if ok:
            (folder / parts[i]).mkdir(exist_ok=True)
            ok = libc.mount(str(stash).encode(), str(keep).encode(), None, MS_BIND | MS_REC, None) == 0
        libc.umount2(str(stash).encode(), MNT_DETACH)
        stash.rmdir()
        return ok and _expose(libc, target)
    return True


def drop_privileges(uid: int, gid: int, home: str | None = None) -> None:
    """Become ``uid``:``gid`` for good, with ``home`` (if given) as HOME. Root only."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if home is not None:
        os.environ.update({"HOME": home, "USER": f"student{uid}", "LOGNAME": f"student{uid}"})


def _kernel_forkserver(cwd: str) -> None:
    """A fork server for the kernel's checks, forked from here (the zygote's imports), as the kernel's user.

    Forked before nbgrader reads the gradebook, so it holds nothing the grader keeps from
    student code; the kernel finds it through ``SERVELAB_FORKSERVER_SOCKET``.
    """
    import tempfile

    from autograder.forkserver import SOCKET_ENV, prefork

    uid, _, gid = os.environ["SERVELAB_SANDBOX_USER"].partition(":")
    user = (int(uid), int(gid or uid))
    folder = Path(tempfile.mkdtemp(prefix=".forkserver-", dir=cwd))  # one per notebook run
    os.chown(folder, *user)
    path = str(folder / "socket")
    prefork(user, serve_at=path)
    os.environ[SOCKET_ENV] = path


def _child(req: dict) -> None:
    """In the forked child: enter the sandbox, then run nbgrader. Never returns."""
    code = 1
    try:
        from autograder.sandbox import Limits, apply_limits

        os.setsid()
        for d in req["cgroups"]:
            with open(Path(d) / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        if req["isolate_net"] and not _unshare_net():
            raise SystemExit(70)
        if req.get("hide") and not _hide(req["hide"]):
            raise SystemExit(71)
        mode = os.O_APPEND if req.get("append") else os.O_TRUNC
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | mode, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if req["limits"] is not None:
            apply_limits(Limits(**req["limits"]), {Path(d).parent.name for d in req["cgroups"]})
        if req.get("entry") != "outside" and os.environ.get("SERVELAB_FORKSERVER") == "1" and os.environ.get("SERVELAB_SANDBOX_USER"):
            _kernel_forkserver(req["cwd"])
        if req.get("entry") == "outside":
            from autograder.outside import main_sandboxed

            code = main_sandboxed(req["argv"], req.get("run_as"))
        else:
            sys.argv = ["nbgrader", *req["argv"]]
            from nbgrader.apps.nbgraderapp import main

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report through the exit code and the log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reap(children: dict):
    """Yield ``(children.pop(pid), exit code)`` for each child of ``children`` that has ended; never blocks."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            yield children.pop(pid), os.waitstatus_to_exitcode(status)


def serve() -> None:
    """The zygote's loop: fork on request, report each child's end."""
    # The point of the zygote: import once, before forking, what every nbgrader run loads.
    import alembic.command  # noqa: F401
    import jupyter_client.manager  # noqa: F401
    import nbclient  # noqa: F401
    import nbconvert.exporters  # noqa: F401
    import nbgrader.api  # noqa: F401
    import nbgrader.apps  # noqa: F401
    import nbgrader.apps.nbgraderapp  # noqa: F401
    import nbgrader.converters  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401
    import zmq  # noqa: F401

    # And what the checks' fork servers load, so the ones forked from here have it already.
    from autograder.forkserver import preload

    preload()
    import IPython.core.inputtransformer2  # noqa: F401 - the replay's cell transformer
    import autograder.outside  # noqa: F401

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    children: dict[int, str] = {}
    buffer = b""
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        if ready:
            chunk = os.read(stdin, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req)
                children[pid] = req["id"]
                out.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")
                out.flush()
        for rid, code in reap(children):
            out.write(json.dumps({"id": rid, "exit": code}) + "\n")
            out.flush()
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Zygote:
    """The parent's handle on a zygote process; safe to use from several threads."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autograder.zygote"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._waiting: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._n = 0

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._cond:
                self._waiting.setdefault(msg["id"], {}).update(msg)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, req: dict) -> str:
        with self._lock:
            self._n += 1
            rid = f"r{self._n}"
            self.proc.stdin.write((json.dumps({**req, "id": rid}) + "\n").encode())
            self.proc.stdin.flush()
        return rid

    def wait(self, rid: str, key: str, timeout: float):
        """The value of ``key`` ("pid" or "exit") for request ``rid``, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._waiting.get(rid, {}):
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    return None
                self._cond.wait(min(left, 0.5))
            return self._waiting[rid][key]

    def forget(self, rid: str) -> None:
        with self._cond:
            self._waiting.pop(rid, None)

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_trusted(args: list[str], cwd: Path, env: dict, log_path: Path, timeout: float = 3600) -> int | None:
    """``nbgrader <args>`` for the grader's own work (no sandbox), appending to ``log_path``.

    Returns the exit code, or None if the zygote is unusable (the caller then runs the CLI).
    """
    if sys.platform != "linux" or os.environ.get("SERVELAB_NO_ZYGOTE"):
        return None
    zygote = shared()
    rid = zygote.start({"argv": args, "cwd": str(cwd), "env": env, "log": str(log_path), "append": True,
                        "limits": None, "cgroups": [], "isolate_net": False})
    try:
        if zygote.wait(rid, "pid", 60) is None:
            return None
        return zygote.wait(rid, "exit", timeout)
    finally:
        zygote.forget(rid)


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared() -> Zygote:
    """The zygote of this process, started on first use (a Dask worker gets its own)."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            _shared = Zygote()
        return _shared


if __name__ == "__main__":
    serve()
