"""autograder.checks.load (notebook 08) on the solution and on answers that are wrong in one way each."""
from __future__ import annotations

import math
import statistics

import pytest

from autograder.checks import load
from autograder.errors import CheckFailed, NotAnswered

from conftest import load_solution_module

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 4.1, 1.0], [6.7, 3.1, 5.6, 2.4]]


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    return load_solution_module("08_load_latency.ipynb", tmp_path_factory.mktemp("sol08"))


# --- percentile -----------------------------------------------------------------------------

PERCENTILE_CASES = [
    {"values": [15, 20, 35, 40, 50], "p": 40},
    {"values": [7.5], "p": 50},
    {"values": [20, 10], "p": 25},
    {"values": [9, 3, 7, 1, 5], "p": 0},
    {"values": [9, 3, 7, 1, 5], "p": 100},
    {"values": [3, 3, 3, 5], "p": 90},
    {"values": (8, 1, 6, 3), "p": 60, "as_tuple": True},
    {"values": [], "p": 50, "raises": "ValueError"},
    {"values": [1, 2], "p": 100.5, "raises": "ValueError"},
    {"values": [1, 2], "p": float("nan"), "raises": "ValueError"},
    {"values": [1, 2], "p": "50", "raises": "ValueError"},
    {"values": [1, 2], "p": True, "raises": "ValueError"},
]


def test_the_solution_percentile_passes(solution):
    load.check_percentile(solution.percentile, PERCENTILE_CASES)


def nearest_rank(values, p):
    if not values or isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(p)
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rank_over_n(values, p):
    if not values or isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(p)
    ordered = sorted(values)
    rank = min(p / 100 * len(ordered), len(ordered) - 1)
    k = int(rank)
    return ordered[k] + (rank - k) * (ordered[min(k + 1, len(ordered) - 1)] - ordered[k])


def sorts_in_place(values, p):
    if not values or isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(p)
    values.sort()
    rank = p / 100 * (len(values) - 1)
    k = int(rank)
    return values[k] + (rank - k) * (values[min(k + 1, len(values) - 1)] - values[k])


def trusts_p(values, p):
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = min(max(p / 100 * (len(ordered) - 1), 0), len(ordered) - 1)
    k = int(rank)
    return ordered[k] + (rank - k) * (ordered[min(k + 1, len(ordered) - 1)] - ordered[k])


def numpy_with_type_error(values, p):
    import numpy as np

    if not values:
        raise ValueError("no values")
    if not 0 <= p <= 100:  # a str p raises TypeError here, not ValueError
        raise ValueError(p)
    return float(np.percentile(values, p))


