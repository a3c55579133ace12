"""autograder.checks.monitoring (notebook 09) on the solution and on answers that are wrong in one way each.

The server-based checks start a process each (a few seconds), so only the mistakes a server must
reveal are run against a server; how the judges read metrics and log lines is tested on text.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from autograder.checks import monitoring
from autograder.errors import CheckFailed, NotAnswered

from conftest import load_solution_module

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    return load_solution_module("09_monitoring_drift.ipynb", tmp_path_factory.mktemp("sol09"))


# --- a create_app that is right unless a flag breaks it ---------------------------------------

_SHARED: dict = {}


def make_create_app(global_registry=False, shared_metrics=False, count_everything=False,
                    log_to_stderr=False, shared_logger=False, no_request_id=False):
    """The notebook's app, with one mistake per flag."""

    def create_app(handler, config=None):
        from flask import Flask, Response, g, jsonify, request
        from prometheus_client import REGISTRY, CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
        from werkzeug.exceptions import HTTPException

        from server_stub.handler import HandlerError

        app = Flask(__name__)
        app.config.update({"MAX_CONTENT_LENGTH": 1024 * 1024, "MAX_BATCH": 64, "PREDICTION_LOG": "predictions.jsonl", **(config or {})})
        if shared_metrics and _SHARED:
            registry, requests_total, errors_total, latency = _SHARED["metrics"]
        else:
            registry = REGISTRY if global_registry else CollectorRegistry()
            requests_total = Counter("predict_requests", "requests", registry=registry)
            errors_total = Counter("predict_errors", "errors", registry=registry)
            latency = Histogram("predict_latency_seconds", "latency", registry=registry)
            _SHARED["metrics"] = (registry, requests_total, errors_total, latency)

        path = Path(app.config["PREDICTION_LOG"])
        path.parent.mkdir(parents=True, exist_ok=True)
        log = logging.getLogger("predictions" if shared_logger else f"predictions.{uuid.uuid4().hex}")
        log.setLevel(logging.INFO)
        log.propagate = False
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(file_handler)
        if log_to_stderr:
            log.addHandler(logging.StreamHandler(sys.stderr))

        @app.errorhandler(HTTPException)
        def http_error(exc):
            return jsonify({"error": exc.description}), exc.code

        @app.errorhandler(HandlerError)
        def handler_error(exc):
            return jsonify({"error": exc.message}), exc.status

        @app.before_request
        def start():
            g.started = time.perf_counter()
            g.request_id = (None if no_request_id else request.headers.get("X-Request-ID")) or uuid.uuid4().hex
            g.predicted = []

        @app.after_request
        def record(response):
            response.headers["X-Request-ID"] = g.request_id
            if request.endpoint != "predict" and not count_everything:
                return response
            requests_total.inc()
            if response.status_code >= 400:
                errors_total.inc()
            latency.observe(time.perf_counter() - g.started)
            for x, p in g.predicted:
                log.info(json.dumps({"time": datetime.now(timezone.utc).isoformat(), "request_id": g.request_id,
                                     "inputs": x, "prediction": p, "latency_ms": 1.0}))
            return response

        @app.get("/health")
        def health():
            return jsonify({"status": "ok"})

        @app.get("/metrics")
        def metrics():
            return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

        @app.post("/predict")
        def predict():
            if not request.is_json:
                return jsonify({"error": "not JSON"}), 415
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
                return jsonify({"error": "need a non-empty 'instances' list"}), 400
            if len(body["instances"]) > app.config["MAX_BATCH"]:
                return jsonify({"error": "too many instances"}), 413
            predictions = handler.handle([{"body": x} for x in body["instances"]], handler.context)
            g.predicted = list(zip(body["instances"], predictions))
            return jsonify({"predictions": predictions})

        return app

    return create_app


PLAN = monitoring.plan(good=4, bad=3, seed=1, batch=2, scrapes=1)


def test_the_solution_passes_the_monitoring_checks(solution):
    monitoring.check_metrics(solution.create_app, [{"scrape": True}] + PLAN + monitoring.plan(good=0, bad=7, seed=3, scrapes=1))
    monitoring.check_prediction_log(solution.create_app, PLAN + monitoring.plan(good=2, bad=1, seed=4, ids=False)
                                    + [{"predict": [dict(zip(FEATURES, [6.3, 2.9, 5.6, 1.8]))], "request_id": "named"}])


