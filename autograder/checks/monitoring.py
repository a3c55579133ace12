"""Checks for notebook 09: monitoring a serving app, and detecting drift in what it receives.

Monitoring. The app under test is ``create_app(handler, config)`` with ``POST /predict``,
``GET /health`` and ``GET /metrics``; ``config["PREDICTION_LOG"]`` names its prediction log.
The checks serve it with :func:`autograder.harness.live_server` (its own process, on
loopback), send it a *plan*: a list of steps, each one of

- ``{"predict": [instance, ...], "request_id": "r-1" or None}``: a valid request, expects 200;
- an error case in the form of :mod:`autograder.checks.api` (``{"why", "path", "json" or
  "data", "headers", "status"}``): a bad request, expects that 4xx status and a JSON error;
- ``{"get": "/health"}``: a request that is not a prediction (expects 200);
- ``{"scrape": True}``: read ``GET /metrics`` and compare the counts with what was sent so far.

and judge the exposition text (parsed with ``prometheus_client.parser``) or the log file,
read from disk. :func:`plan` builds plans. The server process builds the app twice
(:class:`TwoApps`): after the plan, a second app gets requests of its own, which must not
show in the first app's metrics or log.

Drift. ``psi(reference, current, cuts)`` and ``detect_drift(reference, current, ...)`` run
in a child process (:func:`autograder.isolate.run_isolated`); the judge compares the plain
values they return with :func:`reference_psi` or with the outcome each case states.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from autograder.checks import api
from autograder.errors import CheckFailed, NotAnswered
from autograder.harness import live_server
from autograder.isolate import describe_exception, run_isolated
from server_stub.model import FEATURES

# Small, so that the 413 case stays small; create_app must honour it.
MAX_BATCH = 8
REQUESTS = "predict_requests_total"
ERRORS = "predict_errors_total"
LATENCY = "predict_latency_seconds"
LOG_KEYS = ("time", "request_id", "inputs", "prediction", "latency_ms")
# PSI: a proportion below this is raised to it, so that ln(q / p) stays finite.
EPS = 1e-4
# How long a check waits for counts or log lines that are not there yet. Generous: it bounds a
# wait on an app that records after answering, and is never a requirement on speed.
SETTLE = 3.0

JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    {"why": "malformed JSON", "path": "/predict", "data": '{"instances": [', "headers": JSON, "status": 400},
    {"why": "no 'instances' field", "path": "/predict", "json": {"rows": [[5.1, 3.5, 1.4, 0.2]]}, "status": 400},
    {"why": "a wrong feature count", "path": "/predict", "json": {"instances": [[5.1, 3.5, 1.4]]}, "status": 400},
    {"why": "a text/plain body", "path": "/predict", "data": '{"instances": [[5.1, 3.5, 1.4, 0.2]]}',
     "headers": {"Content-Type": "text/plain"}, "status": 415},
    {"why": f"more than MAX_BATCH ({MAX_BATCH}) instances", "path": "/predict", "json": api.big_batch(MAX_BATCH + 1), "status": 413},
    {"why": "a non-numeric value", "path": "/predict", "json": {"instances": [[5.1, "wide", 1.4, 0.2]]}, "status": 400},
    {"why": "an empty 'instances' list", "path": "/predict", "json": {"instances": []}, "status": 400},
]


# --- data -----------------------------------------------------------------------------------


def iris_reference():
    """The course model's training data: the 150 iris rows, shape (150, 4), in ``FEATURES`` order."""
    from sklearn.datasets import load_iris

    return load_iris().data.copy()


