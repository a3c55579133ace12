"""Starting, forking, waiting for and stopping the checks' child processes: one module, one protocol.

Every check runs student code in a child process (``python -m autograder.isolate`` or
``python -m server_stub.runner``). A fresh Python that imports numpy, scikit-learn and Flask
costs about a second of CPU, so inside the grading sandbox (:mod:`autograder.grade.inside`)
those children are forks of a *fork server*: a process forked from one that has the
libraries imported, which listens on a Unix socket in the sandbox's private ``/tmp`` and
forks a child per request. In a student's Jupyter kernel the first check starts a
:class:`Warm` server (a fresh process, since a kernel has threads), and every later check's
children fork from it; elsewhere children are plain processes.

Protocol, one connection per child: the client sends one JSON line ``{"args", "cwd", "log",
"env"}``; the server answers ``{"pid"}`` once forked and ``{"exit"}`` when the child ends. A
client that disconnects early gets its child's process group killed.

A server may be *pinned* to a submission's replay (:func:`pinned`, given the judge's loader): it runs the replay once
before it listens, so every check's child starts from the submission's state. A replay that
leaves threads running is not forked from (a lock held at fork time would hang the child);
spawning then falls back to an unpinned server, whose children replay for themselves.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

# Where the kernel's fork server listens (set by the grading sandbox's entry for nbgrader's kernel).
SOCKET_ENV = "SERVELAB_FORKSERVER_SOCKET"
PRELOAD = (
    "numpy", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing", "sklearn.datasets",
    "sklearn.model_selection", "sklearn.metrics", "joblib", "cloudpickle", "flask", "werkzeug.serving", "requests",
    "autograder.isolate", "autograder.errors", "autograder.harness", "server_stub.runner", "server_stub.iris_handler",
    "server_stub.model",
)
EXIT_THREADS = 86  # a pinned server's exit code when its replay left threads running
MAX_LINE = 1 << 20


def preload() -> None:
    """Import :data:`PRELOAD`, skipping what is not installed (a missing extra only costs speed)."""
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001
            pass


def undumpable() -> None:
    """Refuse ptrace, /proc/PID/mem and /proc/PID/fd to processes of the same user (student code)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