@pytest.mark.parametrize("flags, check, message", [
    ({"global_registry": True}, monitoring.check_metrics, "second create_app.* raised DuplicateTimeseries: Duplicated timeseries.*its own CollectorRegistry"),
    ({"shared_metrics": True}, monitoring.check_metrics, "second app .* reports 9 requests and 4 errors"),
    ({"count_everything": True}, monitoring.check_metrics, r"scrape 2, after 4 POST /predict\): predict_requests_total is 5"),
    ({"log_to_stderr": True}, monitoring.check_prediction_log, "stdout/stderr contains prediction records"),
    ({"shared_logger": True}, monitoring.check_prediction_log, "holds a line for request 'second-0'.*its own logger"),
    ({"no_request_id": True}, monitoring.check_prediction_log, "X-Request-ID header is '[0-9a-f]{32}'; expected the id the client sent"),
])
def test_a_wrong_app_fails_with_what_went_wrong(flags, check, message):
    with pytest.raises(CheckFailed, match=message):
        check(make_create_app(**flags), PLAN)


def test_an_unwritten_app_is_not_answered():
    def create_app(handler, config=None):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        monitoring.check_metrics(create_app, PLAN[:2])


# --- the judges, on text ----------------------------------------------------------------------

METRICS = """# TYPE predict_requests_total counter
predict_requests_total 3.0
# TYPE predict_errors_total counter
predict_errors_total{status="400"} 1.0
predict_errors_total{status="415"} 1.0
# TYPE predict_latency_seconds histogram
predict_latency_seconds_bucket{le="0.1"} 2.0
predict_latency_seconds_bucket{le="+Inf"} 3.0
predict_latency_seconds_count 3.0
predict_latency_seconds_sum 0.25
"""


def test_metrics_with_labels_are_added_up():
    got = monitoring.parse_metrics(METRICS)
    assert (got["requests"], got["errors"], got["count"]) == (3, 2, 3)
    monitoring._expect_counts(got, 3, 2, "here")


@pytest.mark.parametrize("text, message", [
    ("predict_requests_total{ 3\n", "not Prometheus text format"),
    (METRICS.replace("# TYPE predict_requests_total counter", "# TYPE predict_requests_total gauge"), "is a gauge; it should be a counter"),
    (METRICS.replace("predict_errors_total", "errors_total"), "no sample 'predict_errors_total'"),
])
def test_unreadable_or_mistyped_metrics_are_named(text, message):
    with pytest.raises(CheckFailed, match=message):
        monitoring.parse_metrics(text)


@pytest.mark.parametrize("sent, errors, message", [
    (4, 2, "predict_requests_total is 3; 4 POST /predict requests were sent"),
    (3, 1, "predict_errors_total is 2; 1 of the 3"),
])
def test_counts_that_differ_say_what_was_sent(sent, errors, message):
    with pytest.raises(CheckFailed, match=message):
        monitoring._expect_counts(monitoring.parse_metrics(METRICS), sent, errors, "here")


def test_a_histogram_that_misses_requests_fails():
    got = monitoring.parse_metrics(METRICS.replace("_count 3.0", "_count 2.0"))
    with pytest.raises(CheckFailed, match="predict_latency_seconds_count is 2; expected 3, one observation per POST /predict"):
        monitoring._expect_counts(got, 3, 2, "here")


def test_decreasing_buckets_fail():
    got = monitoring.parse_metrics(METRICS.replace('le="0.1"} 2.0', 'le="0.1"} 4.0'))
    with pytest.raises(CheckFailed, match="never decrease"):
        monitoring._expect_counts(got, 3, 2, "here")


# The log lines below are made when the module is collected, which can be many minutes
# before the test runs in a full `make test`; the request window spans from then to now.
COLLECTED = datetime.now(timezone.utc) - timedelta(seconds=1)


def log_line(**change):
    record = {"time": datetime.now(timezone.utc).isoformat(), "request_id": "r1", "inputs": [5.1, 3.5, 1.4, 0.2],
              "prediction": {"label": "setosa", "confidence": 0.98}, "latency_ms": 2.5}
    record.update(change)
    return json.dumps({k: v for k, v in record.items() if v is not ...})


EXPECTED = [{"request_id": "r1", "index": 0, "inputs": [5.1, 3.5, 1.4, 0.2], "prediction": {"label": "setosa", "confidence": 0.98},
             "step": {"predict": [[5.1, 3.5, 1.4, 0.2]], "request_id": "r1"}}]