def traffic(n: int, seed: int = 0, shift: dict | None = None, scale: dict | None = None, labels: bool = False):
    """``n`` rows of simulated production traffic, as a NumPy array of shape (n, 4).

    Rows are drawn from iris with replacement (so with no ``shift`` or ``scale`` they follow the
    training distribution). Then, per feature name: ``scale`` multiplies each value's distance
    from the training mean (2.0 doubles the spread, same mean), and ``shift`` adds centimetres.
    With ``labels=True`` returns ``(rows, species)``, the species index of each row.
    """
    import numpy as np
    from sklearn.datasets import load_iris

    data = load_iris()
    unknown = sorted((set(shift or {}) | set(scale or {})) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r}; the features are {FEATURES}")
    index = np.random.default_rng(seed).integers(0, len(data.data), n)
    rows = data.data[index].copy()
    for j, name in enumerate(FEATURES):
        if scale and name in scale:
            mean = data.data[:, j].mean()
            rows[:, j] = mean + (rows[:, j] - mean) * scale[name]
        if shift and name in shift:
            rows[:, j] += shift[name]
    return (rows, data.target[index].copy()) if labels else rows


def plan(good: int, bad: int, seed: int = 0, batch: int = 1, scrapes: int = 0, ids: bool = True) -> list[dict]:
    """A plan of ``good`` valid and ``bad`` bad ``POST /predict`` requests, in a shuffled order.

    Valid request ``i`` holds ``1 + i % batch`` iris rows and the request id ``req-<seed>-<i>``
    (none when ``ids`` is false); the bad ones cycle through :data:`BAD_REQUESTS`. With
    ``scrapes``, a ``GET /metrics`` and a ``GET /health`` are put that many times between
    requests (and one before the first request).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = traffic(max(1, good * batch), seed=seed).round(2).tolist()
    steps = []
    for i in range(good):
        size = 1 + i % batch
        steps.append({"predict": rows[i * batch:i * batch + size], "request_id": f"req-{seed}-{i:03d}" if ids else None})
    steps += [dict(BAD_REQUESTS[k % len(BAD_REQUESTS)]) for k in range(bad)]
    steps = [steps[k] for k in rng.permutation(len(steps))]
    if scrapes:
        steps.insert(0, {"scrape": True})
        for k in range(scrapes):
            at = 1 + (k + 1) * len(steps) // (scrapes + 1)
            steps[at:at] = [{"scrape": True}, {"get": "/health"}]
    return steps


# --- two apps in one process ---------------------------------------------------------------


SECOND = "/second"
SECOND_ID = "second-0"


class TwoApps:
    """``create_app`` called twice in one server process: the app under test at ``/``, another at ``/second``.

    This is what the checks serve (it has create_app's signature, so the runner calls it with
    the handler and the config). A test suite, or a notebook cell run again, builds several
    apps in one process; a metric registered in the global registry or a logger shared by name
    then mixes them up. The second app gets the same config with its own ``PREDICTION_LOG``
    (``config["SECOND_LOG"]``). If building it raises, every request under ``/second`` gets
    a 500 whose JSON says so.
    """

    def __init__(self, create_app):
        self.create_app = create_app

    def __call__(self, handler, config):
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        config = dict(config)
        second_log = config.pop("SECOND_LOG")
        first = self.create_app(handler, config)
        try:
            second = self.create_app(handler, {**config, "PREDICTION_LOG": second_log})
        except Exception as exc:  # noqa: BLE001 - reported to the check through /second
            second = _Failed(f"{type(exc).__name__}: {exc}")
        return DispatcherMiddleware(first, {SECOND: second})


class _Failed:
    """A WSGI app that answers 500 with ``{"second_app_failed": message}``."""

    def __init__(self, message: str):
        self.message = message

    def __call__(self, environ, start_response):
        body = json.dumps({"error": "the second app could not be built", "second_app_failed": self.message}).encode()
        start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _serve(create_app, workdir: Path, log: Path, model_dir=None):
    from autograder.isolate import _by_value

    # live_server sends code from a module the server cannot import (an extracted submission)
    # by value, but only for the objects it is given: here that is the TwoApps wrapper.
    _by_value([create_app])
    config = {"MAX_BATCH": MAX_BATCH, "MAX_CONTENT_LENGTH": 64 * 1024, "PREDICTION_LOG": str(log),
              "SECOND_LOG": str(workdir / "second" / "predictions.jsonl")}
    return live_server(TwoApps(create_app), model_dir=model_dir, config=config)


def _use_second_app(server) -> None:
    """One valid and one bad request to the second app; raises when it could not be built."""
    r = server.post(f"{SECOND}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, headers={"X-Request-ID": SECOND_ID})
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "second_app_failed" in body:
        problem = body["second_app_failed"]
        hint = (" Give each app its own CollectorRegistry() and register its metrics there: in the global registry the "
                "second app's metrics collide with the first's.") if "Duplicated" in problem else ""
        raise CheckFailed("the checks build your app twice in one process (as a test suite does, or a notebook cell "
                          f"run again); the second create_app(handler, config) raised {problem}.{hint}")
    if r.status_code != 200:
        raise CheckFailed(f"POST /predict to a second app built in the same process returned {r.status_code} with "
                          f"{r.text[:200]!r}; expected 200.")
    r = server.post(f"{SECOND}/predict", json={"instances": [[5.1, 3.5]]})
    if r.status_code != 400:
        raise CheckFailed(f"POST /predict with 2 feature values to a second app built in the same process returned "
                          f"{r.status_code}; expected 400.")


# --- /metrics -------------------------------------------------------------------------------


def parse_metrics(text: str, where: str = "GET /metrics") -> dict:
    """The three metrics of the contract from a Prometheus exposition text.

    Returns ``{"requests", "errors", "count", "sum", "buckets", "types"}``: the sums of the
    ``predict_requests_total`` and ``predict_errors_total`` samples over all their labels, the
    latency histogram's ``_count``, ``_sum`` and cumulative ``(le, value)`` buckets, and each
    sample's type. Raises :class:`CheckFailed` when the text does not parse or a metric is missing.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the app's output
        raise CheckFailed(f"{where}: the body is not Prometheus text format ({type(exc).__name__}: {exc}). "
                          "Return generate_latest(registry).") from None
    samples: dict[str, list] = {}
    types: dict[str, str] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
            types[sample.name] = family.type
    for name, kind, hint in [
        (REQUESTS, "counter", "a Counter named 'predict_requests' (prometheus_client adds _total)"),
        (ERRORS, "counter", "a Counter named 'predict_errors' (prometheus_client adds _total)"),
        (f"{LATENCY}_count", "histogram", f"a Histogram named '{LATENCY}'"),
    ]:
        if name not in samples:
            found = sorted(n for n in samples if not n.endswith("_created"))[:8]
            raise CheckFailed(f"{where} has no sample {name!r}; expected {hint}, registered in the app's registry "
                              f"and there from the start (at 0). Samples found: {found or 'none'}.")
        if types[name] != kind:
            raise CheckFailed(f"{where}: {name} is a {types[name]}; it should be a {kind}.")
    buckets = sorted((float(s.labels.get("le", "nan")), s.value) for s in samples.get(f"{LATENCY}_bucket", []))
    return {
        "requests": sum(s.value for s in samples[REQUESTS]),
        "errors": sum(s.value for s in samples[ERRORS]),
        "count": sum(s.value for s in samples[f"{LATENCY}_count"]),
        "sum": sum(s.value for s in samples.get(f"{LATENCY}_sum", [])),
        "buckets": buckets,
        "types": types,
    }


