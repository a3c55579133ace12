"""Checks and tools for notebook 08: performance under load.

Three things are graded, all on correctness, never on speed:

``percentile(values, p)``
    the p-th percentile with linear interpolation, as ``numpy.percentile`` computes it by
    default. :func:`check_percentile` calls it in a child process on grader-chosen cases and
    compares with numpy.

``create_app(handler, config=None)``
    an API with ``POST /predict`` (one instance) and ``POST /predict/batch`` (many).
    :func:`check_batch_endpoint` serves it on loopback with a handler that logs every model
    call, and checks that the batch answers equal the single-row ones, that a batch is one
    model call, and that bad requests get a 4xx JSON error.

``run_load(url, payloads, concurrency, total, time_limit)``
    a bounded load generator. :func:`check_run_load` runs it in a child process against the
    grader's own test server (:func:`target_server`, on 127.0.0.1), whose ``/echo`` route answers
    with the status a payload asks for, after the delay it asks for, and whose ``/hang`` route
    never answers. The server counts what it receives and how many requests are open at once.

The notebook also uses :func:`start_server` to put the same ``create_app`` behind Flask's
development server and behind gunicorn (through :mod:`server_stub.load_wsgi`).
"""
from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from autograder.checks.handler import check_results, reference
from autograder.errors import CheckFailed, NotAnswered, Timeout
from autograder.harness import DEFAULT_MODEL_DIR, live_server
from autograder.isolate import describe_exception, dump_payload, judge_raised, log_tail, run_isolated, spawn, stop_process
from server_stub.iris_handler import IrisHandler

DEFAULT_MAX_BATCH = 64
# How much longer than its own time_limit run_load may take before the check calls it a hang.
SLACK = 10.0
# How long the check waits, after run_load returns, for threads and open requests to go away.
GRACE = 1.0
# Time a child process may take beyond its runs (starting Python, importing the student's code).
CHILD_OVERHEAD = 20.0
# The test server's /hang route (and a payload's "delay") never waits longer than this.
HANG_SECONDS = 120.0
CALLS_LOG = "model_calls.log"
RESULT_KEYS = ("sent", "ok", "errors", "latencies", "elapsed", "throughput")


