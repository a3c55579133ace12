"""Fuzzing the reference serving API: no generated request may get a 5xx, and every error is JSON.

The reference server is built from the answer cells of solutions/05 and runs as its own
process. Requests come from its own OpenAPI document (schemathesis, valid and invalid) and
from Hypothesis (arbitrary bodies, content types and paths).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from autograder.checks.api import _fuzz_problem, check_fuzz
from autograder.extract import extract_to
from autograder.harness import live_server

from conftest import SOLUTIONS

pytestmark = pytest.mark.slow
LIMITS = {"MAX_CONTENT_LENGTH": 4096, "MAX_BATCH": 8}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return extract_to(SOLUTIONS / "05_flask_api.ipynb", tmp_path_factory.mktemp("fuzz") / "api.py")


def test_the_reference_serves_its_openapi_document(source):
    with live_server(source=source, config=LIMITS) as srv:
        r = srv.get("/openapi.json")
    doc = r.json()
    assert r.status_code == 200 and doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/health", "/v1/models/{name}", "/v1/models/{name}:predict", "/predict"}


def test_a_thousand_schema_generated_requests_get_no_5xx_and_json_errors(source):
    sent = check_fuzz(None, examples=1000, config=LIMITS, source=source)
    print(f"schemathesis: {sent} requests, 0 broke the rule")
    assert sent >= 1000


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


def test_arbitrary_bodies_content_types_and_paths_get_no_5xx(source):
    sent = []
    failures = []
    with live_server(source=source, config=LIMITS) as srv:

        @settings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(
            path=st.sampled_from(["/predict", "/v1/models/iris:predict", "/v1/models/x:predict", "/health", "/v1/models/iris"]),
            method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH"]),
            content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", None]),
            body=st.one_of(
                st.binary(max_size=300),
                st.text(max_size=200).map(str.encode),
                st.builds(lambda v: __import__("json").dumps({"instances": v}).encode(), JSON_VALUES),
                st.builds(lambda v: __import__("json").dumps(v).encode(), JSON_VALUES),
            ),
        )
        def run(path, method, content_type, body):
            headers = {"Content-Type": content_type} if content_type else {}
            r = srv.request(method, path, data=body, headers=headers)
            sent.append(path)
            problem = _fuzz_problem(r)
            if problem:
                failures.append((method, path, content_type, body[:80], problem))

        run()
    print(f"hypothesis: {len(sent)} raw requests, {len(failures)} broke the rule")
    assert len(sent) >= 300
    assert failures == []


def test_the_fuzzer_catches_a_server_that_500s_on_bad_input():
    from flask import Flask, jsonify, request

    def fragile(handler, config=None):
        from werkzeug.exceptions import HTTPException

        app = Flask(__name__)

        @app.errorhandler(HTTPException)
        def as_json(exc):  # JSON errors, so that only the crashes break the rule
            return jsonify(error=exc.description), exc.code

        @app.post("/predict")
        def predict():
            rows = request.get_json()["instances"]  # crashes on anything unexpected
            return jsonify(predictions=[{"label": "setosa", "confidence": 1.0} for _ in rows])

        return app

    from autograder.errors import CheckFailed

    with pytest.raises(CheckFailed, match="5xx"):
        check_fuzz(fragile, examples=60)