def scrape(server, prefix: str = "") -> dict:
    """``GET /metrics`` from a running server, parsed with :func:`parse_metrics`."""
    path = f"{prefix}/metrics"
    r = server.get(path)
    if r.status_code != 200:
        raise CheckFailed(f"GET {path} returned {r.status_code} with {r.text[:200]!r}; expected 200 with the metrics.")
    content_type = r.headers.get("Content-Type", "")
    if not content_type.startswith("text/plain"):
        raise CheckFailed(f"GET {path} has Content-Type {content_type!r}; Prometheus expects text/plain "
                          "(use prometheus_client.CONTENT_TYPE_LATEST).")
    return parse_metrics(r.text, f"GET {path}")


def _expect_counts(got: dict, sent: int, errors: int, where: str) -> None:
    if got["requests"] != sent:
        raise CheckFailed(
            f"{where}: {REQUESTS} is {got['requests']:g}; {sent} POST /predict requests were sent to this app so far "
            f"({sent - errors} valid, {errors} bad). Count every POST /predict once, whatever its status, "
            "and nothing else (not GET /metrics, not GET /health); counters never reset."
        )
    if got["errors"] != errors:
        raise CheckFailed(
            f"{where}: {ERRORS} is {got['errors']:g}; {errors} of the {sent} POST /predict requests were answered "
            "with a 4xx status. Count each request answered with status >= 400 once."
        )
    if got["count"] != sent:
        raise CheckFailed(
            f"{where}: {LATENCY}_count is {got['count']:g}; expected {sent}, one observation per POST /predict "
            "(valid or not), like the request counter."
        )
    if not math.isfinite(got["sum"]) or got["sum"] < 0 or (sent and got["sum"] <= 0):
        raise CheckFailed(f"{where}: {LATENCY}_sum is {got['sum']!r}; it should be the total of the observed "
                          "durations in seconds (time.perf_counter() differences), above 0 once a request was timed.")
    values = [v for _, v in got["buckets"]]
    if not got["buckets"] or got["buckets"][-1][0] != math.inf or values[-1] != sent:
        raise CheckFailed(f"{where}: the {LATENCY}_bucket series should end with le=\"+Inf\" equal to the count ({sent}); "
                          f"they are {got['buckets'][-3:]!r}.")
    if any(b < a for a, b in zip(values, values[1:])):
        raise CheckFailed(f"{where}: the {LATENCY}_bucket values should never decrease (they are cumulative); they are {values}.")


