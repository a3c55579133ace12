"""autograder.checks.tracking (notebook 10) on the solution and on answers that are wrong in one way each."""
from __future__ import annotations

import pytest

from autograder.checks import tracking
from autograder.errors import CheckFailed, NotAnswered

from conftest import load_solution_module


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    return load_solution_module("10_experiment_tracking.ipynb", tmp_path_factory.mktemp("sol10"))


@pytest.fixture(scope="module", autouse=True)
def empty_database():
    """One empty MLflow database for every store in this file (creating one takes seconds)."""
    tracking.prepare_template()


# --- data_fingerprint -----------------------------------------------------------------------

FINGERPRINT_CASES = [
    {"why": "lists", "a": "iris", "b": "lists", "same": True},
    {"why": "another process", "a": "iris", "b": "iris@other", "same": True},
    {"why": "Fortran order", "a": "iris", "b": "fortran", "same": True},
    {"why": "one value changed", "a": "iris", "b": "bump", "same": False},
    {"why": "swapped rows", "a": "iris", "b": "swap_rows", "same": False},
    {"why": "reshaped", "a": "iris", "b": "reshaped", "same": False},
    {"why": "one label changed", "a": "iris", "b": "relabel", "same": False},
]


def test_the_solution_fingerprint_passes(solution):
    tracking.check_fingerprint(solution.data_fingerprint, FINGERPRINT_CASES)


def fingerprint_without_shape(X, y):
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(X, dtype="<f8").tobytes() + np.ascontiguousarray(y, dtype="<i8").tobytes()).hexdigest()


def fingerprint_of_text(X, y):
    import hashlib

    return hashlib.sha256((str(X) + str(y)).encode()).hexdigest()


def fingerprint_with_hash(X, y):
    import numpy as np

    return format(hash(np.asarray(X).tobytes()) % 16 ** 64, "064x")


def fingerprint_as_int(X, y):
    import numpy as np

    return hash(np.asarray(X).tobytes())


