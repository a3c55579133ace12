"""Checks for notebook 05, the Flask serving API.

Every check starts the student's ``create_app`` as a real server on loopback
(:func:`autograder.harness.live_server`), sends real HTTP requests, and stops it.

An error case is a dict::

    {"why": "a non-numeric value", "method": "POST", "path": "/predict",
     "json": {"instances": [[1, 2, "x", 4]]}, "status": 400, "mentions": "sepal_width"}

with ``json`` or ``data`` (raw body) and optional ``headers``. The answer must have that
status, a JSON body ``{"error": "<message>"}``, and, if ``mentions`` is given, a message
that contains it.
"""
from __future__ import annotations

import json

from autograder.checks.handler import check_results, reference
from autograder.errors import CheckFailed
from autograder.harness import live_server

MODEL = "iris"
PREDICT_ROUTES = [f"/v1/models/{MODEL}:predict", "/predict"]
# Small limits so the 413 cases stay small; create_app must honour them.
LIMITS = {"MAX_CONTENT_LENGTH": 16 * 1024, "MAX_BATCH": 8}


def _describe(method: str, path: str, r) -> str:
    body = r.text if len(r.text) <= 200 else r.text[:200] + "..."
    return f"{method} {path} returned {r.status_code} with body {body!r}"


def _json_body(method: str, path: str, r):
    content_type = r.headers.get("Content-Type", "")
    if "json" not in content_type:
        raise CheckFailed(f"{_describe(method, path, r)} and Content-Type {content_type!r}; expected application/json.")
    try:
        return r.json()
    except ValueError:
        raise CheckFailed(f"{_describe(method, path, r)}, which is not valid JSON.") from None


def check_health(create_app, **server) -> None:
    """``GET /health`` answers 200 ``{"status": "ok"}``."""
    with live_server(create_app, **server) as srv:
        r = srv.get("/health")
        body = _json_body("GET", "/health", r)
        if r.status_code != 200 or body != {"status": "ok"}:
            raise CheckFailed(f"{_describe('GET', '/health', r)}; expected 200 with {{\"status\": \"ok\"}}.")


def check_model_metadata(create_app, name: str = MODEL, version: str = "1", **server) -> None:
    """``GET /v1/models/<name>`` describes the model; an unknown name gets a 404 JSON error."""
    with live_server(create_app, **server) as srv:
        path = f"/v1/models/{name}"
        r = srv.get(path)
        body = _json_body("GET", path, r)
        want = {"name": name, "version": version, "ready": True}
        got = {k: body.get(k) for k in want} if isinstance(body, dict) else body
        if r.status_code != 200 or got != want:
            raise CheckFailed(f"{_describe('GET', path, r)}; expected 200 with {json.dumps(want)}.")
        _expect_error(srv, {"why": "an unknown model", "method": "GET", "path": "/v1/models/no-such-model", "status": 404})


def check_predict(create_app, instances: list, routes=None, **server) -> None:
    """Every predict route answers 200 with one prediction per instance, in order.

    ``instances`` are sent as given (lists or objects keyed by feature name); the expected
    predictions come from the finished handler.
    """
    expected = reference(server.get("model_dir")).handle([{"body": x} for x in instances], None)
    with live_server(create_app, **server) as srv:
        for path in routes or PREDICT_ROUTES:
            r = srv.post(path, json={"instances": instances})
            body = _json_body("POST", path, r)
            if r.status_code != 200 or not isinstance(body, dict) or "predictions" not in body:
                raise CheckFailed(f"{_describe('POST', path, r)}; expected 200 with {{\"predictions\": [...]}}.")
            check_results(expected, body["predictions"], f"POST {path} with {len(instances)} instances")


def check_errors(create_app, cases: list, config=None, **server) -> None:
    """Each bad request in ``cases`` gets its 4xx status and a JSON error; the server stays up."""
    with live_server(create_app, config=LIMITS if config is None else config, **server) as srv:
        for case in cases:
            _expect_error(srv, case)
        r = srv.get("/health")
        if r.status_code != 200:
            raise CheckFailed(f"after the bad requests, {_describe('GET', '/health', r)}; the server should still be healthy.")


def _expect_error(srv, case: dict) -> None:
    method, path, status = case.get("method", "POST"), case["path"], case["status"]
    kwargs = {k: case[k] for k in ("json", "data", "headers") if k in case}
    r = srv.request(method, path, **kwargs)
    what = f"{method} {path} with {case['why']}"
    if r.status_code != status:
        raise CheckFailed(
            f"{what} returned {r.status_code}; expected {status} with a JSON error. Body: {r.text[:200]!r}"
        )
    body = _json_body(method, path, r)
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"].strip():
        raise CheckFailed(f"{what} returned {status} as expected, but the body should be {{\"error\": \"<message>\"}}; it was {body!r}.")
    mentions = case.get("mentions")
    if mentions and mentions.lower() not in body["error"].lower():
        raise CheckFailed(f"{what}: the error message should name {mentions!r}; it was {body['error']!r}.")


def _fuzz_problem(r) -> str | None:
    """What is wrong with a fuzzed request's answer, or None."""
    if r.status_code >= 500:
        return f"returned {r.status_code}; no request a client can send may cause a 5xx"
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            return f"returned {r.status_code} with {r.text[:120]!r}; errors must be JSON {{\"error\": \"...\"}}"
    return None


def check_fuzz(create_app, examples: int = 150, config=None, **server) -> int:
    """Generated requests, valid and invalid, from the API's OpenAPI document: no 5xx, JSON errors.

    The requests come from ``server_stub.openapi.spec()`` through schemathesis and Hypothesis
    (derandomized, so a run is repeatable). Returns the number of requests sent; raises
    :class:`CheckFailed` naming up to three requests that broke the rule.
    """
    import warnings

    with warnings.catch_warnings():
        # Nothing may reach a test cell's stderr, Hypothesis' and schemathesis' notes included.
        warnings.simplefilter("ignore")
        import schemathesis
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import strategies as st

        from server_stub.openapi import spec

        limits = LIMITS if config is None else config
        schema = schemathesis.openapi.from_dict(spec(max_batch=limits.get("MAX_BATCH", 64)))
        strategy = st.one_of(
            schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
            schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        )
        sent, failures = [], []
        with live_server(create_app, config=limits, **server) as srv:

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate])
            @given(case=strategy)
            def run(case):
                where = f"{case.method} {case.formatted_path}"
                try:
                    r = case.call(base_url=srv.base_url, session=srv.session, timeout=5)
                except Exception as exc:  # noqa: BLE001 - a hang or a dropped connection
                    problem = f"got no answer ({type(exc).__name__})"
                else:
                    problem = _fuzz_problem(r)
                sent.append(where)
                if problem and len(failures) < 3:
                    body = case.body if not isinstance(case.body, (bytes, str)) else case.body[:80]
                    failures.append(f"{where} with body {body!r}: {problem}")

            run()
    if failures:
        raise CheckFailed(f"{len(sent)} generated requests; these broke the rule:\n" + "\n".join(failures))
    return len(sent)


def big_batch(n: int) -> dict:
    """A request body with ``n`` copies of one valid instance."""
    return {"instances": [[5.1, 3.5, 1.4, 0.2]] * n}