@pytest.mark.parametrize("lines, message", [
    ([log_line()], None),
    ([log_line(extra="fine")], None),
    (None, "no file at config\\['PREDICTION_LOG'\\]"),
    (json.dumps(json.loads(log_line()), indent=2).splitlines(), "line 1 of the prediction log is not JSON"),
    (["INFO " + log_line()], "not JSON"),
    ([log_line(), log_line()], "has 2 lines; expected 1"),
    ([log_line(latency_ms=...)], r"lacks \['latency_ms'\]"),
    ([log_line(time=datetime.now().isoformat())], "ISO 8601 time with its time zone"),
    ([log_line(time=(datetime.now(timezone.utc) - timedelta(days=2)).isoformat())], "not the time of the request"),
    ([log_line(inputs=[5.1, 3.5, 1.4])], "expected the instance as sent"),
    ([log_line(prediction="setosa")], "expected the prediction the API answered"),
    ([log_line(latency_ms=-1)], "latency_ms -1"),
    ([log_line(latency_ms=True)], "latency_ms True"),
    ([log_line(request_id="other")], "request_id 'other'"),
])
def test_the_log_judge(lines, message):
    now = datetime.now(timezone.utc)
    if message is None:
        monitoring.judge_log_lines(lines, EXPECTED, "here", COLLECTED, now)
    else:
        with pytest.raises(CheckFailed, match=message):
            monitoring.judge_log_lines(lines, EXPECTED, "here", COLLECTED, now)


def test_no_predictions_and_no_file_is_fine():
    now = datetime.now(timezone.utc)
    monitoring.judge_log_lines(None, [], "here", now, now)


# --- psi ----------------------------------------------------------------------------------------

PSI_CASES = [
    {"why": "the worked example", "reference": list(range(1, 11)), "current": [2, 2, 3, 7, 8, 9, 9, 10, 10, 10], "cuts": [4, 8]},
    {"why": "values on the cut", "reference": [1, 2, 3, 4], "current": [2, 2, 2, 2], "cuts": [2]},
    {"why": "empty reference bins", "reference": [0, 0, 0, 1], "current": [5, 5, 3], "cuts": [2, 4]},
    {"why": "decreasing cuts", "reference": [1, 2, 3], "current": [1, 2, 3], "cuts": [2.5, 1.5], "raises": "ValueError"},
    {"why": "nan", "reference": [1, float("nan")], "current": [1, 2], "cuts": [1.5], "raises": "ValueError"},
]


def test_the_worked_example_is_right():
    assert round(monitoring.reference_psi(range(1, 11), [2, 2, 3, 7, 8, 9, 9, 10, 10, 10], [4, 8]), 4) == 0.6238
    assert monitoring.reference_psi([1, 2, 3], [1, 2, 3], [2]) == 0.0


def test_the_solution_psi_passes(solution):
    monitoring.check_psi(solution.psi, PSI_CASES)


def make_psi(side="right", floor="max", validate=True, numpy_result=False):
    def psi(reference, current, cuts):
        reference, current, cuts = (np.asarray(v, dtype=float) for v in (reference, current, cuts))
        if validate and (np.any(np.diff(cuts) <= 0) or not np.all(np.isfinite(reference)) or not np.all(np.isfinite(current))):
            raise ValueError("bad input")
        k = len(cuts) + 1
        p = np.bincount(np.searchsorted(cuts, reference, side=side), minlength=k) / len(reference)
        q = np.bincount(np.searchsorted(cuts, current, side=side), minlength=k) / len(current)
        if floor == "max":
            p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        else:
            p, q = p + 1e-4, q + 1e-4
        value = np.sum((q - p) * np.log(q / p))
        return value if numpy_result else float(value)

    return psi


def test_a_numpy_float_result_is_fine():
    monitoring.check_psi(make_psi(numpy_result=True), PSI_CASES)


@pytest.mark.parametrize("flags, message", [
    ({"side": "left"}, "psi on the worked example .* returned .*; expected .*a value equal to a cut goes to the bin on its right"),
    ({"floor": "add"}, "psi on the worked example .* returned 0.62"),
    ({"validate": False}, "psi on decreasing cuts .* should raise ValueError; it returned"),
])
def test_a_wrong_psi_fails(flags, message):
    with pytest.raises(CheckFailed, match=message):
        monitoring.check_psi(make_psi(**flags), PSI_CASES)


def test_an_unwritten_psi_is_not_answered():
    def psi(reference, current, cuts):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        monitoring.check_psi(psi, PSI_CASES[:1])


# --- detect_drift ---------------------------------------------------------------------------------

REFERENCE = monitoring.iris_reference()
DRIFT_CASES = [
    {"why": "unshifted", "reference": REFERENCE, "current": monitoring.traffic(500, seed=1), "drifted": []},
    {"why": "petal_length alone", "reference": REFERENCE.tolist(), "current": monitoring.traffic(300, seed=3, shift={"petal_length": 0.8}),
     "drifted": ["petal_length"]},
    {"why": "a small unshifted sample", "reference": REFERENCE, "current": monitoring.traffic(15, seed=0), "drifted": []},
    {"why": "a large sample, a tiny shift", "reference": monitoring.traffic(20000, seed=10),
     "current": monitoring.traffic(20000, seed=11, shift={"sepal_length": 0.05}), "drifted": []},
    {"why": "a lower threshold", "reference": REFERENCE, "current": monitoring.traffic(1000, seed=7, shift={"sepal_length": 0.2}),
     "kwargs": {"psi_threshold": 0.1}, "drifted": ["sepal_length"]},
    {"why": "identical", "reference": REFERENCE, "current": REFERENCE.copy(), "drifted": [], "identical": True},
    {"why": "3 columns", "reference": REFERENCE, "current": REFERENCE[:, :3], "raises": "ValueError"},
]