@pytest.mark.parametrize("wrong, message", [
    (fingerprint_without_shape, r"the same numbers as 75 rows of 8|reshaped: different data should give a different fingerprint"),
    (fingerprint_of_text, "lists: the same data should give the same fingerprint"),
    (fingerprint_with_hash, "another process: the same data should give the same fingerprint"),
    (fingerprint_as_int, "should return a str of 64 hex digits; it returned a int"),
])
def test_a_wrong_fingerprint_fails(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        tracking.check_fingerprint(wrong, FINGERPRINT_CASES)


# --- log_runs -------------------------------------------------------------------------------

RUN_CASES = [
    {"why": "two points", "experiment": "a", "grid": {"C": [0.1, 1.0]}, "seed": 0},
    {"why": "two keys, seed 3", "experiment": "b", "grid": {"fit_intercept": [True, False], "C": [2.0]}, "seed": 3},
    {"why": "again on b", "experiment": "b", "grid": {"fit_intercept": [True, False], "C": [2.0]}, "seed": 3},
]


def test_the_solution_logs_the_runs(solution):
    tracking.check_log_runs(solution.log_runs, RUN_CASES)


def make_log_runs(train_metrics=False, always_create=False):
    """A log_runs that is right unless one of the flags breaks it in one way."""

    def log_runs(tracking_uri, experiment_name, grid, artifact_location=None, seed=0):
        import hashlib

        import mlflow
        import mlflow.sklearn
        from sklearn.datasets import load_iris
        from sklearn.metrics import accuracy_score, log_loss
        from sklearn.model_selection import ParameterGrid, train_test_split

        from autograder.checks.tracking import make_model

        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        exp = None if always_create else client.get_experiment_by_name(experiment_name)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name, artifact_location=artifact_location)
        X, y = load_iris(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
        X_eval, y_eval = (X_train, y_train) if train_metrics else (X_test, y_test)
        ids = []
        for params in ParameterGrid(grid):
            model = make_model(params, seed).fit(X_train, y_train)
            with mlflow.start_run(experiment_id=exp_id) as run:
                mlflow.log_params({**params, "seed": seed})
                mlflow.log_metrics({"accuracy": accuracy_score(y_eval, model.predict(X_eval)),
                                    "log_loss": log_loss(y_eval, model.predict_proba(X_eval))})
                mlflow.set_tag("data_sha256", hashlib.sha256(X_train.tobytes()).hexdigest())
                mlflow.sklearn.log_model(model, name="model")
            ids.append(run.info.run_id)
        return ids

    return log_runs


@pytest.mark.parametrize("flags, cases, message", [
    ({"train_metrics": True}, RUN_CASES[:1], r"run 0 .* logged accuracy=.*; the model for .* gives .* on its held-out 30 %"),
])
def test_a_wrong_log_runs_fails(flags, cases, message):
    with pytest.raises(CheckFailed, match=message):
        tracking.check_log_runs(make_log_runs(**flags), cases)


def observed(**run_changes):
    """What the store reader reports for a right one-point call, with ``run_changes`` applied to its run."""
    reference = {"params": {"C": "1.0"}, "accuracy": 0.9, "log_loss": 0.3, "proba": [[0.9, 0.1, 0.0]]}
    run = {"status": "FINISHED", "params": {"C": "1.0", "seed": "0"}, "metrics": {"accuracy": 0.9, "log_loss": 0.3},
           "tags": {"data_sha256": "a" * 64}, "models": [{"name": "model", "artifact_location": "file:///s/m"}],
           "loaded": {"proba": [[0.9, 0.1, 0.0]]}, **run_changes}
    return {"exists": True, "artifact_location": "file:///s/a", "runs": {"r1": run}, "reference": [reference]}


CALL = {"why": "one point", "experiment": "a", "grid": {"C": [1.0]}, "seed": 0, "artifact_location": "file:///s/a"}


def test_the_judge_accepts_a_right_observation():
    tracking._judge_call(CALL, {"returned": ["r1"]}, observed())


@pytest.mark.parametrize("outcome, changes, store_changes, message", [
    ({"returned_other": "str: 'r1'"}, {}, {}, "should return the list of run ids"),
    ({"returned": ["r1"]}, {"models": []}, {}, "exactly one logged model named 'model'"),
    ({"returned": ["r1"]}, {"params": {"C": "1.0"}}, {}, "should have param seed='0'"),
    ({"returned": ["r1"]}, {"status": "RUNNING"}, {}, "has status RUNNING; end every run"),
    ({"returned": ["r1"]}, {"tags": {}}, {}, "should have the tag data_sha256"),
    ({"returned": ["r1"]}, {"loaded": {"error": "it is saved as 'cloudpickle'; keep MLflow's default format, skops"}}, {}, "keep MLflow's default format, skops"),
    ({"returned": ["r1"]}, {"loaded": {"proba": [[0.1, 0.9, 0.0]]}}, {}, "log the model you trained and measured"),
    ({"returned": ["r1"]}, {}, {"artifact_location": "/elsewhere/mlruns/1"}, "create it with artifact_location='file:///s/a'"),
])
def test_the_judge_names_what_is_wrong(outcome, changes, store_changes, message):
    with pytest.raises(CheckFailed, match=message):
        tracking._judge_call(CALL, outcome, {**observed(**changes), **store_changes})


def test_artifact_locations_outside_the_store_are_refused(tmp_path):
    root = tmp_path / "store"
    (root / "artifacts" / "1").mkdir(parents=True)
    assert tracking._local_path(str(root), "mlflow-artifacts:/1") == (root / "artifacts" / "1").resolve()
    assert tracking._local_path(str(root), (root / "artifacts").as_uri()) == (root / "artifacts").resolve()
    assert tracking._local_path(str(root), "/etc") is None
    assert tracking._local_path(str(root), "mlflow-artifacts:/../../etc") is None


def test_an_unwritten_log_runs_is_not_answered():
    def log_runs(tracking_uri, experiment_name, grid, artifact_location=None, seed=0):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        tracking.check_log_runs(log_runs, RUN_CASES[:1])


# --- register_best --------------------------------------------------------------------------

REGISTER_CASES = [
    {"why": "a tie", "metric": "accuracy", "greater": True, "best": 2,
     "runs": [{"metrics": {"accuracy": 0.9}, "start": 10}, {"metrics": {"accuracy": 0.96}, "start": 30}, {"metrics": {"accuracy": 0.96}, "start": 20}]},
    {"why": "a loss and a failed run", "metric": "log_loss", "greater": False, "best": 1,
     "runs": [{"metrics": {"log_loss": 0.3}}, {"metrics": {"log_loss": 0.1}}, {"metrics": {"log_loss": 0.01}, "status": "FAILED"}]},
    {"why": "twice", "metric": "accuracy", "greater": True, "best": 0, "times": 2, "runs": [{"metrics": {"accuracy": 0.9}}]},
    {"why": "no metric", "metric": "f1", "greater": True, "raises": "ValueError", "runs": [{"metrics": {"accuracy": 0.9}}]},
]


def test_the_solution_registers_the_best_run(solution):
    tracking.check_register_best(solution.register_best, REGISTER_CASES)


def make_register_best(no_tie_break=False):
    """A register_best that is right unless one of the flags breaks it in one way."""

    def register_best(tracking_uri, experiment_name, model_name, metric="accuracy", greater_is_better=True):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment_name)
        order = [f"metrics.`{metric}` {'DESC' if greater_is_better else 'ASC'}"] + ([] if no_tie_break else ["attributes.start_time ASC"])
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", order_by=order)
        runs = [r for r in runs if metric in r.data.metrics]
        if not runs:
            raise ValueError("no run has the metric")
        best = runs[0]
        mv = mlflow.register_model(f"runs:/{best.info.run_id}/model", model_name)
        client.set_registered_model_alias(model_name, "champion", mv.version)
        return {"run_id": best.info.run_id, "version": int(mv.version), "value": best.data.metrics[metric]}

    return register_best