def _plain(value, depth: int = 0):
    """``value`` as JSON data: numpy scalars unwrapped, non-finite floats and other objects as text."""
    if depth > 20:
        return repr(value)[:80]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict, tuple)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return repr(value)[:80]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"nonfinite": repr(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return {"object": type(value).__name__, "repr": repr(value)[:80]}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _raised(exc: BaseException) -> dict:
    return {**describe_exception(exc), "classes": [c.__name__ for c in type(exc).__mro__]}


def _short(values, limit: int = 8) -> str:
    if len(values) <= limit:
        return repr(list(values)) if isinstance(values, list) else repr(values)
    return f"[{len(values)} values]"


# --- percentile -----------------------------------------------------------------------------


def _percentile_child(percentile, cases: list) -> list:
    """Child side: call ``percentile`` on each case; record its value or exception, and whether the input changed."""
    out = []
    for case in cases:
        arg = tuple(case["values"]) if case.get("as_tuple") else list(case["values"])
        before = list(arg)
        try:
            obs = {"value": _plain(percentile(arg, case["p"]))}
        except Exception as exc:  # noqa: BLE001 - the judge decides whether this was expected
            obs = {"raised": _raised(exc)}
        obs["changed"] = list(arg) != before
        out.append(obs)
    return out


def check_percentile(percentile, cases: list) -> None:
    """``percentile(values, p)`` equals ``numpy.percentile(values, p)`` (linear interpolation).

    A case is ``{"values": [...], "p": 90}`` (optionally ``"as_tuple": True`` to pass a
    tuple), or ``{"values": [...], "p": ..., "raises": "ValueError"}``. The function must
    return a number and must not change the sequence it was given.
    """
    import numpy as np

    observed = run_isolated(_percentile_child, percentile, cases, timeout=60, what="your percentile")
    for case, obs in zip(cases, observed):
        call = f"percentile({_short(case['values'])}, {case['p']!r})"
        if judge_raised(obs, case, call, "percentile"):
            continue
        want = float(np.percentile(case["values"], case["p"]))
        got = obs["value"]
        if not _number(got):
            raise CheckFailed(f"{call} should return a number ({want!r}); it returned {got!r}.")
        if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
            raise CheckFailed(
                f"{call} returned {got!r}; expected {want!r}. Sort the values, take the rank "
                "p/100 * (n - 1), and interpolate linearly between the two values around it."
            )
        if obs["changed"]:
            raise CheckFailed(f"{call} changed the list it was given (sorted it in place?); sort a copy with sorted().")


# --- the batch endpoint ---------------------------------------------------------------------


class CountingHandler(IrisHandler):
    """The finished handler, plus a log of every model call: one line per call with its row count.

    The log is ``<model_dir>/model_calls.log``, so a check gives each server its own copy of
    the model directory.
    """

    def initialize(self, context) -> None:
        super().initialize(context)
        log = Path(context.model_dir) / CALLS_LOG
        lock = threading.Lock()

        def counted(method):
            def call(x, *args, **kwargs):
                with lock, open(log, "a") as f:
                    f.write(f"{len(x)}\n")
                return method(x, *args, **kwargs)

            return call

        # Instance attributes win over the Pipeline's methods, whatever path reaches the model.
        self.model.predict_proba = counted(self.model.predict_proba)
        self.model.predict = counted(self.model.predict)


def _model_calls(model_dir: Path) -> list[int]:
    try:
        return [int(line) for line in (model_dir / CALLS_LOG).read_text().split()]
    except OSError:
        return []


def _describe(method: str, path: str, r) -> str:
    body = r.text if len(r.text) <= 200 else r.text[:200] + "..."
    return f"{method} {path} returned {r.status_code} with body {body!r}"


def _json_or_none(r):
    if "json" not in r.headers.get("Content-Type", ""):
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _expect_error(srv, case: dict) -> None:
    """The request in ``case`` gets its status (an int, or a list of allowed ones) and a JSON error."""
    method, path = case.get("method", "POST"), case["path"]
    allowed = case["status"] if isinstance(case["status"], list) else [case["status"]]
    kwargs = {k: case[k] for k in ("json", "data", "headers") if k in case}
    r = srv.request(method, path, **kwargs)
    what = f"{method} {path} with {case['why']}"
    expected = " or ".join(str(s) for s in allowed)
    if r.status_code not in allowed:
        raise CheckFailed(f"{what} returned {r.status_code}; expected {expected} with a JSON error. Body: {r.text[:200]!r}")
    body = _json_or_none(r)
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"].strip():
        raise CheckFailed(
            f"{what} returned {r.status_code} as expected, but the body should be JSON {{\"error\": \"<message>\"}}; "
            f"it was {r.text[:200]!r} ({r.headers.get('Content-Type', 'no Content-Type')})."
        )
    mentions = case.get("mentions")
    if mentions and mentions.lower() not in body["error"].lower():
        raise CheckFailed(f"{what}: the error message should name {mentions!r}; it was {body['error']!r}.")


def _same(a, b) -> bool:
    return (
        isinstance(a, dict) and isinstance(b, dict) and a.get("label") == b.get("label")
        and _number(a.get("confidence")) and _number(b.get("confidence"))
        and math.isclose(a["confidence"], b["confidence"], rel_tol=1e-9, abs_tol=1e-9)
    )


def check_batch_endpoint(create_app, instances: list, errors: list = (), config=None, model_dir=None) -> None:
    """``POST /predict/batch`` answers like ``POST /predict`` row by row, with one model call per batch.

    Each of ``instances`` is sent alone as ``{"instance": x}`` to ``/predict`` (200
    ``{"prediction": {...}}``), then all of them as ``{"instances": [...]}`` to
    ``/predict/batch`` in requests of at most ``MAX_BATCH`` (200 ``{"predictions": [...]}``).
    Every answer must equal the finished handler's, each batch answer must equal the single
    one, and each batch must reach the model in one call on all its rows. Then each case of
    ``errors`` (see :func:`_expect_error`; ``status`` may be a list) must get its 4xx JSON
    error, and ``GET /health`` must still answer 200. ``config`` is passed to ``create_app``.
    """
    from server_stub.model import ensure_model

    source = ensure_model(model_dir or DEFAULT_MODEL_DIR).resolve()
    expected = reference(source).handle([{"body": x} for x in instances], None) if instances else []
    limit = (config or {}).get("MAX_BATCH", DEFAULT_MAX_BATCH)
    workdir = Path(tempfile.mkdtemp(prefix="servelab-load-"))
    try:
        model = workdir / "model"
        shutil.copytree(source, model)
        with live_server(create_app, handler_class=CountingHandler, model_dir=model, config=config) as srv:
            singles = []
            for x in instances:
                r = srv.post("/predict", json={"instance": x})
                body = _json_or_none(r)
                if r.status_code != 200 or not isinstance(body, dict) or "prediction" not in body:
                    raise CheckFailed(
                        f"{_describe('POST', '/predict', r)} for the body {json.dumps({'instance': x})}; "
                        "expected 200 with {\"prediction\": {\"label\": ..., \"confidence\": ...}}."
                    )
                singles.append(body["prediction"])
            check_results(expected, singles, "POST /predict, one request per instance,")
            for start in range(0, len(instances), limit):
                chunk = instances[start:start + limit]
                before = len(_model_calls(model))
                r = srv.post("/predict/batch", json={"instances": chunk})
                body = _json_or_none(r)
                what = f"POST /predict/batch with {len(chunk)} instances"
                if r.status_code != 200 or not isinstance(body, dict) or "predictions" not in body:
                    raise CheckFailed(f"{_describe('POST', '/predict/batch', r)} ({len(chunk)} instances); expected 200 with {{\"predictions\": [...]}}.")
                check_results(expected[start:start + len(chunk)], body["predictions"], what)
                for i, (one, many) in enumerate(zip(singles[start:], body["predictions"])):
                    if not _same(one, many):
                        raise CheckFailed(f"{what}: prediction {i} is {many!r}, but POST /predict answered {one!r} for the same instance.")
                calls = _model_calls(model)[before:]
                if len(chunk) not in calls:
                    raise CheckFailed(
                        f"{what} called the model on {calls} rows; expected one call on all {len(chunk)} rows. "
                        "Pass the whole list to handler.handle(...) once: that is what makes batching cheaper."
                    )
            for case in errors:
                _expect_error(srv, case)
            r = srv.get("/health")
            if r.status_code != 200:
                raise CheckFailed(f"after these requests, {_describe('GET', '/health', r)}; expected 200.")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- the grader's test server ---------------------------------------------------------------


def _target_handler():
    from http.server import BaseHTTPRequestHandler
    import select
    import socket
    from urllib.parse import parse_qs, urlsplit

    class Handler(BaseHTTPRequestHandler):
        """``POST /echo`` answers the payload's ``status`` after its ``delay``; ``POST /hang`` never answers."""

        server_version = "servelab-load-test"

        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass

        def _done(self) -> None:
            """This POST is no longer in flight (called once, before its answer is written)."""
            if getattr(self, "_open", False):
                self._open = False
                state = self.server.state
                with state["lock"]:
                    state["in_flight"] -= 1

        def _send(self, status: int, doc: dict, count: bool = True) -> None:
            """Answer ``doc`` as JSON; ``count`` it among the answers (not for the GET routes)."""
            if count:
                state = self.server.state
                with state["lock"]:
                    state["answered"][str(status)] = state["answered"].get(str(status), 0) + 1
            # Before the answer leaves: a client may send its next request as soon as it has it.
            self._done()
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _wait(self, seconds: float) -> bool:
            """Wait ``seconds``; False as soon as the client has closed its connection."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable:
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            return False
                    except OSError:
                        return False
                    time.sleep(0.05)
            return True

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/health":
                return self._send(200, {"status": "ok"}, count=False)
            if url.path != "/stats":
                return self._send(404, {"error": f"no route {url.path}"}, count=False)
            state = self.server.state
            with state["lock"]:
                doc = {k: state[k] for k in ("received", "in_flight", "max_in_flight", "answered")}
                doc = json.loads(json.dumps(doc))
                if parse_qs(url.query).get("reset"):
                    state.update(received=0, max_in_flight=state["in_flight"], answered={})
            self._send(200, doc, count=False)

        def do_POST(self):
            state = self.server.state
            with state["lock"]:
                state["received"] += 1
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            self._open = True
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length > 0 else b""
                path = urlsplit(self.path).path
                if path == "/hang":
                    self._wait(HANG_SECONDS)
                    return
                if path != "/echo":
                    return self._send(404, {"error": f"no route {path}"})
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    return self._send(400, {"error": "the body is not JSON"})
                body = body if isinstance(body, dict) else {}
                status, delay = body.get("status", 200), body.get("delay", 0)
                if not isinstance(status, int) or not 200 <= status <= 599:
                    status = 400
                if _number(delay) and delay > 0 and not self._wait(min(float(delay), HANG_SECONDS)):
                    return
                self._send(status, {"status": status, "echo": body})
            finally:
                self._done()

    return Handler


def serve_target(ready_file: str, port: int = 0) -> None:
    """Run the test server on 127.0.0.1 until killed; write the bound port to ``ready_file``."""
    import os
    from http.server import ThreadingHTTPServer

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", port), _target_handler())
    server.state = {"lock": threading.Lock(), "received": 0, "in_flight": 0, "max_in_flight": 0, "answered": {}}
    tmp = ready_file + ".tmp"
    Path(tmp).write_text(str(server.server_address[1]))
    os.replace(tmp, ready_file)
    server.serve_forever(poll_interval=0.1)


class TargetServer:
    """The running test server: ``base_url``, ``url(path)`` and ``stats(reset=False)``."""

    def __init__(self, base_url: str, proc, log_path: Path):
        self.base_url = base_url
        self.proc = proc
        self.log_path = log_path

    def url(self, path: str) -> str:
        return self.base_url + path

    def stats(self, reset: bool = False) -> dict:
        return _get_json(self.base_url + "/stats" + ("?reset=1" if reset else ""))


def _get_json(url: str) -> dict:
    """GET ``url`` with the standard library, never through a proxy."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return json.loads(r.read())


@contextmanager
def target_server(start_timeout: float = 30.0):
    """Start the grader's test server in its own process on 127.0.0.1; yield a :class:`TargetServer`.

    Routes: ``POST /echo`` answers ``{"status": s}`` with status ``s`` (the payload's
    ``"status"``, default 200) after the payload's ``"delay"`` seconds (default 0);
    ``POST /hang`` never answers; ``GET /stats[?reset=1]`` gives ``received`` (POSTs),
    ``in_flight`` (open now), ``max_in_flight`` and ``answered`` (count by status).
    A request whose client goes away stops being in flight.
    """
    workdir = Path(tempfile.mkdtemp(prefix="servelab-loadsrv-"))
    proc = None
    try:
        ready = workdir / "port"
        log_path = workdir / "server.log"
        proc = spawn(["-m", "autograder.checks.load", "--ready-file", str(ready)], workdir, log_path)
        deadline = time.monotonic() + start_timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"the grader's test server did not start.\n{log_tail(log_path)}")
            time.sleep(0.02)
        yield TargetServer(f"http://127.0.0.1:{int(ready.read_text())}", proc, log_path)
    finally:
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# --- run_load -------------------------------------------------------------------------------