def _step_name(step: dict) -> str:
    if "predict" in step:
        rid = step.get("request_id")
        return f"POST /predict with {len(step['predict'])} valid instance(s)" + (f" (X-Request-ID {rid})" if rid else "")
    return f"{step.get('method', 'POST')} {step['path']} with {step['why']}"


def _predict(server, step: dict):
    headers = {"X-Request-ID": step["request_id"]} if step.get("request_id") else {}
    r = server.post("/predict", json={"instances": step["predict"]}, headers=headers)
    try:
        body = r.json()
    except ValueError:
        body = None
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if r.status_code != 200 or not isinstance(predictions, list) or len(predictions) != len(step["predict"]):
        raise CheckFailed(f"{_step_name(step)} returned {r.status_code} with {r.text[:200]!r}; expected 200 with "
                          f"{{\"predictions\": [...]}}, one per instance.")
    return r, predictions


def _run_plan(server, steps: list[dict], on_scrape=None) -> list[dict]:
    """Send every step; return the valid requests' answers. ``on_scrape(sent, errors)`` judges a scrape."""
    sent = errors = 0
    answered = []
    for step in steps:
        if step.get("scrape"):
            if on_scrape:
                on_scrape(sent, errors)
        elif "get" in step:
            r = server.get(step["get"])
            if r.status_code != 200:
                raise CheckFailed(f"GET {step['get']} returned {r.status_code}; expected 200.")
        elif "predict" in step:
            r, predictions = _predict(server, step)
            answered.append({"step": step, "predictions": predictions, "request_id": r.headers.get("X-Request-ID")})
            sent += 1
        else:
            api._expect_error(server, step)
            sent += 1
            errors += 1
    return answered