def test_a_register_best_without_a_tie_break_fails():
    with pytest.raises(CheckFailed, match=r"chose run 1 .*; the best is run 2 .*ties going to the run that started first"):
        tracking.check_register_best(make_register_best(no_tie_break=True), REGISTER_CASES[:1])


TWICE = [{"why": "twice", "metric": "accuracy", "greater": True, "best": 1, "times": 2,
          "runs": [{"metrics": {"accuracy": 0.8}}, {"metrics": {"accuracy": 0.9}}]}]
TWICE_CALLS = [{"case": 0}, {"case": 0}]
MADE = {"exp-0": ["r0", "r1"]}


def returned(version, run_id="r1", value=0.9):
    return {"returned": {"run_id": run_id, "version": version, "value": value}}


def test_the_registry_judge_accepts_a_right_observation():
    registry = {"iris-0": {"versions": {"1": "r1", "2": "r1"}, "aliases": {"champion": "2"}}}
    tracking._judge_registrations(TWICE, TWICE_CALLS, [returned(1), returned(2)], MADE, registry)


@pytest.mark.parametrize("got, registry, message", [
    ([returned(1), returned("2")], None, r"\(call 2\) returned version '2'; expected 2 \(an int"),
    ([returned(1), returned(1)], None, r"\(call 2\) returned version 1; expected 2"),
    ([returned(1), returned(2, value=0.8)], None, "returned value 0.8; the best run's accuracy is 0.9"),
    ([returned(1), {"returned": {"run_id": "r1", "version": 2}}], None, "exactly the keys run_id, version and value"),
    ([returned(1), returned(2)], {"iris-0": {"versions": {"1": "r1", "2": "r1"}, "aliases": {}}}, "'champion' should point at version 2"),
    ([returned(1), returned(2)], {"iris-0": {"versions": {"1": "r1", "2": "r1"}, "aliases": {"champion": "1"}}}, "'champion' should point at version 2"),
    ([returned(1), returned(2)], {"iris-0": {"versions": {"1": "r1"}, "aliases": {"champion": "1"}}}, r"has versions \{'1': 'r1'\}"),
    ([returned(1), returned(2)], {"iris-0": None}, "does not exist; register the run's model"),
])
def test_the_registry_judge_names_what_is_wrong(got, registry, message):
    registry = registry or {"iris-0": {"versions": {"1": "r1", "2": "r1"}, "aliases": {"champion": "2"}}}
    with pytest.raises(CheckFailed, match=message):
        tracking._judge_registrations(TWICE, TWICE_CALLS, got, MADE, registry)


def test_a_failed_run_or_a_missing_metric_never_wins():
    case = [{"why": "a failed run", "metric": "accuracy", "greater": True, "best": 0,
             "runs": [{"metrics": {"accuracy": 0.9}}, {"metrics": {"accuracy": 0.99}, "status": "FAILED"}]}]
    with pytest.raises(CheckFailed, match=r"chose run 1 \(.*FAILED.*\); the best is run 0"):
        tracking._judge_registrations(case, [{"case": 0}], [returned(1, run_id="r1", value=0.99)], {"exp-0": ["r0", "r1"]}, {})
    nothing = [{"why": "no metric", "metric": "f1", "greater": True, "raises": "ValueError", "runs": [{"metrics": {"accuracy": 0.9}}]}]
    with pytest.raises(CheckFailed, match=r"should raise ValueError \(no finished run has the metric\)"):
        tracking._judge_registrations(nothing, [{"case": 0}], [returned(1, run_id="r0")], {"exp-0": ["r0"]}, {})


# --- create_app -----------------------------------------------------------------------------

SERVE_CASES = [
    {"why": "version 1", "version": 1, "errors": [
        {"path": "/v1/models/{name}:predict", "data": '{"instances": [', "headers": {"Content-Type": "application/json"}, "status": 400},
        {"method": "GET", "path": "/v1/models/other", "status": 404},
    ]},
    {"why": "the champion", "version": "champion"},
]


def test_the_solution_serves_the_version_asked_for(solution):
    tracking.check_serves_version(solution.create_app, SERVE_CASES)