def _run_load_child(run_load, runs: list, progress: str) -> list:
    """Child side: call ``run_load`` once per run, and record what each call left behind.

    Before each call the index of the run is appended to the file ``progress``, so that the
    judge can name the run that never returned.
    """
    outcomes = []
    for index, run in enumerate(runs):
        with open(progress, "a") as f:
            f.write(f"{index}\n")
        stats_url = run["stats_url"]
        if stats_url:
            _get_json(stats_url + "?reset=1")
        before = set(threading.enumerate())
        started = time.perf_counter()
        try:
            value = run_load(run["url"], run["payloads"], run["concurrency"], run["total"], run["time_limit"])
            outcome = {"returned": _plain(value)}
        except Exception as exc:  # noqa: BLE001 - the judge decides whether this was expected
            outcome = {"raised": _raised(exc)}
        outcome["wall"] = time.perf_counter() - started
        deadline = time.monotonic() + GRACE
        while True:
            extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
            if not extra or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        outcome["threads"] = [t.name for t in extra]
        if stats_url:
            deadline = time.monotonic() + GRACE
            while True:
                stats = _get_json(stats_url)
                if stats["in_flight"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            outcome["stats"] = stats
        outcomes.append(outcome)
    return outcomes


def _call_text(case: dict) -> str:
    payloads = case["payloads"]
    shown = json.dumps(payloads) if len(json.dumps(payloads)) <= 120 else f"[{len(payloads)} payloads]"
    where = "a port nothing listens on" if case.get("refused") else case.get("path", "/echo")
    return (
        f"run_load(<{where}>, {shown}, concurrency={case['concurrency']!r}, total={case['total']!r}, "
        f"time_limit={case['time_limit']!r}) [{case['why']}]"
    )


def check_run_load(run_load, cases: list) -> None:
    """``run_load`` sends what it is asked to, counts exactly, and stops within its time limit.

    A case::

        {"why": "every 4th request fails", "path": "/echo", "payloads": [{}, {}, {}, {"status": 503}],
         "concurrency": 4, "total": 20, "time_limit": 10, "expect": {"sent": 20, "ok": 15, "errors": 5}}

    ``path`` is a route of :func:`target_server` (``"/echo"`` or ``"/hang"``); ``"refused": True``
    targets a port where nothing listens instead. Optional: ``expect`` (exact counts),
    ``parallel`` (the server must see at least 2 requests at once), ``min_latency`` (every
    latency at least this), ``raises`` (an exception name, e.g. for invalid arguments).

    Every run must also: return within ``time_limit`` + :data:`SLACK` seconds; leave no thread
    running and no request open; report ``sent == ok + errors`` with ``sent`` equal to what the
    server received; never have more than ``concurrency`` requests open at once; give one
    latency per successful request; and report ``throughput == ok / elapsed``. The cases run
    one after another in one child process; the first that fails is reported.
    """
    from autograder.checks.serving import free_port

    with target_server() as server:
        runs = []
        for case in cases:
            if case.get("refused"):
                url, stats_url = f"http://127.0.0.1:{free_port()}/echo", None
            else:
                url, stats_url = server.url(case.get("path", "/echo")), server.url("/stats")
            runs.append({"url": url, "stats_url": stats_url, **{k: case[k] for k in ("payloads", "concurrency", "total", "time_limit")}})
        limits = [c["time_limit"] if _number(c["time_limit"]) and 0 < c["time_limit"] < 3600 else 1 for c in cases]
        timeout = sum(limit + SLACK + 2 * GRACE for limit in limits) + CHILD_OVERHEAD
        workdir = Path(tempfile.mkdtemp(prefix="servelab-loadrun-"))
        progress = workdir / "progress"
        try:
            observed = run_isolated(_run_load_child, run_load, runs, str(progress), timeout=timeout, what="your run_load")
        except Timeout:
            started = progress.read_text().split() if progress.exists() else []
            case = cases[int(started[-1])] if started else cases[0]
            raise CheckFailed(
                f"{_call_text(case)} did not return (the check gave up after {timeout:g} s). Give every request a "
                "timeout no longer than the time left, and start no request once the time limit has passed."
            ) from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    for case, obs in zip(cases, observed):
        _judge_run(case, obs)


def _judge_run(case: dict, obs: dict) -> None:
    call = _call_text(case)
    if "raised" in obs:
        r = obs["raised"]
        if r["type"] == "NotImplementedError":
            raise NotAnswered("run_load raised NotImplementedError: write it, then run its cell again.")
        if "raises" in case and case["raises"] in r["classes"]:
            return
        expected = f"; expected {case['raises']}" if "raises" in case else ""
        raise CheckFailed(f"{call} raised {r['type']}: {r['message']}{expected}.")
    result = obs["returned"]
    if "raises" in case:
        raise CheckFailed(f"{call} should raise {case['raises']}; it returned {json.dumps(result)[:200]}.")
    if not isinstance(result, dict) or any(k not in result for k in RESULT_KEYS):
        raise CheckFailed(f"{call} should return a dict with the keys {list(RESULT_KEYS)}; it returned {json.dumps(result)[:200]}.")
    limit = case["time_limit"]
    if obs["wall"] > limit + SLACK:
        raise CheckFailed(
            f"{call} took {obs['wall']:.1f} s to return; it should stop at its time limit ({limit:g} s, we allow "
            f"{SLACK:g} s more). Give every request a timeout no longer than the time left."
        )
    if obs["threads"]:
        raise CheckFailed(
            f"{call}: {len(obs['threads'])} thread(s) were still running {GRACE:g} s after run_load returned "
            f"({', '.join(obs['threads'][:4])}). Return only after every request has finished: a `with "
            "ThreadPoolExecutor(...)` block waits for its threads, and per-request timeouts make sure they end."
        )
    stats = obs.get("stats")
    if stats and stats["in_flight"]:
        raise CheckFailed(f"{call}: {stats['in_flight']} request(s) were still open on the server after run_load returned.")
    counts = {k: result[k] for k in ("sent", "ok", "errors")}
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckFailed(f"{call}: {key!r} should be a count (an int, 0 or more); it is {value!r}.")
    if counts["sent"] != counts["ok"] + counts["errors"]:
        raise CheckFailed(f"{call} reported {counts}; every request sent is either ok or an error, so sent should be ok + errors.")
    if counts["sent"] > case["total"]:
        raise CheckFailed(f"{call} reported sent={counts['sent']}, more than total={case['total']}.")
    for key, want in case.get("expect", {}).items():
        if counts[key] != want:
            hint = {
                "sent": " Send exactly `total` requests, unless the time limit passes first: then start no new one.",
                "ok": " Only a 200 answer is ok.",
                "errors": " Any other status, a timeout or a connection error is an error.",
            }[key]
            raise CheckFailed(f"{call} reported {counts}; expected {key}={want}.{hint}")
    if stats is not None:
        # A request given almost no time before the limit may time out before the server reads
        # it, so only runs with an exact expected count must match the server to the request.
        received, sent = stats["received"], counts["sent"]
        if "sent" in case.get("expect", {}):
            honest = received == sent
        else:
            honest = received <= sent <= received + case["concurrency"]
        if not honest:
            raise CheckFailed(
                f"{call} reported sent={counts['sent']}, but the server received {stats['received']} requests. "
                "The i-th request should POST payloads[i % len(payloads)] as JSON to url."
            )
        if stats["max_in_flight"] > case["concurrency"]:
            raise CheckFailed(f"{call}: the server saw {stats['max_in_flight']} requests open at once; at most concurrency={case['concurrency']} may be.")
        if case.get("parallel") and stats["max_in_flight"] < 2:
            raise CheckFailed(
                f"{call}: the server never saw more than one request at a time; with concurrency={case['concurrency']}, "
                "up to that many requests should be in flight at once (a ThreadPoolExecutor with max_workers=concurrency)."
            )
    latencies, elapsed, throughput = result["latencies"], result["elapsed"], result["throughput"]
    if not _number(elapsed) or elapsed < 0 or elapsed > obs["wall"] + 0.05:
        raise CheckFailed(f"{call}: 'elapsed' should be the run's wall-clock time in seconds (about {obs['wall']:.2f}); it is {elapsed!r}.")
    if not isinstance(latencies, list) or len(latencies) != counts["ok"]:
        size = len(latencies) if isinstance(latencies, list) else type(latencies).__name__
        raise CheckFailed(f"{call}: 'latencies' should be a list with one entry (seconds) per ok request ({counts['ok']}); it has {size}.")
    for value in latencies:
        if not _number(value) or value < 0 or value > elapsed + 0.05:
            raise CheckFailed(f"{call}: a latency of {value!r} s is not possible in a run of {elapsed:.3f} s; measure each request with time.perf_counter().")
        if value < case.get("min_latency", 0):
            raise CheckFailed(
                f"{call}: a latency of {value:.3f} s, but the server waited {case['min_latency']} s before answering "
                "each request; time each request from just before it is sent until its answer is read."
            )
    want = counts["ok"] / elapsed if elapsed > 0 else 0.0
    if not _number(throughput) or not math.isclose(throughput, want, rel_tol=1e-6, abs_tol=1e-6):
        raise CheckFailed(f"{call}: 'throughput' should be ok / elapsed = {want:.3f} requests per second; it is {throughput!r}.")


# --- serving one app under two servers (for the notebook) ------------------------------------


def write_app_payload(create_app, path: str | Path, model_dir: str | Path, config=None, handler_class=None) -> Path:
    """Write the file :func:`server_stub.load_wsgi.app_from` reads: ``create_app`` and how to build it."""
    from server_stub.model import ensure_model

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "create_app": create_app,
        "handler_class": handler_class or IrisHandler,
        "model_dir": str(ensure_model(model_dir).resolve()),
    }
    if config is not None:
        payload["config"] = config
    dump_payload(payload, path, "your create_app")
    return path


