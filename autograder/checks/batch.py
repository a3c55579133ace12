"""Checks for notebook 07: the same model scoring a file in batch and answering requests online.

The batch job under test is ``score_file(input_csv, output_csv, model_dir, chunk_size)``; the
online client is ``predict_online(base_url, input_csv, batch_size)``. Both run in a child
process (:func:`autograder.isolate.run_isolated`); the judge reads the output file as text
and compares it with what the finished handler, or the live API, gives for the same rows.

A case is a dict::

    {"why": "ids that are not numbers", "rows": [["a-1", "5.1", "3.5", "1.4", "0.2"], ...],
     "chunk_size": 3, "bad": {2: "sepal_width"}}

``rows`` are the raw CSV fields of each data row (written with the csv module under the
header ``header``, default ``id`` plus the four features); ``[]`` is a blank line. Instead of
``header`` and ``rows``, ``text`` gives the whole file verbatim. ``bad`` maps the index of
each row that cannot be scored to a word its error must contain (or ``""``). A case with
``raises`` (an exception name) expects ``score_file`` to raise it, optionally with
``mentions`` in the message, and to leave no output file behind.
"""
from __future__ import annotations

import csv
import io
import math
import shutil
import tempfile
from pathlib import Path

from autograder.checks.handler import reference
from autograder.errors import CheckFailed, NotAnswered
from autograder.harness import DEFAULT_MODEL_DIR, live_server
from autograder.isolate import describe_exception, run_isolated
from server_stub.model import FEATURES

ID = "id"
INPUT_HEADER = [ID, *FEATURES]
OUTPUT_HEADER = ["id", "label", "confidence", "error"]
# Confidences are written as text with at least 6 decimals.
TOL = 1e-5
MAX_BATCH = 64


# --- input files ----------------------------------------------------------------------------


def iris_rows(seed: int = 0, id_format: str = "{}") -> list[list[str]]:
    """The 150 iris rows as CSV fields ``[id, *features]``, in a shuffled order.

    Ids are the row numbers 1..150 formatted with ``id_format`` (e.g. ``"f-{:03d}"``), so
    they do not follow the order of the file.
    """
    import numpy as np
    from sklearn.datasets import load_iris

    data = load_iris().data
    order = np.random.default_rng(seed).permutation(len(data))
    return [[id_format.format(int(i) + 1), *(repr(float(v)) for v in data[i])] for i in order]