def make_create_app(latest=False):
    """A create_app that is right unless one of the flags breaks it in one way."""

    def create_app(tracking_uri, model_name, version):
        import mlflow
        import mlflow.sklearn
        from flask import Flask, jsonify, request

        client = mlflow.MlflowClient(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        if latest:
            found = max(client.search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version))
        elif isinstance(version, str) and not version.isdigit():
            found = client.get_model_version_by_alias(model_name, version)
        else:
            found = client.get_model_version(model_name, str(version))
        model = mlflow.sklearn.load_model(f"models:/{model_name}/{found.version}")
        app = Flask(__name__)

        @app.get("/v1/models/<name>")
        def describe(name):
            if name != model_name:
                return jsonify({"error": "unknown model"}), 404
            return jsonify({"name": model_name, "version": str(found.version), "run_id": found.run_id})

        @app.post("/v1/models/<name>:predict")
        def predict(name):
            if name != model_name:
                return jsonify({"error": "unknown model"}), 404
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
                return jsonify({"error": "bad body"}), 400
            return jsonify({"predictions": model.predict(body["instances"]).tolist(), "version": str(found.version)})

        return app

    return create_app


def test_an_app_that_serves_the_latest_version_fails():
    with pytest.raises(CheckFailed, match=r"GET /v1/models/iris-classifier answered .*'version': '2'.*; expected name 'iris-classifier', version '1'"):
        tracking.check_serves_version(make_create_app(latest=True), SERVE_CASES[:1])


class Answer:
    """The parts of a ``requests.Response`` the judges read."""

    def __init__(self, status_code, text):
        self.status_code, self.text = status_code, text

    def json(self):
        import json

        return json.loads(self.text)


class InProcess:
    """The judges' view of a server (``get``, ``post``, ``request``), on a Flask test client."""

    def __init__(self, app):
        self.client = app.test_client()

    def request(self, method, path, **kwargs):
        r = self.client.open(path, method=method, **kwargs)
        return Answer(r.status_code, r.get_data(as_text=True))

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)


def toy_app(version="1", predictions=(0, 1, 2, 2, 0), html_errors=False, report=None):
    """A served 'model' that answers fixed predictions: enough to exercise the judges."""
    from flask import Flask, jsonify, request

    app = Flask(__name__)

    @app.get("/v1/models/<name>")
    def describe(name):
        if name != "m":
            return jsonify({"error": "unknown model"}), 404
        return jsonify(report or {"name": "m", "version": version, "run_id": "r1"})

    @app.post("/v1/models/<name>:predict")
    def predict(name):
        body = request.get_json() if html_errors else request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            return jsonify({"error": "bad body"}), 400
        return jsonify({"predictions": list(predictions), "version": version})

    return app


V1, V2 = [0, 1, 2, 2, 0], [1, 2, 0, 0, 1]
MALFORMED = {"path": "/v1/models/{name}:predict", "data": '{"instances": [', "headers": {"Content-Type": "application/json"}, "status": 400}


def test_the_serving_judges_accept_a_right_app():
    server = InProcess(toy_app())
    tracking._judge_version(server, "call", "m", "1", "r1", V1, V2)
    tracking._judge_errors(server, "call", "m", [MALFORMED, {"method": "GET", "path": "/v1/models/x", "status": 404}])


@pytest.mark.parametrize("app, message", [
    (toy_app(predictions=V2), r"the predictions \[1, 2, 0, 0, 1\] are the other version's; serve version 1"),
    (toy_app(predictions=[0, 0, 0, 0, 0]), r"gave \[0, 0, 0, 0, 0\]; version 1's model predicts \[0, 1, 2, 2, 0\]"),
    (toy_app(version="2", report={"name": "m", "version": "1", "run_id": "r1"}), r"the predict answer should say which version answered"),
    (toy_app(report={"name": "m", "version": "1"}), r"expected name 'm', version '1' and the run id of version 1, 'r1'"),
])
def test_the_version_judge_names_what_is_wrong(app, message):
    with pytest.raises(CheckFailed, match=message):
        tracking._judge_version(InProcess(app), "call", "m", "1", "r1", V1, V2)


def test_html_error_pages_fail_the_error_judge():
    with pytest.raises(CheckFailed, match=r"errors should be JSON"):
        tracking._judge_errors(InProcess(toy_app(html_errors=True)), "call", "m", [MALFORMED])


# --- the tracking-server path ---------------------------------------------------------------


def test_the_solution_logs_through_a_tracking_server(solution):
    tracking.check_log_runs(solution.log_runs, RUN_CASES[:1], through_server=True)


def test_importing_the_checks_turns_telemetry_off():
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["DO_NOT_TRACK"] == "true"