def test_the_solution_detect_drift_passes(solution):
    monitoring.check_drift(solution.detect_drift, DRIFT_CASES)


def make_detect_drift(use_psi=True, use_ks=True, ignore_kwargs=False, validate=True, plain=True):
    def detect_drift(reference, current, psi_threshold=0.25, alpha=0.01, bins=10):
        from scipy import stats

        reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
        if validate and (current.ndim != 2 or current.shape[1] != 4):
            raise ValueError("shape")
        threshold = 0.25 if ignore_kwargs else psi_threshold
        features = {}
        for j in range(current.shape[1]):
            ref, cur = reference[:, j], current[:, j]
            cuts = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
            p = np.maximum(np.bincount(np.searchsorted(cuts, ref, side="right"), minlength=len(cuts) + 1) / len(ref), 1e-4)
            q = np.maximum(np.bincount(np.searchsorted(cuts, cur, side="right"), minlength=len(cuts) + 1) / len(cur), 1e-4)
            value = np.sum((q - p) * np.log(q / p))
            p_value = stats.ks_2samp(ref, cur).pvalue
            drift = (value >= threshold or not use_psi) and (p_value < alpha / 4 or not use_ks)
            features[FEATURES[j]] = {"psi": value, "p_value": p_value, "drift": np.bool_(drift)}
            if plain:
                features[FEATURES[j]] = {"psi": float(value), "p_value": float(p_value), "drift": bool(drift)}
        drifted = [name for name in FEATURES if name in features and features[name]["drift"]]
        return {"drift": bool(drifted), "drifted": drifted, "features": features}

    return detect_drift


def test_numpy_values_in_the_report_are_fine():
    monitoring.check_drift(make_detect_drift(plain=False), DRIFT_CASES)


@pytest.mark.parametrize("flags, case, message", [
    ({"use_ks": False}, 2, "on a small unshifted sample .*: sepal_length has drift True .*expected False"),
    ({"use_psi": False}, 3, "on a large sample, a tiny shift .*: sepal_length has drift True"),
    ({"ignore_kwargs": True}, 4, "on a lower threshold .*: sepal_length has drift False"),
    ({"validate": False}, 6, "on 3 columns .*should raise ValueError; it returned"),
])
def test_a_wrong_detector_fails(flags, case, message):
    with pytest.raises(CheckFailed, match=message):
        monitoring.check_drift(make_detect_drift(**flags), [DRIFT_CASES[case]])


def test_a_report_in_another_form_is_named():
    def detect_drift(reference, current, psi_threshold=0.25, alpha=0.01, bins=10):
        return ["petal_length"]

    with pytest.raises(CheckFailed, match="expected a dict with the keys 'drift', 'drifted' and 'features'"):
        monitoring.check_drift(detect_drift, DRIFT_CASES[:1])


# --- the data helpers ---------------------------------------------------------------------------


def test_traffic_shifts_and_scales_only_the_named_features():
    base = monitoring.traffic(400, seed=5)
    moved = monitoring.traffic(400, seed=5, shift={"petal_length": 1.0}, scale={"sepal_width": 2.0})
    assert np.allclose(moved[:, 2], base[:, 2] + 1.0)
    assert np.allclose(moved[:, [0, 3]], base[:, [0, 3]])
    mean = REFERENCE[:, 1].mean()
    assert np.allclose(moved[:, 1] - mean, 2.0 * (base[:, 1] - mean))
    rows, labels = monitoring.traffic(10, seed=1, labels=True)
    assert rows.shape == (10, 4) and labels.shape == (10,)
    with pytest.raises(ValueError, match="unknown feature 'stem'"):
        monitoring.traffic(3, shift={"stem": 1})


def test_a_plan_counts_what_it_says():
    steps = monitoring.plan(good=5, bad=4, seed=2, batch=3, scrapes=2)
    assert sum("predict" in s for s in steps) == 5 and sum("status" in s for s in steps) == 4
    assert steps[0] == {"scrape": True} and sum(s.get("scrape", False) for s in steps) == 3
    assert [len(s["predict"]) for s in steps if "predict" in s] and all(1 <= len(s["predict"]) <= 3 for s in steps if "predict" in s)
    assert all(s["request_id"] is None for s in monitoring.plan(good=3, bad=0, ids=False))
