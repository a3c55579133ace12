"""The reference API (the answer cells of solutions/05) against every row of its contract.

The server is built from the notebook file by autograder.extract and runs as its own process
(python -m server_stub.runner --source), the way the grader starts a submission outside the
student's kernel.
"""
from __future__ import annotations

import json
import math

import pytest

from autograder.checks.handler import reference
from autograder.extract import extract_to
from autograder.harness import live_server
from server_stub.model import FEATURES, sample_instances

from conftest import SOLUTIONS

LIMITS = {"MAX_CONTENT_LENGTH": 4096, "MAX_BATCH": 5}
JSON = {"Content-Type": "application/json"}
ROW = [5.1, 3.5, 1.4, 0.2]
NAMED = dict(zip(FEATURES, ROW))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    source = extract_to(SOLUTIONS / "05_flask_api.ipynb", tmp_path_factory.mktemp("api") / "api.py")
    with live_server(source=source, config=LIMITS) as srv:
        yield srv


# (why, method, path, request kwargs, status, word the message must contain)
ERRORS = [
    ("malformed JSON", "POST", "/predict", {"data": '{"instances": [1,', "headers": JSON}, 400, "JSON"),
    ("missing instances", "POST", "/predict", {"json": {"inputs": [ROW]}}, 400, "instances"),
    ("empty instances", "POST", "/predict", {"json": {"instances": []}}, 400, "instances"),
    ("wrong feature count", "POST", "/predict", {"json": {"instances": [ROW[:3]]}}, 400, "4"),
    ("missing feature name", "POST", "/predict", {"json": {"instances": [{k: v for k, v in NAMED.items() if k != "petal_width"}]}}, 400, "petal_width"),
    ("unknown feature name", "POST", "/predict", {"json": {"instances": [{**NAMED, "colour": 1}]}}, 400, "colour"),
    ("non-numeric value", "POST", "/predict", {"json": {"instances": [[5.1, "x", 1.4, 0.2]]}}, 400, "sepal_width"),
    ("NaN", "POST", "/predict", {"data": '{"instances": [[NaN, 3.5, 1.4, 0.2]]}', "headers": JSON}, 400, "sepal_length"),
    ("Infinity", "POST", "/predict", {"data": '{"instances": [[5.1, 3.5, 1.4, Infinity]]}', "headers": JSON}, 400, "petal_width"),
    ("text/plain body", "POST", "/predict", {"data": json.dumps({"instances": [ROW]}), "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ("form body", "POST", "/predict", {"data": {"instances": "1"}}, 415, "Content-Type"),
    ("body over the limit", "POST", "/predict", {"data": '{"instances": [' + "1," * 4000 + "1]}", "headers": JSON}, 413, None),
    ("batch over the limit", "POST", "/predict", {"json": {"instances": [ROW] * 6}}, 413, "5"),
    ("unknown route", "GET", "/v2/health", {}, 404, None),
    ("unknown model (metadata)", "GET", "/v1/models/resnet", {}, 404, "resnet"),
    ("unknown model (predict)", "POST", "/v1/models/resnet:predict", {"json": {"instances": [ROW]}}, 404, "resnet"),
    ("wrong method on predict", "GET", "/predict", {}, 405, None),
    ("wrong method on health", "POST", "/health", {"json": {}}, 405, None),
]


@pytest.mark.parametrize("why,method,path,kwargs,status,mentions", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_cases(server, why, method, path, kwargs, status, mentions):
    r = server.request(method, path, **kwargs)
    assert r.status_code == status, f"{why}: {r.status_code} {r.text[:200]}"
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    if mentions:
        assert mentions.lower() in body["error"].lower(), body["error"]


def test_every_status_of_the_contract_is_exercised():
    assert {e[4] for e in ERRORS} == {400, 404, 405, 413, 415}


def test_health_and_metadata(server):
    assert server.get("/health").json() == {"status": "ok"}
    assert server.get("/v1/models/iris").json() == {"name": "iris", "version": "1", "ready": True}


@pytest.mark.parametrize("path", ["/predict", "/v1/models/iris:predict"])
def test_predictions_in_order_for_list_and_named_instances(server, path):
    rows = sample_instances()
    instances = [rows[2], dict(zip(FEATURES, rows[0])), rows[1]]
    r = server.post(path, json={"instances": instances})
    assert r.status_code == 200
    got = r.json()["predictions"]
    want = reference().handle([{"body": x} for x in instances], None)
    assert [p["label"] for p in got] == [w["label"] for w in want] == ["virginica", "setosa", "versicolor"]
    for p, w in zip(got, want):
        assert 0 <= p["confidence"] <= 1 and math.isclose(p["confidence"], w["confidence"], abs_tol=1e-9)


def test_server_stays_up_after_every_bad_request(server):
    for _, method, path, kwargs, _, _ in ERRORS:
        server.request(method, path, **kwargs)
    assert server.get("/health").status_code == 200
