"""Checks for notebook 06: the serving app as its own process, under ``flask run`` and gunicorn.

The notebook writes the learner's files into a package folder next to it (``serving/`` with
``__init__.py``, ``app.py``, ``wsgi.py`` and ``gunicorn.conf.py``). The checks read those files
from disk, never objects from the notebook's kernel, and start them the way they are started
on a server::

    python -m flask --app serving/app.py run --host 127.0.0.1 --port <free port>
    python -m gunicorn -c serving/gunicorn.conf.py --bind 127.0.0.1:<free port> serving.wsgi:app

always on 127.0.0.1 (the ``--bind`` flag overrides the config file, whatever it says), with the
output going to a log file, bounded waits, and a stop that ends the whole process group. The
gunicorn config itself is judged by running the file in a separate process and comparing the
plain values it defines.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from autograder.checks import api
from autograder.checks.handler import check_results, reference
from autograder.errors import CheckFailed, NotAnswered, ServerStartError
from autograder.harness import DEFAULT_MODEL_DIR, LiveServer
from autograder.isolate import judge_raised, log_tail, run_isolated, stop_process

MODEL_DIR_ENV = "SERVELAB_MODEL_DIR"
# gunicorn boots every worker, and each imports scikit-learn and loads the model; on a busy
# 2-core machine that can take several seconds.
START_TIMEOUT = 30.0
# How long the checks keep a request in flight after SIGTERM before sending the rest of it.
IN_FLIGHT_DELAY = 1.0
# The settings the contract is about, read from the config file.
SETTINGS = ("bind", "workers", "graceful_timeout", "timeout", "daemon", "worker_class", "threads")
LIMITS = {"workers": (2, 4), "graceful_timeout": (2, 60)}
DEFAULT_PORT = 8000

BASIC_ERRORS = [
    {"why": "malformed JSON", "path": "/predict", "data": '{"instances": [', "headers": {"Content-Type": "application/json"}, "status": 400},
    {"why": "a wrong feature count", "path": "/predict", "json": {"instances": [[5.1, 3.5, 1.4]]}, "status": 400},
    {"why": "a text/plain body", "path": "/predict", "data": "5.1,3.5,1.4,0.2", "headers": {"Content-Type": "text/plain"}, "status": 415},
    {"why": "an unknown route", "method": "GET", "path": "/predictions", "status": 404},
    {"why": "the wrong method", "method": "GET", "path": "/predict", "status": 405},
]


# --- starting and stopping a server process ------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flask_command(app_file: str | Path, port: int) -> list[str]:
    """``flask --app <app_file> run`` on 127.0.0.1:<port>, with this interpreter's Flask."""
    return [sys.executable, "-m", "flask", "--app", str(app_file), "run", "--host", "127.0.0.1", "--port", str(port)]


def gunicorn_command(package: str, port: int) -> list[str]:
    """gunicorn serving ``<package>.wsgi:app`` with ``<package>/gunicorn.conf.py``, on 127.0.0.1:<port>.

    ``--bind`` on the command line wins over ``bind`` in the config file.
    ``--no-control-socket`` stops gunicorn (23+) from creating its control socket in the home
    directory, which two servers on one machine would otherwise share.
    """
    return [
        sys.executable, "-m", "gunicorn",
        "-c", f"{package}/gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}",
        "--no-control-socket",
        f"{package}.wsgi:app",
    ]


