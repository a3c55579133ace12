"""Start a student's Flask app as a real HTTP server on loopback, talk to it, stop it.

::

    with live_server(create_app) as server:
        r = server.post("/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})

The app runs in its own process (``python -m server_stub.runner``) on a port the OS picks
on 127.0.0.1. Its log goes to a file, never to the notebook's stderr (nbgrader scores any
stderr in a test cell as a failure). Every wait is bounded, and on exit the process and
everything it started are stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from autograder.errors import CheckFailed, NotAnswered, ServerStartError
from autograder.isolate import dump_payload, log_tail, spawn, stop_process

START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 5.0
# While grading, the grader's read-only copy of the course model (autograder.grade.sandbox).
DEFAULT_MODEL_DIR = Path(os.environ.get("SERVELAB_GRADER_MODEL") or Path(tempfile.gettempdir()) / "servelab-model")


class LiveServer:
    """A running server. ``get``/``post``/``request`` never wait more than ``REQUEST_TIMEOUT``."""

    def __init__(self, base_url: str, proc: subprocess.Popen, log_path: Path):
        self.base_url = base_url
        self.proc = proc
        self.log_path = log_path
        self.session = requests.Session()
        # A proxy from the environment must never see loopback test traffic.
        self.session.trust_env = False

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        try:
            return self.session.request(method, self.base_url + path, **kwargs)
        except requests.Timeout:
            raise CheckFailed(
                f"{method} {path} got no answer within {kwargs['timeout']:g} s; the server hangs on this request."
            ) from None
        except requests.ConnectionError:
            state = "the server process has exited" if self.proc.poll() is not None else "the connection failed"
            raise CheckFailed(f"{method} {path}: {state}.{self._tail()}") from None

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def _tail(self) -> str:
        tail = log_tail(self.log_path)
        return f"\nServer log (last lines):\n{tail}" if tail else ""


@contextmanager
def live_server(
    create_app=None,
    handler_class=None,
    model_dir=None,
    config=None,
    start_timeout: float = START_TIMEOUT,
    source: str | Path | None = None,
):
    """Serve ``create_app(handler[, config])`` in a separate process; yield a :class:`LiveServer`.

    Give either ``create_app`` (a function, e.g. from a notebook, sent with cloudpickle) or
    ``source``, a ``.py`` file defining it (see :mod:`autograder.extract`), imported only by the
    server process. ``handler_class`` defaults to the finished ``IrisHandler``; ``model_dir``
    to a shared temporary copy of the course model. Raises :class:`ServerStartError` when the
    app cannot be built or does not accept connections within ``start_timeout`` seconds.
    """
    from server_stub.model import ensure_model

    model_dir = ensure_model(model_dir or DEFAULT_MODEL_DIR).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="servelab-srv-"))
    proc = None
    try:
        ready = workdir / "port"
        args = ["-m", "server_stub.runner", "--port", "0", "--ready-file", str(ready), "--model-dir", str(model_dir)]
        if source is not None:
            args += ["--source", str(Path(source).resolve())]
            if config is not None:
                args += ["--config", json.dumps(config)]
        else:
            if handler_class is None:
                from server_stub.iris_handler import IrisHandler as handler_class
            payload = {"create_app": create_app, "handler_class": handler_class, "model_dir": str(model_dir)}
            if config is not None:
                payload["config"] = config
            dump_payload(payload, workdir / "app.pkl", "your create_app")
            args += ["--pickled", "app.pkl"]
        log_path = workdir / "server.log"
        proc = spawn(args, workdir, log_path)
        port = _wait_ready(proc, ready, log_path, start_timeout)
        server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            yield server
        finally:
            server.session.close()
    finally:
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen, ready: Path, log_path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return int(ready.read_text())
        if proc.poll() is not None:
            tail = log_tail(log_path)
            if tail.rstrip().endswith("NotImplementedError"):
                raise NotAnswered("create_app raised NotImplementedError: write it, then run its cell again.")
            raise ServerStartError(
                f"the server process exited (code {proc.returncode}) before it started serving."
                + (f" Its last output:\n{tail}" if tail else "")
            )
        time.sleep(0.05)
    raise ServerStartError(f"the server did not start within {timeout:g} s (does create_app block or loop?).")