def write_input(path: str | Path, rows: list, header: list[str] | None = None) -> Path:
    """Write ``rows`` (lists of fields; ``[]`` for a blank line) under ``header`` as a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(INPUT_HEADER if header is None else header)
        for row in rows:
            if row:
                writer.writerow(row)
            else:
                f.write("\r\n")
    return path


def read_csv_text(text: str) -> list[list[str]]:
    """All records of a CSV text (header first), as the csv module reads them."""
    return list(csv.reader(io.StringIO(text, newline="")))


def _write_case(case: dict, path: Path) -> None:
    if "text" in case:
        path.write_text(case["text"], encoding="utf-8")
    else:
        write_input(path, case["rows"], case.get("header"))


def _records(case: dict) -> tuple[list[str], list[list[str]]]:
    """The header and the non-blank data rows of a case, as a reader of the file sees them."""
    if "text" in case:
        records = read_csv_text(case["text"])
        header, rows = (records[0], records[1:]) if records else (INPUT_HEADER, [])
    else:
        header, rows = case.get("header") or INPUT_HEADER, case["rows"]
    return header, [r for r in rows if r]


def _good_instances(case: dict) -> dict[int, list[float]]:
    """Row index -> feature values, for the rows the case does not mark as bad."""
    header, rows = _records(case)
    where = [header.index(name) for name in FEATURES]
    bad = {int(k) for k in case.get("bad", {})}
    return {i: [float(row[k]) for k in where] for i, row in enumerate(rows) if i not in bad}


# --- the reference server -------------------------------------------------------------------


def create_app(handler, config=None):
    """A finished predict API (the contract of notebook 05, reduced to what 07 needs).

    ``GET /health``, ``POST /predict`` and ``POST /v1/models/<name>:predict``; JSON errors;
    at most ``MAX_BATCH`` instances per request (413 above it).
    """
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException

    from server_stub.handler import HandlerError

    app = Flask(__name__)
    app.config.update({"MAX_CONTENT_LENGTH": 1024 * 1024, "MAX_BATCH": MAX_BATCH, **(config or {})})

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return jsonify({"error": exc.description}), exc.code

    @app.errorhandler(HandlerError)
    def handler_error(exc):
        return jsonify({"error": exc.message}), exc.status

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    def predict():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
            return jsonify({"error": "the body must be JSON {\"instances\": [...]} with at least one instance"}), 400
        instances = body["instances"]
        if len(instances) > app.config["MAX_BATCH"]:
            return jsonify({"error": f"{len(instances)} instances; the limit is {app.config['MAX_BATCH']}"}), 413
        return jsonify({"predictions": handler.handle([{"body": x} for x in instances], handler.context)})

    @app.post("/v1/models/<model>:predict")
    def predict_model(model):
        if model != handler.context.model_name:
            return jsonify({"error": f"unknown model {model!r}"}), 404
        return predict()

    app.add_url_rule("/predict", "predict", predict, methods=["POST"])
    return app


def api_predictions(server, instances: list[list[float]]) -> list[dict]:
    """Predictions from a running API for ``instances``, sent in requests of at most MAX_BATCH."""
    out = []
    for start in range(0, len(instances), MAX_BATCH):
        chunk = instances[start:start + MAX_BATCH]
        r = server.post("/predict", json={"instances": chunk})
        if r.status_code != 200:
            raise CheckFailed(f"the reference API answered {r.status_code}: {r.text[:200]}")
        out.extend(r.json()["predictions"])
    return out


# --- running the learner's code -------------------------------------------------------------


def _run_cases(score_file, input_paths: list[str], output_paths: list[str], chunk_sizes: list, model_dir: str) -> list:
    """Child side: call ``score_file`` on each input; record its result, its output and the model calls."""
    import os

    from sklearn.pipeline import Pipeline

    descriptor = Pipeline.__dict__["predict_proba"]
    batches: list[int] = []

    def counting_predict_proba(self, X, **kwargs):
        batches.append(len(X))
        return descriptor.__get__(self, type(self))(X, **kwargs)

    Pipeline.predict_proba = counting_predict_proba

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "item") and callable(value.item):
            return value.item()
        return value

    results = []
    for source, dest, chunk_size in zip(input_paths, output_paths, chunk_sizes):
        batches.clear()
        try:
            value = plain(score_file(source, dest, model_dir, chunk_size))
            outcome = {"returned": value}
        except Exception as exc:  # noqa: BLE001 - the judge decides whether this was expected
            outcome = {"raised": {**describe_exception(exc), "classes": [c.__name__ for c in type(exc).__mro__]}}
        outcome["batches"] = list(batches)
        if os.path.isfile(dest):
            with open(dest, encoding="utf-8", errors="replace", newline="") as f:
                outcome["output"] = f.read()
        else:
            outcome["output"] = None
        results.append(outcome)
    return results


def _observe(score_file, cases: list[dict], model_dir) -> list[dict]:
    from server_stub.model import ensure_model

    model_dir = ensure_model(model_dir or DEFAULT_MODEL_DIR).resolve()
    workdir = Path(tempfile.mkdtemp(prefix="servelab-batch-"))
    try:
        inputs, outputs = [], []
        for i, case in enumerate(cases):
            source = workdir / f"in{i}" / "input.csv"
            source.parent.mkdir()
            _write_case(case, source)
            inputs.append(str(source))
            outputs.append(str(workdir / f"in{i}" / "scored.csv"))
        chunks = [case.get("chunk_size", 32) for case in cases]
        results = run_isolated(_run_cases, score_file, inputs, outputs, chunks, str(model_dir), timeout=30, what="your score_file")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not isinstance(results, list) or len(results) != len(cases):
        raise CheckFailed("score_file could not be observed (the test process returned something unexpected).")
    return results


def _call(case: dict) -> str:
    return f"score_file on {case['why']} (chunk_size={case.get('chunk_size', 32)!r})"


def _finished(case: dict, outcome: dict) -> list[list[str]]:
    """The output records after a call that must succeed; raises when it did not."""
    call = _call(case)
    if "raised" in outcome:
        r = outcome["raised"]
        if r["type"] == "NotImplementedError":
            raise NotAnswered("score_file raised NotImplementedError: write it, then run its cell again.")
        raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
    if outcome["output"] is None:
        raise CheckFailed(f"{call} wrote no output file.")
    records = read_csv_text(outcome["output"])
    if not records or records[0] != OUTPUT_HEADER:
        raise CheckFailed(f"{call}: the output should start with the header {','.join(OUTPUT_HEADER)}; it starts with {records[:1]!r}.")
    return records[1:]


def _expect_ids(case: dict, outcome: dict) -> list[list[str]]:
    call = _call(case)
    out = _finished(case, outcome)
    header, rows = _records(case)
    where = header.index(ID) if ID in header else 0
    want = [row[where] if where < len(row) else "" for row in rows]
    got = [row[0] if row else "" for row in out]
    if len(got) != len(want):
        missing = [x for x in want if x not in got][:5]
        raise CheckFailed(
            f"{call}: the input has {len(want)} rows, the output {len(got)}; every input row needs exactly one output row"
            + (f" (missing ids include {missing})." if missing else ".")
        )
    for i, (w, g) in enumerate(zip(want, got)):
        if w != g:
            raise CheckFailed(
                f"{call}: output row {i + 1} has id {g!r}; expected {w!r}, the id of input row {i + 1}, unchanged "
                "and in input order."
            )
    for i, row in enumerate(out):
        if len(row) != len(OUTPUT_HEADER):
            raise CheckFailed(f"{call}: output row {i + 1} has {len(row)} fields {row!r}; expected 4: id,label,confidence,error.")
    return out


def _expect_summary(case: dict, outcome: dict) -> None:
    _, rows = _records(case)
    bad = len(case.get("bad", {}))
    want = {"rows": len(rows), "scored": len(rows) - bad, "errors": bad}
    if outcome["returned"] != want:
        raise CheckFailed(f"{_call(case)} returned {outcome['returned']!r}; expected {want}.")


def _expect_scores(case: dict, out: list[list[str]], expected: dict[int, dict]) -> None:
    call = _call(case)
    for i, want in expected.items():
        row_id, label, confidence, error = out[i]
        if error:
            raise CheckFailed(f"{call}: row {i + 1} (id {row_id!r}) is valid but got the error {error!r}.")
        if label != want["label"]:
            raise CheckFailed(f"{call}: row {i + 1} (id {row_id!r}) has label {label!r}; the model says {want['label']!r}.")
        try:
            value = float(confidence)
        except ValueError:
            raise CheckFailed(f"{call}: row {i + 1} (id {row_id!r}) has confidence {confidence!r}, not a number.") from None
        if not math.isclose(value, want["confidence"], abs_tol=TOL):
            raise CheckFailed(
                f"{call}: row {i + 1} (id {row_id!r}) has confidence {confidence}; the model says "
                f"{want['confidence']:.6f}. Write it with at least 6 decimals."
            )


def _reference_scores(case: dict, model_dir) -> dict[int, dict]:
    good = _good_instances(case)
    if not good:
        return {}
    results = reference(model_dir).handle([{"body": x} for x in good.values()], None)
    return dict(zip(good, results))


# --- the checks -----------------------------------------------------------------------------


def check_keeps_ids(score_file, cases: list[dict], model_dir=None) -> None:
    """Every input row has exactly one output row, with its id unchanged, in input order; the summary counts them."""
    for case, outcome in zip(cases, _observe(score_file, cases, model_dir)):
        _expect_ids(case, outcome)
        _expect_summary(case, outcome)


def check_matches_api(score_file, cases: list[dict], model_dir=None) -> None:
    """The batch output's label and confidence for every valid row equal the live API's answer for it."""
    outcomes = _observe(score_file, cases, model_dir)
    outputs = [_expect_ids(case, outcome) for case, outcome in zip(cases, outcomes)]
    with live_server(create_app, model_dir=model_dir) as server:
        for case, out in zip(cases, outputs):
            good = _good_instances(case)
            answers = api_predictions(server, list(good.values()))
            _expect_scores(case, out, dict(zip(good, answers)))


def check_bad_rows(score_file, cases: list[dict], model_dir=None) -> None:
    """Rows that cannot be scored keep their id, get an error naming the problem, and empty label and confidence.

    Cases with ``raises`` must raise that exception and leave no output file.
    """
    for case, outcome in zip(cases, _observe(score_file, cases, model_dir)):
        call = _call(case)
        if "raises" in case:
            if "raised" not in outcome:
                raise CheckFailed(f"{call} should raise {case['raises']}; it returned {outcome['returned']!r}.")
            r = outcome["raised"]
            if r["type"] == "NotImplementedError":
                raise NotAnswered("score_file raised NotImplementedError: write it, then run its cell again.")
            if case["raises"] not in r["classes"]:
                raise CheckFailed(f"{call} raised {r['type']}: {r['message']}; expected {case['raises']}.")
            mentions = case.get("mentions")
            if mentions and mentions.lower() not in r["message"].lower():
                raise CheckFailed(f"{call}: the {r['type']} message should name {mentions!r}; it was {r['message']!r}.")
            if outcome["output"] is not None:
                raise CheckFailed(f"{call} raised {r['type']} as it should, but left an output file behind; check the input before creating the output.")
            continue
        out = _expect_ids(case, outcome)
        for i, mentions in case.get("bad", {}).items():
            row_id, label, confidence, error = out[int(i)]
            if not error.strip():
                raise CheckFailed(f"{call}: row {int(i) + 1} (id {row_id!r}) cannot be scored, but its error field is empty (label {label!r}).")
            if label or confidence:
                raise CheckFailed(f"{call}: row {int(i) + 1} (id {row_id!r}) has an error, so label and confidence should be empty; they are {label!r}, {confidence!r}.")
            if mentions and mentions.lower() not in error.lower():
                raise CheckFailed(f"{call}: the error for row {int(i) + 1} (id {row_id!r}) should name {mentions!r}; it is {error!r}.")
        _expect_scores(case, out, _reference_scores(case, model_dir))
        _expect_summary(case, outcome)


def check_chunks(score_file, cases: list[dict], model_dir=None) -> None:
    """The model is called once per chunk: at most ``chunk_size`` rows a call, every valid row exactly once."""
    for case, outcome in zip(cases, _observe(score_file, cases, model_dir)):
        _finished(case, outcome)
        call, chunk = _call(case), case["chunk_size"]
        _, rows = _records(case)
        batches = outcome["batches"]
        good = len(rows) - len(case.get("bad", {}))
        if good and not batches:
            raise CheckFailed(f"{call} never called the model's predict_proba (through the handler or directly).")
        if any(n > chunk for n in batches):
            raise CheckFailed(f"{call} called the model on {max(batches)} rows at once; a chunk holds at most {chunk}.")
        if sum(batches) != good:
            raise CheckFailed(f"{call} sent {sum(batches)} rows through the model in total; expected each of the {good} valid rows exactly once.")
        most = math.ceil(len(rows) / chunk)
        if len(batches) > most:
            raise CheckFailed(f"{call} called the model {len(batches)} times for {len(rows)} rows; at most one call per chunk ({most}).")


def _run_client(predict_online, base_url: str, path: str, batch_size) -> dict:
    try:
        return {"returned": predict_online(base_url, path, batch_size)}
    except Exception as exc:  # noqa: BLE001
        return {"raised": describe_exception(exc)}


def check_online(predict_online, cases: list[dict], model_dir=None) -> None:
    """``predict_online`` returns one result per input row, matching the API, with the API's error for bad rows.

    The reference API runs with ``MAX_BATCH`` equal to the case's ``batch_size``, so a client
    that sends more instances per request gets 413.
    """
    workdir = Path(tempfile.mkdtemp(prefix="servelab-online-"))
    try:
        for i, case in enumerate(cases):
            batch_size = case.get("batch_size", 32)
            source = workdir / f"online{i}.csv"
            _write_case(case, source)
            call = f"predict_online on {case['why']} (batch_size={batch_size})"
            with live_server(create_app, model_dir=model_dir, config={"MAX_BATCH": batch_size}) as server:
                outcome = run_isolated(_run_client, predict_online, server.base_url, str(source), batch_size, timeout=30, what="your predict_online")
            if "raised" in outcome:
                r = outcome["raised"]
                if r["type"] == "NotImplementedError":
                    raise NotAnswered("predict_online raised NotImplementedError: write it, then run its cell again.")
                raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
            _judge_online(case, call, outcome["returned"], model_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _judge_online(case: dict, call: str, got, model_dir) -> None:
    header, rows = _records(case)
    where = header.index(ID) if ID in header else 0
    if not isinstance(got, list) or len(got) != len(rows):
        size = len(got) if isinstance(got, list) else type(got).__name__
        raise CheckFailed(f"{call} should return a list with one result per input row ({len(rows)}); it returned {size}.")
    expected = _reference_scores(case, model_dir)
    bad = {int(k): v for k, v in case.get("bad", {}).items()}
    for i, (row, item) in enumerate(zip(rows, got)):
        keys = {"id", "label", "confidence", "error"}
        if not isinstance(item, dict) or set(item) != keys:
            raise CheckFailed(f"{call}: result {i} should be a dict with exactly the keys {sorted(keys)}; it is {item!r}.")
        if item["id"] != row[where]:
            raise CheckFailed(f"{call}: result {i} has id {item['id']!r}; expected {row[where]!r}, in input order.")
        if i in bad:
            if item["label"] is not None or item["confidence"] is not None:
                raise CheckFailed(f"{call}: row {i + 1} (id {item['id']!r}) is rejected by the API, so label and confidence should be None; got {item!r}.")
            if not isinstance(item["error"], str) or not item["error"].strip():
                raise CheckFailed(f"{call}: row {i + 1} (id {item['id']!r}) is rejected by the API; its error should be the API's message, got {item['error']!r}.")
            if bad[i] and bad[i].lower() not in item["error"].lower():
                raise CheckFailed(f"{call}: the error for row {i + 1} should be the API's message, which names {bad[i]!r}; it is {item['error']!r}.")
            continue
        want = expected[i]
        if item["error"] is not None:
            raise CheckFailed(f"{call}: row {i + 1} (id {item['id']!r}) is valid but got the error {item['error']!r}.")
        if item["label"] != want["label"]:
            raise CheckFailed(f"{call}: row {i + 1} (id {item['id']!r}) has label {item['label']!r}; the API says {want['label']!r}.")
        confidence = item["confidence"]
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isclose(confidence, want["confidence"], abs_tol=1e-9):
            raise CheckFailed(f"{call}: row {i + 1} (id {item['id']!r}) has confidence {confidence!r}; the API says {want['confidence']!r}.")
