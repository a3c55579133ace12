"""A preloaded fork server for the checks' child processes, used while grading.

Every check runs student code in a fresh ``python -m autograder.isolate`` or
``python -m server_stub.runner`` process. Each such process spends about a second of CPU
importing numpy, scikit-learn, Flask and cloudpickle before it does anything, and a notebook
starts dozens. Grading is CPU-bound, so that is most of its cost.

With ``SERVELAB_FORKSERVER=1`` in the environment (the class grader sets it for each sandboxed
notebook run), :func:`autograder.isolate.spawn` asks a fork server instead: a process that
imported those libraries once and forks a child per request. The child becomes what the
``python -m`` command would have been: its own session, working directory, log file,
environment and ``sys.argv``, then the module run as ``__main__``. Students working in
JupyterLab never set the variable and get plain processes.

The server starts on first use, one per process that spawns (the student's kernel, or the
outside grader), and dies with it. It is single-threaded, so forking it is safe, and it
marks itself non-dumpable, so the student code that runs in its children (same user) cannot
trace it. If it is gone, spawning falls back to a plain process.

Protocol, over a Unix socket, one connection per child: the client sends one JSON line
``{"args", "cwd", "log", "env"}``; the server answers ``{"pid"}`` after forking and
``{"exit"}`` when the child has ended. A client that disconnects early gets its child's
process group killed.

The outside grader (:mod:`autograder.outside`) starts a server *pinned* to a submission's
replay (:func:`pinned`): it runs the replay once, after the imports and before it listens, so
every check's child starts from the submission's state instead of replaying the notebook
again. That is the same code in the same sandbox user as before, run once instead of once per
child. A replay that leaves threads running is not forked from (a thread holding a lock at
fork time would hang the child); the grader then falls back to replaying in each child.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from autograder.zygote import drop_privileges, reap

ENV = "SERVELAB_FORKSERVER"
# Where a server made for this process already listens (set by the grading zygote for a kernel).
SOCKET_ENV = "SERVELAB_FORKSERVER_SOCKET"
PRELOAD = (
    "numpy", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing", "sklearn.datasets",
    "sklearn.model_selection", "sklearn.metrics", "joblib", "cloudpickle", "flask", "werkzeug.serving", "requests",
    "autograder.isolate", "autograder.errors", "server_stub.runner", "server_stub.iris_handler", "server_stub.model",
)
PR_SET_DUMPABLE = 4
# A pinned server's exit code when its replay left threads running (so it will not fork).
EXIT_THREADS = 86


def enabled() -> bool:
    return sys.platform == "linux" and (os.environ.get(ENV) == "1" or bool(_server.get("pinned") or _server.get("direct")))


# --- server ----------------------------------------------------------------------------------


def _child(req: dict) -> None:
    """In the forked child: become ``python -m <args>``. Never returns."""
    code = 1
    try:
        os.setsid()
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
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
        sys.path[0] = req["cwd"]  # as `python -m` would have it
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


def preload() -> None:
    """Import :data:`PRELOAD` (what most checks' children need), skipping what is not installed."""
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing extra only costs speed
            pass


def _without_ours(env: dict) -> dict:
    """``env`` without this module's variables: a child is not a client of its parent's server."""
    return {k: v for k, v in env.items() if k not in (ENV, SOCKET_ENV)}


def serve(path: str, replay: str | None = None) -> None:
    """Preload (and run ``replay``), listen on ``path``, fork on request; exit when the parent is gone."""
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    parent = os.getppid()
    preload()
    if replay is not None:
        from autograder.outside import load_replay

        # The replay's own given cells start checks too (a model trained offline, say): they fork from here.
        _server["direct"] = True
        load_replay(replay)
        _server.pop("direct")
        if threading.active_count() > 1:
            os._exit(EXIT_THREADS)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    os.chmod(path, 0o600)
    conns: dict[int, socket.socket] = {}  # fd -> connection waiting for its request
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, *conns.values(), *children.values()], [], [], 0.05)
        for sock in ready:
            if sock is listener:
                conn, _ = listener.accept()
                conns[conn.fileno()] = conn
            elif sock.fileno() in conns:
                conn = conns.pop(sock.fileno())
                try:
                    req = json.loads(_readline(conn))
                except (OSError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in [*conns.values(), *children.values(), conn]:
                        other.close()
                    _child(req)
                children[pid] = conn
                _send(conn, {"pid": pid})
            else:  # a client with a running child: it only speaks by closing
                if not sock.recv(1, socket.MSG_PEEK):
                    for pid, conn in list(children.items()):
                        if conn is sock:
                            _killpg(pid)
        for conn, code in reap(children):
            _send(conn, {"exit": code})
            conn.close()
    for pid in children:
        _killpg(pid)


def _readline(conn: socket.socket) -> bytes:
    data = b""
    conn.settimeout(10)
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.settimeout(None)
    return data


def _send(conn: socket.socket, msg: dict) -> None:
    try:
        conn.sendall((json.dumps(msg) + "\n").encode())
    except OSError:
        pass


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- client ----------------------------------------------------------------------------------


class ForkedProcess:
    """The parts of :class:`subprocess.Popen` the checks use, for a child of the fork server."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]):
        self._conn, self.pid, self.args = conn, pid, args
        self.returncode: int | None = None
        self._buffer = b""

    def _read(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return
        chunk = self._conn.recv(4096)
        if not chunk:  # the server died: the child is gone with it (or will be killed with the sandbox)
            self.returncode = -9
            self._conn.close()
            return
        self._buffer += chunk
        if b"\n" in self._buffer:
            self.returncode = json.loads(self._buffer.split(b"\n", 1)[0])["exit"]
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
            self._read(left if left is not None else 1.0)
        return self.returncode


_server: dict = {}
_lock = threading.Lock()
_hosts: list["Host"] = []


class DirectChild:
    """A child this process forked itself and reaps itself (:func:`spawn` in a server that is still replaying)."""

    def __init__(self, pid: int, args: list[str]):
        self.pid, self.args = pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode


class Host(DirectChild):
    """A fork server forked, not started: it has this process's imports and waits to be told what to serve.

    :func:`prefork` makes one in a process that has the libraries loaded (the grading zygote
    preloads :data:`PRELOAD`) *before* that process reads anything student code must not
    see; :func:`pinned` then starts it instead of a fresh ``python -m autograder.forkserver``,
    which saves those imports. It takes ``{"path", "replay", "env"}`` as one JSON line on a pipe.
    """

    def __init__(self, pid: int, pipe: int):
        super().__init__(pid, ["autograder.forkserver host"])
        self._pipe = pipe

    def start(self, path: str, replay: str, env: dict) -> "Host":
        with os.fdopen(self._pipe, "w") as f:
            f.write(json.dumps({"path": path, "replay": replay, "env": env, "cwd": os.getcwd()}) + "\n")
        return self


def prefork(run_as: tuple[int, int] | None, serve_at: str | None = None) -> None:
    """Fork a fork server now, as ``run_as`` (uid, gid) if given, with this process's imports.

    With ``serve_at`` it listens there at once (a plain server; the grading zygote makes one
    for each notebook's kernel, which finds it through :data:`SOCKET_ENV`). Without, it is a
    :class:`Host` for the next :func:`pinned`.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(write)
            os.setsid()
            # Nothing of the forking process's: not its stdin (the zygote's request pipe), logs or other files.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, read)
            os.closerange(read + 1, max(read + 1, os.sysconf("SC_OPEN_MAX")))
            if run_as:
                drop_privileges(*run_as)
            if serve_at:
                os.close(read)
                serve(serve_at)
                code = 0
                return
            with os.fdopen(read) as f:
                line = f.readline()
            if line:
                req = json.loads(line)
                os.environ.clear()
                os.environ.update(req["env"])
                tempfile.tempdir = None
                os.chdir(req["cwd"])
                sys.path[0] = req["cwd"]  # as `python -m autograder.forkserver` started there would have it
                serve(req["path"], req["replay"])
                code = 0
        except BaseException:  # noqa: BLE001 - the grader sees the server never listened
            pass
        finally:
            os._exit(code)
    os.close(read)
    if serve_at:
        os.close(write)
    else:
        _hosts.append(Host(pid, write))


def _start_server(path: str, *replay: str) -> subprocess.Popen:
    """A fresh ``python -m autograder.forkserver PATH [REPLAY]`` (when there is nothing to fork it from)."""
    return subprocess.Popen(
        [sys.executable, "-m", "autograder.forkserver", path, *replay],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**_without_ours(os.environ), "PYTHONWARNINGS": "ignore"},
    )


def _await_socket(path: str, seconds: float, proc=None) -> bool:
    """Whether ``path`` exists within ``seconds`` (giving up early if ``proc``, the server, ends)."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and (proc is None or proc.poll() is None) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


def _socket_folder() -> str:
    """A new private folder for a server's socket, short enough for AF_UNIX's 107-byte limit.

    The temporary folder of a sandboxed run lies deep in its course folder; /tmp does not.
    """
    folder = tempfile.mkdtemp(prefix="servelab-fork-")
    if len(folder) > 80:
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="servelab-fork-", dir="/tmp")
    return folder


@contextlib.contextmanager
def pinned(replay: str, timeout: float):
    """A server that has run ``replay`` (:func:`autograder.outside.load_replay`), for this block.

    Yields ``("ready", None)`` once it listens; every :func:`spawn` in the block forks from
    it. Otherwise yields why not: ``("threads", None)`` (the replay left threads running),
    ``("died", exit code)`` or ``("timeout", seconds)``, and spawning is as before the block.
    """
    folder = _socket_folder()
    path = os.path.join(folder, "socket")
    host = _hosts.pop() if _hosts else None
    if host is not None:
        proc = host.start(path, replay, {**_without_ours(os.environ), "PYTHONWARNINGS": "ignore"})
    else:
        proc = _start_server(path, replay)
    if _await_socket(path, timeout, proc):
        state = ("ready", None)
    elif proc.poll() is None:
        state = ("timeout", timeout)
    else:
        state = ("threads", None) if proc.returncode == EXIT_THREADS else ("died", proc.returncode)
    with _lock:
        saved = dict(_server)
        if state[0] == "ready":
            _server.clear()
            _server.update(proc=proc, path=path, pinned=True)
    try:
        yield state
    finally:
        with _lock:
            _server.clear()
            _server.update(saved)
        _killpg(proc.pid)
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _socket_path() -> str | None:
    """The running server's socket, starting the server on first use; None if it cannot start."""
    with _lock:
        proc = _server.get("proc")
        if proc is not None and proc.poll() is None:
            return _server["path"]
        if _server.get("failed"):
            return None
        given = os.environ.get(SOCKET_ENV)
        if given and not _server.get("pinned") and _await_socket(given, 30):
            return given
        folder = _socket_folder()
        path = os.path.join(folder, "socket")
        proc = _start_server(path)
        if not _await_socket(path, 60, proc):
            proc.kill()
            _server["failed"] = True
            return None
        _server.update(proc=proc, path=path)
        return path


def spawn(args: list[str], workdir: Path, log_path: Path, env: dict) -> ForkedProcess | DirectChild | None:
    """``python <args>`` as a child of the fork server, or None if there is none to ask."""
    env = _without_ours(env)
    if _server.get("direct") and threading.active_count() == 1:
        pid = os.fork()
        if pid == 0:
            _child({"args": list(args), "cwd": str(workdir), "log": str(log_path), "env": env})
        return DirectChild(pid, list(args))
    path = _socket_path()
    if path is None:
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        conn.sendall((json.dumps({"args": list(args), "cwd": str(workdir), "log": str(log_path), "env": env}) + "\n").encode())
        conn.settimeout(30)
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                raise OSError("the fork server closed the connection")
            line += chunk
        conn.settimeout(None)
        first, _, rest = line.partition(b"\n")
        proc = ForkedProcess(conn, json.loads(first)["pid"], list(args))
        proc._buffer = rest
        if b"\n" in rest:
            proc.returncode = json.loads(rest.split(b"\n", 1)[0])["exit"]
            conn.close()
        return proc
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    # The imported module's serve, not this __main__ copy's: spawn() reads that module's state.
    from autograder import forkserver as _module

    _module.serve(sys.argv[1], *sys.argv[2:3])