@pytest.mark.parametrize("wrong, message", [
    (nearest_rank, r"percentile\(\[15, 20, 35, 40, 50\], 40\) returned 20; expected 29.0. Sort the values"),
    (rank_over_n, r"returned 35.0; expected 29.0"),
    (sorts_in_place, r"percentile\(\[20, 10\], 25\) changed the list it was given \(sorted it in place\?\)"),
    (trusts_p, r"percentile\(\[1, 2\], 100.5\) should raise ValueError; it returned 2"),
    (numpy_with_type_error, r"percentile\(\[1, 2\], '50'\) raised TypeError: .*; expected ValueError"),
])
def test_a_wrong_percentile_fails_with_what_was_expected(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        load.check_percentile(wrong, PERCENTILE_CASES)


def test_an_unwritten_percentile_is_not_answered():
    def percentile(values, p):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        load.check_percentile(percentile, PERCENTILE_CASES[:1])


# --- the batch endpoint ---------------------------------------------------------------------

ERRORS = [
    {"why": "a batch of 4 (MAX_BATCH is 3)", "path": "/predict/batch", "json": {"instances": ROWS + ROWS[:1]}, "status": [413, 400]},
    {"why": "a bad value", "path": "/predict/batch", "json": {"instances": [ROWS[0], [5.1, "wide", 1.4, 0.2]]}, "status": 400, "mentions": "sepal_width"},
    {"why": "the wrong method", "method": "GET", "path": "/predict/batch", "status": 405},
]


def test_the_solution_batch_endpoint_passes(solution):
    load.check_batch_endpoint(solution.create_app, ROWS * 2 + [ROWS[1]], errors=ERRORS, config={"MAX_BATCH": 3})


def make_create_app(per_row=False, no_limit=False, html_errors=False):
    """A batch API that is right unless one of the flags breaks it in one way."""

    def create_app(handler, config=None):
        from flask import Flask, jsonify, request
        from werkzeug.exceptions import HTTPException

        from server_stub.handler import HandlerError

        app = Flask(__name__)
        app.config.update({"MAX_BATCH": 64, **(config or {})})

        if not html_errors:
            @app.errorhandler(HTTPException)
            def http_error(exc):
                return jsonify(error=exc.description), exc.code

        @app.errorhandler(HandlerError)
        def handler_error(exc):
            return jsonify(error=exc.message), exc.status

        @app.get("/health")
        def health():
            return jsonify(status="ok")

        @app.post("/predict")
        def one():
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or "instance" not in body:
                return jsonify(error="need 'instance'"), 400
            return jsonify(prediction=handler.handle([{"body": body["instance"]}], handler.context)[0])

        @app.post("/predict/batch")
        def many():
            body = request.get_json(silent=True)
            rows = body.get("instances") if isinstance(body, dict) else None
            if not isinstance(rows, list) or not rows:
                return jsonify(error="need 'instances'"), 400
            if not no_limit and len(rows) > app.config["MAX_BATCH"]:
                return jsonify(error="too many"), 413
            if per_row:
                predictions = [handler.handle([{"body": x}], handler.context)[0] for x in rows]
            else:
                predictions = handler.handle([{"body": x} for x in rows], handler.context)
            return jsonify(predictions=predictions)

        return app

    return create_app


@pytest.mark.parametrize("flags, message", [
    ({"per_row": True}, r"POST /predict/batch with 3 instances called the model on \[1, 1, 1\] rows; expected one call on all 3 rows"),
    ({"no_limit": True}, r"POST /predict/batch with a batch of 4 \(MAX_BATCH is 3\) returned 200; expected 413 or 400"),
    ({"html_errors": True}, r"GET /predict/batch with the wrong method returned 405 as expected, but the body should be JSON"),
])
def test_a_wrong_batch_endpoint_fails_with_what_went_wrong(flags, message):
    with pytest.raises(CheckFailed, match=message):
        load.check_batch_endpoint(make_create_app(**flags), ROWS, errors=ERRORS, config={"MAX_BATCH": 3})


# --- run_load -------------------------------------------------------------------------------

COUNTS = [
    {"why": "every 4th payload asks for a 503", "path": "/echo", "payloads": [{}, {}, {}, {"status": 503}],
     "concurrency": 4, "total": 20, "time_limit": 10, "expect": {"sent": 20, "ok": 15, "errors": 5}},
    {"why": "4xx answers", "path": "/echo", "payloads": [{"status": 404}, {"status": 201}, {"status": 429}, {}],
     "concurrency": 3, "total": 8, "time_limit": 10, "expect": {"sent": 8, "ok": 2, "errors": 6}},
    {"why": "nothing listens", "refused": True, "payloads": [{}], "concurrency": 2, "total": 3, "time_limit": 10,
     "expect": {"sent": 3, "ok": 0, "errors": 3}},
    {"why": "total 0", "path": "/echo", "payloads": [{}], "concurrency": 2, "total": 0, "time_limit": 5, "expect": {"sent": 0}},
    {"why": "answers take 0.2 s", "path": "/echo", "payloads": [{"delay": 0.2}], "concurrency": 3, "total": 9, "time_limit": 15,
     "expect": {"ok": 9}, "parallel": True, "min_latency": 0.2},
    {"why": "no payloads", "path": "/echo", "payloads": [], "concurrency": 2, "total": 5, "time_limit": 5, "raises": "ValueError"},
    {"why": "concurrency 0", "path": "/echo", "payloads": [{}], "concurrency": 0, "total": 5, "time_limit": 5, "raises": "ValueError"},
    {"why": "time_limit 0", "path": "/echo", "payloads": [{}], "concurrency": 2, "total": 5, "time_limit": 0, "raises": "ValueError"},
]
HANG = {"why": "the server never answers", "path": "/hang", "payloads": [{}], "concurrency": 2, "total": 8, "time_limit": 1.5,
        "expect": {"sent": 2, "ok": 0, "errors": 2}}
HANG_SHORT = {**HANG, "why": "the server never answers (0.5 s)", "time_limit": 0.5}
MIXED = {"why": "every 4th request hangs", "path": "/echo", "payloads": [{}, {}, {}, {"delay": 600}], "concurrency": 4,
         "total": 8, "time_limit": 2.0, "expect": {"sent": 8, "ok": 6, "errors": 2}}


def test_the_solution_run_load_passes(solution):
    load.check_run_load(solution.run_load, COUNTS + [HANG, MIXED])


def make_run_load(sequential=False, extra_workers=0, ok_below=None, first_payload_only=False, send_after_deadline=False,
                  abandon=False, fixed_timeout=None, no_timeout=False, millis=False, per_sent=False, no_checks=False):
    """A load generator that is right unless one of the flags breaks it in one way."""

    def run_load(url, payloads, concurrency, total, time_limit):
        import time
        from concurrent.futures import ThreadPoolExecutor

        import requests

        if not no_checks and (not payloads or not isinstance(concurrency, int) or concurrency < 1
                              or not isinstance(total, int) or total < 0 or not time_limit > 0):
            raise ValueError("bad arguments")
        started = time.perf_counter()
        deadline = started + time_limit

        def send(i):
            left = deadline - time.perf_counter()
            if left <= 0 and not send_after_deadline:
                return None
            timeout = None if no_timeout else fixed_timeout or max(left, 0.05)
            payload = payloads[0] if first_payload_only else payloads[i % len(payloads)]
            sent_at = time.perf_counter()
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    r = session.post(url, json=payload, timeout=timeout)
            except requests.RequestException:
                return False, None
            latency = time.perf_counter() - sent_at
            ok = r.status_code < ok_below if ok_below else r.status_code == 200
            return ok, 1000 * latency if millis else latency

        if sequential:
            outcomes = [send(i) for i in range(total)]
        else:
            pool = ThreadPoolExecutor(max_workers=concurrency + extra_workers)
            futures = [pool.submit(send, i) for i in range(total)]
            if abandon:  # return at the time limit, leaving requests that still hang to their threads
                outcomes = []
                for future in futures:
                    try:
                        outcomes.append(future.result(timeout=max(0.0, deadline - time.perf_counter()) + 0.1))
                    except Exception:  # noqa: BLE001 - a request still running counts as an error
                        outcomes.append((False, None))
                pool.shutdown(wait=False, cancel_futures=True)
            else:
                outcomes = [future.result() for future in futures]
                pool.shutdown()
        elapsed = time.perf_counter() - started
        done = [o for o in outcomes if o is not None]
        latencies = [t for ok, t in done if ok]
        rate = (len(done) if per_sent else len(latencies)) / elapsed if elapsed > 0 else 0.0
        return {"sent": len(done), "ok": len(latencies), "errors": len(done) - len(latencies),
                "latencies": latencies, "elapsed": elapsed, "throughput": rate}

    return run_load


def test_the_run_load_double_is_right_when_no_flag_is_set():
    load.check_run_load(make_run_load(), COUNTS[:1] + COUNTS[4:5] + [HANG])


@pytest.mark.parametrize("flags, cases, message", [
    ({"sequential": True}, COUNTS[4:5], "the server never saw more than one request at a time"),
    ({"extra_workers": 3}, COUNTS[4:5], r"the server saw [4-6] requests open at once; at most concurrency=3"),
    ({"ok_below": 500}, COUNTS[1:2], r"expected ok=2\. Only a 200 answer is ok"),
    ({"first_payload_only": True}, COUNTS[:1], r"reported \{'sent': 20, 'ok': 20, 'errors': 0\}; expected ok=15"),
    ({"send_after_deadline": True}, [HANG], r"reported \{'sent': 8, 'ok': 0, 'errors': 8\}; expected sent=2. .*start no new one"),
    ({"millis": True}, COUNTS[4:5], r"a latency of 2\d\d\.\d+ s is not possible"),
    ({"per_sent": True}, COUNTS[:1], r"'throughput' should be ok / elapsed"),
    ({"no_checks": True}, COUNTS[5:6], r"raised ZeroDivisionError: .*; expected ValueError"),
    ({"no_checks": True}, COUNTS[7:8], r"should raise ValueError; it returned \{\"sent\": 0"),
])
def test_a_wrong_load_generator_fails_with_what_went_wrong(flags, cases, message):
    with pytest.raises(CheckFailed, match=message):
        load.check_run_load(make_run_load(**flags), cases)


def test_a_load_generator_that_leaves_requests_running_fails():
    with pytest.raises(CheckFailed, match=r"2 thread\(s\) were still running 1 s after run_load returned"):
        load.check_run_load(make_run_load(abandon=True, fixed_timeout=4), [HANG])


def test_a_load_generator_that_outlives_its_time_limit_fails(monkeypatch):
    monkeypatch.setattr(load, "SLACK", 1.0)
    with pytest.raises(CheckFailed, match=r"took [2-9]\.\d s to return; it should stop at its time limit \(0.5 s"):
        load.check_run_load(make_run_load(fixed_timeout=2), [HANG_SHORT])


def test_a_load_generator_without_timeouts_is_stopped_and_named(monkeypatch):
    monkeypatch.setattr(load, "SLACK", 1.0)
    monkeypatch.setattr(load, "GRACE", 0.25)
    monkeypatch.setattr(load, "CHILD_OVERHEAD", 3.0)
    with pytest.raises(CheckFailed, match=r"\[the server never answers \(0.5 s\)\] did not return \(the check gave up after 5 s\)"):
        load.check_run_load(make_run_load(no_timeout=True), [HANG_SHORT])


def test_an_unwritten_load_generator_is_not_answered():
    def run_load(url, payloads, concurrency, total, time_limit):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        load.check_run_load(run_load, COUNTS[:1])


# --- the test server and the server commands ------------------------------------------------


def test_the_target_server_counts_what_it_receives_and_answers_the_asked_status():
    import requests

    with load.target_server() as server, requests.Session() as http:
        http.trust_env = False
        statuses = [http.post(server.url("/echo"), json=body, timeout=5).status_code for body in ({}, {"status": 503}, {"status": 404})]
        assert statuses == [200, 503, 404]
        with pytest.raises(requests.Timeout):
            http.post(server.url("/hang"), json={}, timeout=0.3)
        stats = server.stats(reset=True)
        assert (stats["received"], stats["answered"], stats["max_in_flight"]) == (4, {"200": 1, "503": 1, "404": 1}, 1)
        assert server.stats()["received"] == 0


def test_server_commands_listen_on_loopback_only(tmp_path):
    for kind in ("flask", "gunicorn"):
        command = load.server_command(kind, tmp_path / "app.pkl", 8123, workers=3)
        assert "127.0.0.1" in " ".join(command) and "0.0.0.0" not in " ".join(command)
    assert command[command.index("--workers") + 1] == "3"
    with pytest.raises(ValueError, match="kind must be"):
        load.server_command("uvicorn", tmp_path / "app.pkl", 8123)


def test_latency_summaries_agree_with_the_statistics_module(solution):
    values = [0.004, 0.005, 0.0052, 0.006, 0.04]
    assert math.isclose(solution.percentile(values, 50), statistics.median(values))