def _scrape_settled(server, sent: int, errors: int, prefix: str = "") -> dict:
    """Scrape; while the counts are below what was sent (recorded after answering?), scrape again, for a bounded time."""
    deadline = time.monotonic() + SETTLE
    while True:
        got = scrape(server, prefix)
        low = got["requests"] < sent or got["errors"] < errors or got["count"] < sent
        if not low or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def check_metrics(create_app, steps: list[dict], model_dir=None) -> None:
    """After the plan's requests, ``GET /metrics`` counts each POST /predict and each error once.

    Scrapes in the plan and one at the end compare ``predict_requests_total``,
    ``predict_errors_total`` and the latency histogram's count with what was sent so far.
    A second app built in the same process (:class:`TwoApps`) then gets 2 requests, which
    must show in its metrics only.
    """
    workdir = Path(tempfile.mkdtemp(prefix="servelab-metrics-"))
    try:
        with _serve(create_app, workdir, workdir / "predictions.jsonl", model_dir) as server:
            scrapes = []

            def judge(sent, errors):
                scrapes.append(sent)
                where = f"GET /metrics (scrape {len(scrapes)}, after {sent} POST /predict)"
                _expect_counts(_scrape_settled(server, sent, errors), sent, errors, where)

            _run_plan(server, [*steps, {"scrape": True}], on_scrape=judge)
            sent = sum(1 for step in steps if "predict" in step or "status" in step)
            errors = sum(1 for step in steps if "status" in step)
            _use_second_app(server)
            second = _scrape_settled(server, 2, 1, SECOND)
            if (second["requests"], second["errors"]) != (2, 1):
                raise CheckFailed(
                    f"a second app built in the same process got 2 POST /predict (1 bad), but its /metrics reports "
                    f"{second['requests']:g} requests and {second['errors']:g} errors. Give each app its own "
                    "CollectorRegistry() and create its metrics inside create_app."
                )
            first = scrape(server)
            if (first["requests"], first["errors"]) != (sent, errors):
                raise CheckFailed(
                    f"after a second app in the same process got 2 requests, the first app's /metrics reports "
                    f"{first['requests']:g} requests and {first['errors']:g} errors; expected still {sent} and {errors}. "
                    "Metrics shared between apps (module-level, or in the global registry) mix them up: create them "
                    "inside create_app, in the app's own CollectorRegistry()."
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- the prediction log ---------------------------------------------------------------------


def _read_lines(path: Path) -> list[str] | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return text.splitlines()


def _wait_lines(path: Path, n: int) -> list[str] | None:
    """The file's lines once it has at least ``n`` (bounded wait, for an app that logs after answering)."""
    deadline = time.monotonic() + (SETTLE if n else 0.2)
    while True:
        lines = _read_lines(path)
        if (lines is not None and len(lines) >= n and n) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _expected_lines(answered: list[dict]) -> list[dict]:
    out = []
    for a in answered:
        for i, (x, p) in enumerate(zip(a["step"]["predict"], a["predictions"])):
            out.append({"request_id": a["request_id"], "index": i, "inputs": x, "prediction": p, "step": a["step"]})
    return out


def _same_prediction(a, b) -> bool:
    if not isinstance(a, dict) or set(a) != set(b):
        return False
    for key, want in b.items():
        got = a[key]
        if isinstance(want, float):
            if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif got != want:
            return False
    return True


def _records(lines: list[str], where: str) -> list[dict]:
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise CheckFailed(f"{where}: line {n} of the prediction log is not JSON: {line[:120]!r}. "
                              "Write exactly one JSON object per line (json.dumps, no pretty-printing, no prefix).") from None
        if not isinstance(record, dict):
            raise CheckFailed(f"{where}: line {n} of the prediction log is {record!r}; each line should be a JSON object.")
        records.append(record)
    return records


def judge_log_lines(lines: list[str] | None, expected: list[dict], where: str, since: datetime, until: datetime) -> None:
    """The log lines are one JSON object per predicted instance, in order, with the contract's keys."""
    if lines is None and not expected:
        lines = []
    if lines is None:
        raise CheckFailed(f"{where}: there is no file at config['PREDICTION_LOG'] after {len(expected)} predictions; "
                          "write one JSON line per predicted instance there (create its folder if it is missing).")
    records = _records(lines, where)
    if any(r.get("request_id") == SECOND_ID for r in records):
        raise CheckFailed(
            f"{where}: the log holds a line for request {SECOND_ID!r}, which went to a second app built in the same "
            "process with its own PREDICTION_LOG. A logger shared between apps (the same logging.getLogger name) "
            "writes every record to every app's file: give each app its own logger, with one FileHandler."
        )
    if len(records) != len(expected):
        raise CheckFailed(
            f"{where}: the prediction log has {len(records)} lines; expected {len(expected)}, one per predicted "
            "instance of the valid requests, and none for requests answered with an error."
        )
    for n, (record, want) in enumerate(zip(records, expected), 1):
        missing = [k for k in LOG_KEYS if k not in record]
        if missing:
            raise CheckFailed(f"{where}: line {n} of the prediction log lacks {missing}; each line needs the keys "
                              f"{list(LOG_KEYS)}. It is {json.dumps(record)[:200]}.")
        step = _step_name(want["step"])
        if record["request_id"] != want["request_id"]:
            raise CheckFailed(
                f"{where}: line {n} has request_id {record['request_id']!r}; it belongs to {step}, whose request id "
                f"was {want['request_id']!r} (lines in request order, one per instance)."
            )
        if record["inputs"] != want["inputs"]:
            raise CheckFailed(f"{where}: line {n} ({step}, instance {want['index']}) has inputs {record['inputs']!r}; "
                              f"expected the instance as sent, {want['inputs']!r}.")
        if not _same_prediction(record["prediction"], want["prediction"]):
            raise CheckFailed(f"{where}: line {n} ({step}, instance {want['index']}) has prediction {record['prediction']!r}; "
                              f"expected the prediction the API answered for it, {want['prediction']!r}.")
        latency = record["latency_ms"]
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency) or latency < 0:
            raise CheckFailed(f"{where}: line {n} has latency_ms {latency!r}; expected the request's duration in milliseconds, a number >= 0.")
        stamp = record["time"]
        try:
            when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise CheckFailed(f"{where}: line {n} has time {stamp!r}; expected an ISO 8601 time with its time zone, "
                              "e.g. datetime.now(timezone.utc).isoformat().")
        if not since - timedelta(minutes=5) <= when <= until + timedelta(minutes=5):
            raise CheckFailed(f"{where}: line {n} has time {stamp!r}, which is not the time of the request ({until.isoformat()}).")