def server_command(kind: str, payload_path: str | Path, port: int, workers: int = 2) -> list[str]:
    """The command that serves the app in ``payload_path`` on 127.0.0.1:``port``.

    ``kind`` is ``"flask"`` (the development server, ``flask run``) or ``"gunicorn"`` (with
    ``workers`` sync worker processes, as in notebook 06).
    """
    spec = f"server_stub.load_wsgi:app_from({json.dumps(str(payload_path))})"
    if kind == "flask":
        return [sys.executable, "-m", "flask", "--app", spec, "run", "--host", "127.0.0.1", "--port", str(port)]
    if kind == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
            "--no-control-socket", "--graceful-timeout", "5", spec,
        ]
    raise ValueError(f"kind must be 'flask' or 'gunicorn', got {kind!r}")


def start_server(create_app, kind: str, model_dir, workdir: str | Path = "loadtest", workers: int = 2, config=None):
    """Serve ``create_app`` with Flask's development server or gunicorn; return the running server.

    The server runs in its own process on a free port of 127.0.0.1, in ``workdir`` (which
    holds the app file and ``<kind>.log``). Use the result as a context manager, or call its
    ``stop()``. Its ``name`` is ``kind``, and its ``command`` the command line it was started
    with (see :func:`server_command`).
    """
    from autograder.checks.serving import free_port, start

    workdir = Path(workdir).resolve()
    payload = write_app_payload(create_app, workdir / "app.pkl", model_dir, config)
    port = free_port()
    command = server_command(kind, payload, port, workers)
    server = start(command, port, cwd=workdir, log_path=workdir / f"{kind}.log", model_dir=model_dir)
    server.name = kind
    server.command = " ".join(shlex.quote(part) for part in [kind, *command[3:]])
    return server


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m autograder.checks.load", description="the load-test server")
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve_target(args.ready_file, args.port)