def close_fds(keep: tuple[int, ...] = ()) -> None:
    """In a fresh child: stdio to /dev/null (unless kept), every other inherited descriptor closed."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(null, fd)
    for fd in _fds():
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _fds() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def stop(proc, grace: float = 3.0) -> None:
    """Stop ``proc`` and everything it started: SIGTERM to its group, then SIGKILL to the group and its tree."""
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    try:  # children that left the group (setsid) are still in the process tree
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    except psutil.Error:
        pass
    _killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --- the server ------------------------------------------------------------------------------


def _become(req: dict, fds: list[int] = (), prepare=None) -> None:
    """In a forked child: become ``python -m <args>`` in its own session. Never returns.

    With passed ``fds`` (stdin, output, result pipe), they become descriptors 0, 1 and 2, and 3,
    and ``prepare(req["sandbox"])`` runs before the module (the grading sandbox's entry).
    """
    code = 1
    try:
        os.setsid()
        if fds:
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
            for target, fd in zip((0, 1, 2, 3), (moved[0], moved[1], moved[1], moved[2])):
                os.dup2(fd, target)
            close_fds(keep=(0, 1, 2, 3))
        else:
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        if prepare is not None:
            prepare(req.get("sandbox") or {})
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        args = req["args"]
        if args[:1] != ["-m"] or len(args) < 2:
            raise SystemExit(f"the fork server runs modules only, not {args!r}")
        sys.argv = [args[1], *args[2:]]
        sys.path.insert(0, req["cwd"])  # as `python -m` would have it
        import runpy

        try:
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported through the log and the exit code
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve(listener: socket.socket, parent: int, prepare=None) -> None:
    """Fork on request until ``parent`` is gone.

    ``listener`` is a listening socket, or a connected one over which each connection arrives as a
    passed descriptor, with the child's stdin, output and result pipe: the grading sandbox's
    zygote, which also stops when its grader closes that socket.
    """
    passing = not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    conns: dict[int, socket.socket] = {}  # fd -> connection waiting for its request
    extra: dict[int, list[int]] = {}  # fd -> the descriptors passed with it
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, *conns.values(), *children.values()], [], [], 0.05)
        for sock in ready:
            if sock is listener and passing:
                try:
                    msg, fds, _, _ = socket.recv_fds(listener, 1, 4)
                except OSError:
                    msg, fds = b"", []
                if not msg:
                    parent = -1  # the grader is gone
                    break
                if fds:
                    conn = socket.socket(fileno=fds[0])
                    conns[conn.fileno()], extra[conn.fileno()] = conn, fds[1:]
            elif sock is listener:
                conn, _ = listener.accept()
                conns[conn.fileno()] = conn
            elif sock.fileno() in conns:
                conn = conns.pop(sock.fileno())
                fds = extra.pop(conn.fileno(), [])
                try:
                    req = json.loads(_readline(conn))
                    assert isinstance(req, dict)
                except (OSError, ValueError, RecursionError, AssertionError):
                    req = None
                pid = os.fork() if req is not None else -1
                if pid == 0:
                    listener.close()
                    for other in [*conns.values(), *children.values(), conn]:
                        other.close()
                    _become(req, fds, prepare if fds else None)
                for fd in fds:
                    os.close(fd)
                if pid < 0:
                    conn.close()
                    continue
                children[pid] = conn
                _send(conn, {"pid": pid})
            elif not sock.recv(1, socket.MSG_PEEK):  # a client with a running child speaks only by closing
                for pid, conn in list(children.items()):
                    if conn is sock:
                        _killpg(pid)
        for pid in list(children):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    conn = children.pop(pid)
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                    conn.close()
    for pid in children:
        _killpg(pid)


def _readline(conn: socket.socket) -> bytes:
    data = b""
    conn.settimeout(10)
    while not data.endswith(b"\n") and len(data) < MAX_LINE:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.settimeout(None)
    return data


def _send(conn: socket.socket, msg: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(msg) + "\n").encode())


class Server:
    """A fork server forked from this process; :meth:`close` kills it and its children."""

    def __init__(self, replay: str | None = None, timeout: float = 60.0, load=None):
        self.folder = tempfile.mkdtemp(prefix="servelab-fork-")
        if len(self.folder) > 80:  # AF_UNIX paths are limited to 107 bytes
            os.rmdir(self.folder)
            self.folder = tempfile.mkdtemp(prefix="servelab-fork-", dir="/tmp")
        self.path = os.path.join(self.folder, "socket")
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                close_fds()
                undumpable()
                if replay is not None:
                    # The replay's own given cells start checks too: they fork from here directly.
                    _state["direct"] = True
                    load(replay)
                    _state.pop("direct")
                    if threading.active_count() > 1:
                        os._exit(EXIT_THREADS)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(self.path)
                listener.listen(64)
                _serve(listener, parent)
                code = 0
            finally:
                with contextlib.suppress(OSError):  # its parent is gone without close()
                    os.unlink(self.path)
                    os.rmdir(self.folder)
                os._exit(code)
        self.returncode: int | None = None
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path) and self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.ready = os.path.exists(self.path)

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.folder)


class Warm:
    """A kernel's fork server: ``python -m autograder.procs SOCKET``, a fresh process that imports :data:`PRELOAD`.

    A Jupyter kernel has threads (ZMQ's), so it is not forked from; this server is, from the
    second check on (:func:`warm`). It ends with the kernel.
    """

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="servelab-fork-", dir="/tmp")
        self.path = os.path.join(self.folder, "socket")
        here = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        env.pop(SOCKET_ENV, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "autograder.procs", self.path], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def poll(self) -> int | None:
        return self.proc.poll()

    def close(self) -> None:
        stop(self.proc, grace=1)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)


def warm() -> None:
    """In a Jupyter kernel with no fork server yet: start a :class:`Warm` one; the checks' children fork from it once it listens."""
    app = sys.modules.get("ipykernel.kernelapp")
    if sys.platform != "linux" or app is None or not app.IPKernelApp.initialized() or os.environ.get(SOCKET_ENV):
        return
    with _lock:
        if _state.get("server") is None:
            _state["server"] = Warm()


def _serve_socket(path: str) -> None:
    """``python -m autograder.procs SOCKET``: preload, then fork on request at ``path`` until the parent is gone."""
    parent = os.getppid()
    close_fds()
    undumpable()
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path + ".new")
        os.rename(path + ".new", path)  # the socket appears when it is ready
        listener.listen(64)
        _serve(listener, parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


_state: dict = {}  # "server": the Server spawn() uses in this process; "direct": fork from here
_lock = threading.Lock()


def enabled() -> bool:
    return sys.platform == "linux" and bool(os.environ.get(SOCKET_ENV) or _state.get("server") or _state.get("direct"))


@contextlib.contextmanager
def pinned(replay: str, timeout: float, load):
    """A server that has run ``load(replay)`` for this block; yields ``("ready"|"threads"|"died"|"timeout", detail)``.

    When it is not ready, spawning in the block uses an unpinned server forked from here.
    """
    server = Server(replay, timeout, load)
    if server.ready:
        state = ("ready", None)
    elif server.poll() is None:
        state = ("timeout", timeout)
    else:
        state = ("threads", None) if server.returncode == EXIT_THREADS else ("died", server.returncode)
    if not server.ready:
        server.close()
        server = Server()
    with _lock:
        saved = _state.get("server")
        _state["server"] = server
    try:
        yield state
    finally:
        with _lock:
            _state["server"] = saved
        server.close()


class Child:
    """The parts of :class:`subprocess.Popen` the checks use, for a child of a fork server."""

    def __init__(self, pid: int, args: list[str], conn: socket.socket | None = None):
        self.pid, self.args, self._conn = pid, args, conn
        self.returncode: int | None = None
        self._buffer = b""

    def _read(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        if self._conn is None:  # forked directly: ours to reap
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    return
            time.sleep(min(timeout or 0, 0.01))
            return
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return
        chunk = self._conn.recv(4096)
        if not chunk:  # the server died, and the child with it (or with the sandbox)
            self.returncode = -9
        self._buffer += chunk
        if b"\n" in self._buffer:
            try:
                self.returncode = int(json.loads(self._buffer.split(b"\n", 1)[0])["exit"])
            except (ValueError, KeyError, TypeError):
                self.returncode = -9
        if self.returncode is not None:
            self._conn.close()

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._read(min(left, 1.0) if left is not None else 1.0)
        return self.returncode


def _socket_path() -> str | None:
    with _lock:
        server = _state.get("server")
        if server is not None and server.poll() is None:
            return server.path
        given = os.environ.get(SOCKET_ENV)
        return given if given and os.path.exists(given) else None


def fork_child(args: list[str], workdir: Path, log_path: Path, env: dict) -> Child | None:
    """``python <args>`` as a child of a fork server (or of this process while it replays); None if there is none."""
    env = {k: v for k, v in env.items() if k != SOCKET_ENV}
    req = {"args": list(args), "cwd": str(workdir), "log": str(log_path), "env": env}
    if _state.get("direct") and threading.active_count() == 1:
        pid = os.fork()
        if pid == 0:
            _become(req)
        return Child(pid, list(args))
    path = _socket_path()
    if path is None:
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        conn.sendall((json.dumps(req) + "\n").encode())
        return handshake(conn, list(args), 30)
    except OSError:
        return None


def handshake(conn: socket.socket, args: list[str], timeout: float) -> Child:
    """The :class:`Child` a fork server reports on ``conn`` (its request sent); OSError if none comes in ``timeout``."""
    conn.settimeout(timeout)
    line = b""
    try:
        while not line.endswith(b"\n") and len(line) < MAX_LINE:
            chunk = conn.recv(4096)
            if not chunk:
                raise OSError("the fork server closed the connection")
            line += chunk
        conn.settimeout(None)
        first, _, rest = line.partition(b"\n")
        child = Child(int(json.loads(first)["pid"]), args, conn)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        conn.close()
        raise OSError(f"no child from the fork server: {exc}") from None
    child._buffer = rest
    return child


def spawn(args: list[str], workdir: Path, log_path: Path) -> subprocess.Popen | Child:
    """Start ``python args...`` in its own session, output to ``log_path``: forked where a server is, else fresh."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    warm()
    if enabled():
        child = fork_child(args, Path(workdir), Path(log_path), env)
        if child is not None:
            return child
    env.pop(SOCKET_ENV, None)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, *args], cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )


if __name__ == "__main__":
    from autograder.procs import _serve_socket as serve_socket  # this module's functions, not __main__'s copies

    serve_socket(sys.argv[1])