class ServerProcess(LiveServer):
    """A server started by :func:`start`: ``get``/``post`` with bounded waits, and ``stop()``.

    Usable as a context manager, which stops it on exit.
    """

    def __init__(self, base_url: str, proc: subprocess.Popen, log_path: Path, port: int):
        super().__init__(base_url, proc, log_path)
        self.port = port
        self.stopped = False
        self.own_log_dir: Path | None = None

    def log(self, lines: int = 12) -> str:
        """The last lines of the server's log."""
        return log_tail(self.log_path, lines)

    def terminate(self) -> None:
        """Send SIGTERM to the server's main process only, as ``kill <pid>`` or systemd would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self) -> int:
        """Stop the process and everything it started (SIGTERM, then SIGKILL); return its exit code."""
        if not self.stopped:
            self.stopped = True
            self.session.close()
            stop_process(self.proc)
            if self.own_log_dir is not None:
                shutil.rmtree(self.own_log_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(
    command: list[str],
    port: int,
    cwd: str | Path = ".",
    log_path: str | Path | None = None,
    model_dir: str | Path | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Start ``command`` (a server that will listen on 127.0.0.1:``port``) and wait until it answers.

    The process runs in its own session, in ``cwd``, with ``SERVELAB_MODEL_DIR`` set to
    ``model_dir`` (default: the shared temporary copy of the course model) and its output going
    to ``log_path`` (default: a temporary file, removed by ``stop()``). "Answers" means any HTTP response to
    ``GET /health``. Raises :class:`NotAnswered` when the server died of ``NotImplementedError``
    and :class:`ServerStartError` when it died otherwise or did not answer within ``timeout``.
    """
    from server_stub.model import ensure_model

    model_dir = ensure_model(model_dir or DEFAULT_MODEL_DIR).resolve()
    own_log_dir = None
    if log_path is None:
        own_log_dir = Path(tempfile.mkdtemp(prefix="servelab-log-"))
        log_path = own_log_dir / "server.log"
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, MODEL_DIR_ENV: str(model_dir), "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PORT", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log_path, port)
    server.own_log_dir = own_log_dir
    # A kernel that ends (or a cell that fails) before stop() still takes the server down.
    atexit.register(server.stop)
    try:
        _wait_answering(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_answering(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise _died(server)
        try:
            server.session.get(server.base_url + "/health", timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    if server.proc.poll() is not None:
        raise _died(server)
    raise ServerStartError(
        f"the server did not answer GET /health on {server.base_url} within {timeout:g} s."
        + _tail_note(server.log_path)
    )


def _died(server: ServerProcess) -> CheckFailed:
    text = _read(server.log_path)
    if "NotImplementedError" in text:
        return NotAnswered(
            "the server stopped with NotImplementedError: complete the file, run the cell that writes it, "
            "then run this check again." + _tail_note(server.log_path)
        )
    return ServerStartError(
        f"the server process exited (code {server.proc.returncode}) before it answered." + _tail_note(server.log_path)
    )


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _tail_note(log_path: Path) -> str:
    tail = log_tail(log_path)
    return f"\nServer log (last lines):\n{tail}" if tail else ""


@contextmanager
def _running(command: list[str], port: int, cwd: Path, model_dir=None):
    workdir = Path(tempfile.mkdtemp(prefix="servelab-06-"))
    server = None
    try:
        server = start(command, port, cwd=cwd, log_path=workdir / "server.log", model_dir=model_dir)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the learner's files --------------------------------------------------------------------


def _folder(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise NotAnswered(f"there is no folder {folder}: run the cell that creates it, and the cells that write its files.")
    return folder


def _package(folder: str | Path) -> Path:
    folder = _folder(folder)
    if not (folder / "__init__.py").is_file():
        raise CheckFailed(f"{folder} has no __init__.py, so gunicorn cannot import it as a package; run the cell that creates the folder.")
    return folder


def _file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise NotAnswered(f"{path} does not exist: run the cell that writes it (%%writefile {folder.name}/{name}).")
    return path


def _config_values(path: str, env: dict) -> dict:
    """Child side: run a gunicorn config file as gunicorn does and return its settings as plain data."""
    import runpy

    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    def plain(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return repr(value)

    namespace = runpy.run_path(path)
    return {"settings": {k: plain(namespace[k]) for k in SETTINGS if k in namespace}}


def read_gunicorn_config(folder: str | Path = "serving", port_env: str | None = None) -> dict:
    """The settings ``<folder>/gunicorn.conf.py`` defines, read in a separate process.

    ``port_env`` is the ``PORT`` environment variable the file sees (``None``: unset). Returns a
    dict of the names in :data:`SETTINGS` that the file sets. Raises :class:`NotAnswered` if the
    file raises ``NotImplementedError``, :class:`CheckFailed` if it raises anything else.
    """
    path = _file(_package(folder), "gunicorn.conf.py")
    result = run_isolated(_config_values, str(path), {"PORT": port_env}, what="your gunicorn.conf.py")
    if "raised" in result:
        r = result["raised"]
        if r["type"] == "NotImplementedError":
            raise NotAnswered(f"{path.name} raises NotImplementedError: set the settings, run the cell that writes it, then check again.")
        raise CheckFailed(f"running {path.name} raised {r['type']}: {r['message']}")
    return result["settings"]


def _binds(settings: dict) -> list:
    bind = settings.get("bind")
    return [bind] if isinstance(bind, str) else bind if isinstance(bind, list) else [bind]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _judge_config(settings: dict, port: int) -> None:
    if "bind" not in settings:
        raise CheckFailed(
            "gunicorn.conf.py sets no `bind`; gunicorn then listens on 127.0.0.1:8000, or on 0.0.0.0:$PORT "
            f"when PORT is set (every network interface). Set bind = \"127.0.0.1:<PORT, default {DEFAULT_PORT}>\"."
        )
    for address in _binds(settings):
        if not isinstance(address, str):
            raise CheckFailed(f"`bind` should be a string \"127.0.0.1:<port>\"; it is {address!r}.")
        host, _, port_text = address.rpartition(":")
        if host in ("0.0.0.0", "", "[::]", "::", "*"):
            raise CheckFailed(
                f"`bind` is {address!r}: that listens on every network interface, so anyone whom the security "
                "group lets through reaches the server directly. Bind 127.0.0.1 and put a reverse proxy "
                "(or an SSH tunnel) in front."
            )
        if host != "127.0.0.1":
            raise CheckFailed(f"`bind` is {address!r}; the host should be 127.0.0.1 (loopback only).")
        if port_text != str(port):
            raise CheckFailed(
                f"with PORT={'unset' if port == DEFAULT_PORT else port}, `bind` is {address!r}; expected "
                f"\"127.0.0.1:{port}\" (the port from the PORT environment variable, default {DEFAULT_PORT})."
            )
    for name, (low, high) in LIMITS.items():
        value = settings.get(name)
        if not _number(value) or (name == "workers" and not isinstance(value, int)) or not low <= value <= high:
            raise CheckFailed(f"`{name}` should be a number from {low} to {high}; it is {value!r}.")
    timeout = settings.get("timeout")
    if not _number(timeout) or timeout < settings["graceful_timeout"]:
        raise CheckFailed(
            f"`timeout` should be a number of seconds, at least graceful_timeout ({settings['graceful_timeout']}); "
            f"it is {timeout!r}."
        )
    if settings.get("daemon"):
        raise CheckFailed("`daemon` is set: a daemonized gunicorn detaches from whatever started it, which then cannot watch or stop it. Remove it.")


def check_gunicorn_config(folder: str | Path = "serving", port_env: str | None = None) -> dict:
    """``<folder>/gunicorn.conf.py`` binds 127.0.0.1:$PORT only, with the required worker and timeout settings.

    ``port_env`` is the ``PORT`` the file sees (``None``: unset, so the port must be 8000).
    Returns the settings read.
    """
    settings = read_gunicorn_config(folder, port_env)
    _judge_config(settings, int(port_env) if port_env else DEFAULT_PORT)
    return settings


def _runnable_config(folder: Path) -> dict:
    """The config's settings, if it is safe to start: never daemonized, a bounded number of workers."""
    settings = read_gunicorn_config(folder)
    workers = settings.get("workers", 1)
    if settings.get("daemon"):
        raise CheckFailed("gunicorn.conf.py sets `daemon`; the check will not start a server it could not stop. Remove it.")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= LIMITS["workers"][1]:
        raise CheckFailed(f"gunicorn.conf.py sets workers = {workers!r}; use 2 to {LIMITS['workers'][1]} on this machine.")
    return settings


# --- the checks -----------------------------------------------------------------------------


def _check_contract(srv, instances: list, errors: list, model_dir=None) -> None:
    """The notebook-05 API over HTTP: health, model metadata, predictions on both routes, JSON errors."""
    r = srv.get("/health")
    body = api._json_body("GET", "/health", r)
    if r.status_code != 200 or body != {"status": "ok"}:
        raise CheckFailed(f"{api._describe('GET', '/health', r)}; expected 200 with {{\"status\": \"ok\"}}.")
    path = f"/v1/models/{api.MODEL}"
    r = srv.get(path)
    body = api._json_body("GET", path, r)
    want = {"name": api.MODEL, "version": "1", "ready": True}
    got = {k: body.get(k) for k in want} if isinstance(body, dict) else body
    if r.status_code != 200 or got != want:
        raise CheckFailed(f"{api._describe('GET', path, r)}; expected 200 with {json.dumps(want)}.")
    expected = reference(model_dir).handle([{"body": x} for x in instances], None)
    for path in api.PREDICT_ROUTES:
        r = srv.post(path, json={"instances": instances})
        body = api._json_body("POST", path, r)
        if r.status_code != 200 or not isinstance(body, dict) or "predictions" not in body:
            raise CheckFailed(f"{api._describe('POST', path, r)}; expected 200 with {{\"predictions\": [...]}}.")
        check_results(expected, body["predictions"], f"POST {path} with {len(instances)} instances")
    for case in errors:
        api._expect_error(srv, case)


def check_flask_run(folder: str | Path = "serving", instances: list | None = None, errors: list | None = None, model_dir=None) -> None:
    """``flask --app <folder>/app.py run`` serves the notebook-05 API over HTTP on 127.0.0.1.

    ``instances`` are sent to both predict routes (default: one row of each class); ``errors``
    are bad requests in the format of :mod:`autograder.checks.api` (default
    :data:`BASIC_ERRORS`). ``model_dir`` is the model the server loads through
    ``SERVELAB_MODEL_DIR``.
    """
    from server_stub.model import sample_instances

    folder = _folder(folder)
    app_file = _file(folder, "app.py")
    port = free_port()
    with _running(flask_command(app_file, port), port, folder.parent, model_dir) as srv:
        _check_contract(srv, instances or sample_instances(), BASIC_ERRORS if errors is None else errors, model_dir)


def worker_pids(server: ServerProcess) -> list[int]:
    """The process ids of the gunicorn master's children: its workers."""
    import psutil

    try:
        return sorted(p.pid for p in psutil.Process(server.proc.pid).children())
    except psutil.Error:
        return []


def check_gunicorn_serves(folder: str | Path = "serving", instances: list | None = None, concurrent: int = 0, model_dir=None) -> None:
    """gunicorn, with the learner's ``wsgi.py`` and ``gunicorn.conf.py``, serves the API with ``workers`` processes.

    With ``concurrent`` > 0, that many predict requests are sent at once and all must succeed.
    """
    from server_stub.model import sample_instances

    folder = _package(folder)
    _file(folder, "app.py")
    _file(folder, "wsgi.py")
    settings = _runnable_config(folder)
    instances = instances or sample_instances()
    port = free_port()
    with _running(gunicorn_command(folder.name, port), port, folder.parent, model_dir) as srv:
        _check_contract(srv, instances, [], model_dir)
        want = settings.get("workers", 1)
        workers = worker_pids(srv)
        if len(workers) != want:
            raise CheckFailed(f"gunicorn.conf.py asks for {want} workers, but the gunicorn master has {len(workers)} child processes.")
        if concurrent:
            _concurrent_predicts(srv, instances, concurrent, model_dir)


def _concurrent_predicts(srv: ServerProcess, instances: list, n: int, model_dir=None) -> None:
    expected = reference(model_dir).handle([{"body": x} for x in instances], None)
    results: list = [None] * n

    def send(i):
        with requests.Session() as session:
            session.trust_env = False
            try:
                r = session.post(srv.base_url + "/predict", json={"instances": instances}, timeout=10)
                results[i] = (r.status_code, r.json() if "json" in r.headers.get("Content-Type", "") else r.text[:200])
            except (requests.RequestException, ValueError) as exc:
                results[i] = (None, f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    for i, result in enumerate(results):
        if result is None:
            raise CheckFailed(f"of {n} predict requests sent at once, request {i} got no answer within 15 s.")
        status, body = result
        if status != 200 or not isinstance(body, dict):
            raise CheckFailed(f"of {n} predict requests sent at once, request {i} got {status} {body!r}; expected 200.")
        check_results(expected, body.get("predictions"), f"concurrent POST /predict #{i}")


def _partial_request(port: int, body: bytes, split: int) -> socket.socket:
    """Open a predict request and send all but the end of its body; return once a worker has taken it.

    ``Expect: 100-continue`` makes gunicorn answer ``100 Continue`` as soon as a worker has
    parsed the headers, which tells us the request is in that worker's hands.
    """
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    conn.sendall(head.encode())
    got = b""
    try:
        while b"\r\n\r\n" not in got:
            chunk = conn.recv(1024)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    if not got.startswith(b"HTTP/1.1 100"):
        conn.close()
        raise CheckFailed(
            f"no worker took a new request within 10 s (it answered {got[:80]!r}); are all workers busy or stuck?"
        )
    conn.sendall(body[:split])
    return conn


def _read_response(conn: socket.socket) -> tuple[int | None, str]:
    data = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        if not data:
            return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, f"no HTTP response (received {data[:80]!r})"
    return status, body.decode("utf-8", errors="replace")


def check_graceful_shutdown(folder: str | Path = "serving", in_flight: int = 1, model_dir=None) -> None:
    """After SIGTERM, gunicorn finishes the requests in flight and exits within ``graceful_timeout``.

    ``in_flight`` requests are started (each taken by a worker, its body half sent), the master
    gets SIGTERM, and the rest of each body follows :data:`IN_FLIGHT_DELAY` seconds later. Each
    must still be answered 200 with its predictions, and the master must then exit by itself.
    """
    from server_stub.model import sample_instances

    folder = _package(folder)
    _file(folder, "app.py")
    _file(folder, "wsgi.py")
    settings = _runnable_config(folder)
    grace = settings.get("graceful_timeout", 30)
    grace = grace if _number(grace) else 30
    instances = sample_instances()
    expected = reference(model_dir).handle([{"body": x} for x in instances], None)
    body = json.dumps({"instances": instances}).encode()
    port = free_port()
    with _running(gunicorn_command(folder.name, port), port, folder.parent, model_dir) as srv:
        conns = []
        try:
            for _ in range(in_flight):
                conns.append(_partial_request(port, body, len(body) // 2))
            srv.terminate()
            time.sleep(IN_FLIGHT_DELAY)
            for conn in conns:
                try:
                    conn.sendall(body[len(body) // 2:])
                except OSError:
                    pass
            answers = [_read_response(conn) for conn in conns]
        finally:
            for conn in conns:
                conn.close()
        for i, (status, text) in enumerate(answers):
            what = f"the request in flight when gunicorn got SIGTERM (#{i + 1} of {in_flight})"
            if status != 200:
                raise CheckFailed(
                    f"{what} was cut off: {'no answer' if status is None else status} ({text[:120]}). "
                    f"With graceful_timeout = {grace}, a worker should finish its request before it exits."
                    + _tail_note(srv.log_path)
                )
            try:
                predictions = json.loads(text).get("predictions")
            except (ValueError, AttributeError):
                raise CheckFailed(f"{what} was answered 200 but not with JSON: {text[:120]!r}") from None
            check_results(expected, predictions, what)
        try:
            srv.proc.wait(grace + 5)
        except subprocess.TimeoutExpired:
            raise CheckFailed(
                f"gunicorn was still running {grace + 5:g} s after SIGTERM (graceful_timeout = {grace}); "
                "it should exit once its workers are done." + _tail_note(srv.log_path)
            ) from None
        if srv.proc.returncode != 0:
            raise CheckFailed(f"after SIGTERM gunicorn exited with code {srv.proc.returncode}; expected 0." + _tail_note(srv.log_path))


# --- security group rules -------------------------------------------------------------------


def _call_all(fn, calls: list) -> list:
    """Child side: ``fn(*args)`` for each ``args``; ``{"value": ...}`` or ``{"raised": ...}`` each."""
    from autograder.isolate import describe_exception

    out = []
    for args in calls:
        try:
            out.append({"value": fn(*args)})
        except Exception as exc:  # noqa: BLE001 - the judge decides whether this was expected
            info = describe_exception(exc)
            # AddressValueError is a ValueError: judge by the classes it is an instance of.
            info["classes"] = [cls.__name__ for cls in type(exc).__mro__]
            out.append({"raised": info})
    return out


def check_inbound_rules(inbound_rules, cases: list[dict]) -> None:
    """``inbound_rules(bind_host, app_port, client_ip)`` gives each case's rules, or raises its exception.

    A case is ``{"args": [bind_host, app_port, client_ip], "expect": [rule, ...]}`` or
    ``{"args": [...], "raises": "ValueError"}``; a rule is a boto3 ``IpPermissions`` entry.
    """
    observed = run_isolated(_call_all, inbound_rules, [case["args"] for case in cases], what="your inbound_rules")
    for case, obs in zip(cases, observed):
        call = "inbound_rules(" + ", ".join(repr(a) for a in case["args"]) + ")"
        if judge_raised(obs, case, call, "inbound_rules"):
            continue
        if obs["value"] != case["expect"]:
            raise CheckFailed(f"{call} should return {json.dumps(case['expect'])}; it returned {json.dumps(obs['value'])}.")
