"""The live-server harness and the isolated runner: bounded waits, clean teardown, no stderr."""
from __future__ import annotations

import os
import threading
import time

import pytest
from flask import Flask, jsonify

from autograder.errors import CheckFailed, NotAnswered, ServerStartError, Timeout
from autograder.harness import live_server
from autograder.isolate import run_isolated


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone if its state is Z.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


def ok_app(handler, config=None):
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.get("/spawn")
    def spawn():
        import subprocess

        child = subprocess.Popen(["sleep", "600"])
        return jsonify(pid=child.pid)

    @app.get("/hang")
    def hang():
        while True:
            pass

    return app


def never_returns(handler, config=None):
    while True:
        time.sleep(0.1)


def crashes(handler, config=None):
    raise RuntimeError("boom at startup")


def unanswered(handler, config=None):
    raise NotImplementedError()


LOCK = threading.Lock()


def holds_a_lock(handler, config=None):
    with LOCK:
        return ok_app(handler)


def test_serves_on_loopback_and_stops_everything_it_started():
    with live_server(ok_app) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert srv.get("/health").json() == {"status": "ok"}
        grandchild = srv.get("/spawn").json()["pid"]
        server_pid = srv.proc.pid
        assert not gone(grandchild)
    assert gone(server_pid)
    assert gone(grandchild)


def test_a_hanging_request_fails_with_a_message_and_is_cleaned_up():
    with pytest.raises(CheckFailed, match="no answer within"):
        with live_server(ok_app) as srv:
            pid = srv.proc.pid
            srv.get("/hang", timeout=1)
    assert gone(pid)


def test_a_server_that_never_starts_fails_within_its_bound():
    with pytest.raises(ServerStartError, match="did not start within 3 s"):
        with live_server(never_returns, start_timeout=3):
            pass


def test_a_crash_on_startup_reports_the_students_error():
    with pytest.raises(ServerStartError, match="boom at startup"):
        with live_server(crashes):
            pass


def test_an_unanswered_exercise_says_so():
    with pytest.raises(NotAnswered, match="create_app raised NotImplementedError"):
        with live_server(unanswered):
            pass


def test_an_unpicklable_global_gets_an_actionable_message():
    with pytest.raises(CheckFailed, match="could not hand your create_app"):
        with live_server(holds_a_lock):
            pass


def test_no_server_output_reaches_the_callers_stderr(capfd):
    with live_server(ok_app) as srv:
        for _ in range(5):
            srv.get("/health")
        srv.get("/does-not-exist")
    out, err = capfd.readouterr()
    assert err == ""


def _loop():
    while True:
        pass


def _exit_hard():
    os._exit(3)


class AlwaysEqual:
    def __eq__(self, other):
        return True


def _forged():
    return AlwaysEqual()


def test_isolated_calls_bound_hangs_and_survive_hard_exits():
    with pytest.raises(Timeout, match="did not finish within 2 s"):
        run_isolated(_loop, timeout=2)
    with pytest.raises(CheckFailed, match="exit code 3"):
        run_isolated(_exit_hard)


def test_isolated_results_are_plain_json_so_a_forged_eq_cannot_pass():
    assert run_isolated(sorted, [3, 1, 2]) == [1, 2, 3]
    with pytest.raises(CheckFailed, match="cannot read"):
        run_isolated(_forged)