def check_prediction_log(create_app, steps: list[dict], model_dir=None) -> None:
    """Every valid request writes one JSON line per instance to ``config["PREDICTION_LOG"]``, nothing to stdout/stderr.

    Request ids come from the ``X-Request-ID`` header; a request without one gets an id the
    response returns in that header. The log's folder does not exist when the server starts. A
    second app built in the same process (:class:`TwoApps`) then gets a request, which must be
    written to its own log only.
    """
    workdir = Path(tempfile.mkdtemp(prefix="servelab-log-"))
    log = workdir / "logs" / "today" / "predictions.jsonl"
    try:
        since = datetime.now(timezone.utc)
        with _serve(create_app, workdir, log, model_dir) as server:
            answered = _run_plan(server, steps)
            for a in answered:
                sent_id = a["step"].get("request_id")
                if sent_id and a["request_id"] != sent_id:
                    raise CheckFailed(f"{_step_name(a['step'])}: the response's X-Request-ID header is {a['request_id']!r}; "
                                      f"expected the id the client sent, {sent_id!r}.")
                if not sent_id and not a["request_id"]:
                    raise CheckFailed(f"{_step_name(a['step'])} without an X-Request-ID header: the response should carry "
                                      "the id the app made up (uuid.uuid4().hex) in its X-Request-ID header.")
            expected = _expected_lines(answered)
            _use_second_app(server)
            second_lines = _wait_lines(workdir / "second" / "predictions.jsonl", 1)
            lines = _wait_lines(log, len(expected))
            until = datetime.now(timezone.utc)
            where = f"after {len(answered)} valid and {sum(1 for s in steps if 'status' in s)} bad requests"
            judge_log_lines(lines, expected, where, since, until)
            second_ids = [r.get("request_id") for r in _records(second_lines or [], "the second app's log")]
            if second_ids != [SECOND_ID]:
                raise CheckFailed(
                    f"a second app built in the same process, with its own PREDICTION_LOG, got 1 valid request "
                    f"({SECOND_ID!r}); its log holds the request ids {second_ids[:5]}. Each app needs its own logger "
                    "(a unique name) with one FileHandler for its own file."
                )
            output = Path(server.log_path).read_text(errors="replace")
            leaked = [a["request_id"] for a in answered if a["request_id"] and a["request_id"] in output]
            if leaked or '"request_id"' in output:
                raise CheckFailed(
                    f"{where}: the server's stdout/stderr contains prediction records (request id {leaked[:1] or 'request_id'}). "
                    "Write them only to the PREDICTION_LOG file: a logger with propagate = False and one FileHandler."
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- drift ----------------------------------------------------------------------------------


def reference_psi(reference, current, cuts, eps: float = EPS) -> float:
    """The PSI of the contract: bins split at ``cuts`` (a value on a cut goes right), proportions raised to ``eps``."""
    import numpy as np

    cuts = np.asarray(cuts, dtype=float)
    counts = [np.bincount(np.searchsorted(cuts, np.asarray(x, dtype=float), side="right"), minlength=len(cuts) + 1)
              for x in (reference, current)]
    p, q = (np.maximum(c / c.sum(), eps) for c in counts)
    return float(np.sum((q - p) * np.log(q / p)))


def _plain(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _call_each(fn, calls: list) -> list:
    """Child side: ``fn(*args, **kwargs)`` for each ``(args, kwargs)``; plain results or what was raised."""
    out = []
    for args, kwargs in calls:
        try:
            out.append({"returned": _plain(fn(*args, **kwargs))})
        except Exception as exc:  # noqa: BLE001 - the judge decides whether this was expected
            out.append({"raised": {**describe_exception(exc), "classes": [c.__name__ for c in type(exc).__mro__]}})
    return out


def _observe(fn, calls: list, name: str) -> list:
    return run_isolated(_call_each, fn, calls, timeout=30, what=f"your {name}")


def _expect_raise(outcome: dict, case: dict, call: str) -> None:
    if "returned" in outcome:
        raise CheckFailed(f"{call} should raise {case['raises']}; it returned {str(outcome['returned'])[:200]}.")
    r = outcome["raised"]
    if case["raises"] not in r["classes"]:
        raise CheckFailed(f"{call} raised {r['type']}: {r['message']}; expected {case['raises']} with a message saying what is wrong.")


def _not_answered(outcomes: list, name: str) -> None:
    for outcome in outcomes:
        if outcome.get("raised", {}).get("type") == "NotImplementedError":
            raise NotAnswered(f"{name} raised NotImplementedError: write it, then run its cell again.")


def _size(x) -> str:
    try:
        import numpy as np

        return "x".join(str(d) for d in np.shape(x)) or "a scalar"
    except Exception:  # noqa: BLE001 - ragged input, described loosely
        return "ragged"


def check_psi(psi, cases: list[dict]) -> None:
    """``psi(reference, current, cuts)`` equals :func:`reference_psi`; bad input raises ``ValueError``.

    A case is ``{"why", "reference", "current", "cuts"}``, plus ``"raises": "ValueError"`` for
    input that must be refused.
    """
    outcomes = _observe(psi, [((c["reference"], c["current"], c["cuts"]), {}) for c in cases], "psi")
    _not_answered(outcomes, "psi")
    for case, outcome in zip(cases, outcomes):
        call = f"psi on {case['why']} (cuts {list(case['cuts'])!r})" if len(case["cuts"]) < 12 else f"psi on {case['why']}"
        if "raises" in case:
            _expect_raise(outcome, case, call)
            continue
        if "raised" in outcome:
            r = outcome["raised"]
            raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
        got, want = outcome["returned"], reference_psi(case["reference"], case["current"], case["cuts"])
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise CheckFailed(f"{call} returned {got!r}; expected a number (a float).")
        if not math.isclose(got, want, rel_tol=1e-7, abs_tol=1e-12):
            raise CheckFailed(
                f"{call} returned {got!r}; expected {want!r}. Count each value in its bin (a value equal to a cut "
                f"goes to the bin on its right), divide by the number of values, raise proportions below {EPS} to {EPS}, "
                "then sum (q - p) * ln(q / p)."
            )


def check_drift(detect_drift, cases: list[dict]) -> None:
    """``detect_drift(reference, current, **kwargs)`` flags exactly the features a case says drifted.

    A case is ``{"why", "reference", "current", "drifted": [names]}`` with optional ``kwargs``,
    or ``"raises": "ValueError"``; ``"identical": True`` also expects PSI 0 and p-value 1.
    """
    calls = [((c["reference"], c["current"]), c.get("kwargs", {})) for c in cases]
    outcomes = _observe(detect_drift, calls, "detect_drift")
    _not_answered(outcomes, "detect_drift")
    for case, outcome in zip(cases, outcomes):
        call = f"detect_drift on {case['why']} (reference {_size(case['reference'])}, current {_size(case['current'])})"
        if "raises" in case:
            _expect_raise(outcome, case, call)
            continue
        if "raised" in outcome:
            r = outcome["raised"]
            raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
        _judge_report(outcome["returned"], case, call)


def _judge_report(report, case: dict, call: str) -> None:
    want = list(case["drifted"])
    if not isinstance(report, dict) or not {"drift", "drifted", "features"} <= set(report):
        raise CheckFailed(f"{call} returned {str(report)[:200]}; expected a dict with the keys 'drift', 'drifted' and 'features'.")
    features = report["features"]
    if not isinstance(features, dict) or sorted(features) != sorted(FEATURES):
        raise CheckFailed(f"{call}: report['features'] should have one entry per feature, {FEATURES}; "
                          f"it has {sorted(features) if isinstance(features, dict) else features!r}.")
    for name in FEATURES:
        entry = features[name]
        if not isinstance(entry, dict) or not {"psi", "p_value", "drift"} <= set(entry):
            raise CheckFailed(f"{call}: report['features'][{name!r}] should be a dict with 'psi', 'p_value' and 'drift'; it is {entry!r}.")
        psi, p = entry["psi"], entry["p_value"]
        for key, value, ok in [("psi", psi, lambda v: v >= 0), ("p_value", p, lambda v: 0 <= v <= 1)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise CheckFailed(f"{call}: {name}'s {key} is {value!r}; expected a finite number"
                                  + (" >= 0." if key == "psi" else " between 0 and 1."))
        if entry["drift"] is not (name in want):
            raise CheckFailed(
                f"{call}: {name} has drift {entry['drift']!r} (psi {psi:.4g}, p_value {p:.3g}); expected {name in want}. "
                f"The features that drifted here: {want or 'none'}. A feature drifts when its PSI >= psi_threshold "
                "AND its KS p-value < alpha / (number of features): large enough to matter, and unlikely to be noise."
            )
        if case.get("identical") and (abs(psi) > 1e-12 or abs(p - 1) > 1e-12):
            raise CheckFailed(f"{call}: for identical data {name} should have psi 0 and p_value 1; it has {psi!r} and {p!r}.")
    if report["drifted"] != want:
        raise CheckFailed(f"{call}: report['drifted'] is {report['drifted']!r}; expected {want!r}, the drifted features' "
                          "names in feature order.")
    if report["drift"] is not bool(want):
        raise CheckFailed(f"{call}: report['drift'] is {report['drift']!r}; expected {bool(want)} (True when any feature drifted).")
