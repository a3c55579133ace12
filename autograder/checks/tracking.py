"""Checks for notebook 10: experiment tracking and model versioning with MLflow.

The learner writes four functions (the notebook states each contract in full):

- ``data_fingerprint(X, y) -> str``: a sha256 content hash of a dataset;
- ``log_runs(tracking_uri, experiment_name, grid, artifact_location=None, seed=0) -> list[str]``:
  one MLflow run per point of a hyper-parameter grid, with params, metrics and a logged model;
- ``register_best(tracking_uri, experiment_name, model_name, metric="accuracy",
  greater_is_better=True) -> dict``: the best finished run's model registered as a new version,
  with the alias ``champion``;
- ``create_app(tracking_uri, model_name, version) -> Flask``: an API that serves one
  registered version (a number, or an alias such as ``"champion"``).

Every check works on a store it makes in a temporary directory (a SQLite backend store and a
local artifact store, see :func:`local_store`): the learner's function runs in a child process
(:func:`autograder.isolate.run_isolated`, or :func:`autograder.harness.live_server` for the
app), and a second child, which runs no learner code, reads the store back: the SQLite file with
:mod:`sqlite3` (MLflow 3.17's schema; ``requirements.txt`` pins MLflow) and the logged models
with skops, which loads only trusted types. This process never imports MLflow: it is slow to
import and writes to stderr. Importing MLflow costs seconds per process, so the checks start
as few processes as they can.

Offline: importing this module puts :data:`OFFLINE_ENV` into ``os.environ``, so every child
(isolated calls, app servers, the tracking server) inherits it. In a notebook, import this
module before ``mlflow``: MLflow reads the telemetry switch when it is imported.
"""
from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered
from autograder.isolate import describe_exception, run_isolated

# What keeps MLflow 3.17 off the network and quiet, and why (checked in mlflow's source).
OFFLINE_ENV = {
    # Usage telemetry (MLflow >= 3.2 sends it by default). Either variable turns it off; read at import.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # log_model would run `uv export` when the working directory holds a uv project.
    "MLFLOW_UV_AUTO_DETECT": "false",
    # Locking a model's requirements runs a resolver that asks a package index (off by default).
    "MLFLOW_LOCK_MODEL_DEPENDENCIES": "false",
    # Conflicting requirement pins are checked with `pip install --dry-run`, which asks PyPI.
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
    # `mlflow server` would start a job runner with a dozen worker processes.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # Quiet: no tqdm bars on stderr when artifacts are downloaded, no INFO log lines.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}

METRICS = ("accuracy", "log_loss")
MODEL_ARTIFACT = "model"
ALIAS = "champion"
TEST_SIZE = 0.3
# Five iris flowers, all three species among them: the rows the serving checks send.
PROBE = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 4.1, 1.0], [6.7, 3.1, 5.6, 2.4], [5.9, 3.0, 5.1, 1.8], [4.9, 3.1, 1.5, 0.1]]
SHA256 = re.compile(r"[0-9a-f]{64}")
# MLflow imports slowly (2 s or more on a busy machine); these bound a hang, not a speed.
CALL_TIMEOUT = 50.0
# The checks' own models are saved with cloudpickle: loading skops (MLflow's default, and the safe
# choice for models from others) imports much of scikit-learn, seconds per process.
FAST_FORMAT = "cloudpickle"
START_TIMEOUT = 60.0       # mlflow server: two processes that each import MLflow
APP_START_TIMEOUT = 40.0   # the learner's app: imports MLflow and loads one model


def apply_offline_env() -> None:
    """Put :data:`OFFLINE_ENV` into ``os.environ`` (done when this module is imported)."""
    os.environ.update(OFFLINE_ENV)


apply_offline_env()


# --- stores ---------------------------------------------------------------------------------


def local_store(directory: str | Path) -> tuple[str, str]:
    """``(tracking_uri, artifact_location)`` of an embedded store in ``directory``.

    The backend store is the SQLite file ``directory/mlflow.db`` (MLflow creates its tables on
    first use); artifacts go to ``directory/artifacts``, given as a ``file://`` URI. Creates
    ``directory``.
    """
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def start_tracking_server(directory: str | Path, timeout: float = START_TIMEOUT):
    """Start ``mlflow server`` on 127.0.0.1 with its stores in ``directory``; return it once it answers.

    The same SQLite file and artifact folder as :func:`local_store`, behind a server: clients use
    ``server.base_url`` (``http://127.0.0.1:<port>``) as their tracking URI, and artifacts travel
    through the server (``mlflow-artifacts:/``). Its log is ``directory/server.log``. Waits at most
    ``timeout`` seconds for ``GET /health``; ``server.stop()`` ends it and every process it started
    (and so does the end of the Python process). Raises :class:`ServerStartError` when it does not start.
    """
    from autograder.checks.serving import free_port, start

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    return start(command, port, cwd=root, log_path=root / "server.log", timeout=timeout)


_TEMPLATE: dict[str, Path] = {}


def _template_path() -> Path:
    """Where this process keeps an empty, migrated MLflow database (it may not exist yet)."""
    if "db" not in _TEMPLATE:
        folder = _scratch("servelab-mlflow-template-")
        atexit.register(shutil.rmtree, folder, True)
        _TEMPLATE["db"] = folder / "mlflow.db"
    return _TEMPLATE["db"]


def _open_store(uri: str, template: str | None):
    """Child side (grader code only): an MLflow client on ``uri``, saving the empty database as ``template``.

    MLflow spends seconds creating the tables of a new database; a copy of an empty one is a
    fresh store as good as new (see :func:`fresh_store`).
    """
    import sqlite3

    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    client.search_experiments()
    if template and not os.path.exists(template) and uri.startswith("sqlite:///"):
        with sqlite3.connect(uri[len("sqlite:///"):]) as source, sqlite3.connect(template + ".tmp") as dest:
            source.backup(dest)
        os.replace(template + ".tmp", template)
    return client


def _make_template(uri: str, template: str) -> None:
    _open_store(uri, template)


def prepare_template() -> None:
    """Make the empty database :func:`fresh_store` copies now, in a child, if this process has none yet."""
    template = _template_path()
    if not template.is_file():
        with _workdir("servelab-q10-template-") as work:
            uri, _ = local_store(work)
            run_isolated(_make_template, uri, str(template), timeout=CALL_TIMEOUT, what="creating an MLflow database")


def fresh_store(directory: str | Path) -> tuple[str, str]:
    """:func:`local_store`, with a copy of this process's empty database when it has one.

    Without one, the first process that opens the store creates the tables.
    """
    uri, artifacts = local_store(directory)
    template = _template_path()
    if template.is_file():
        shutil.copyfile(template, Path(directory).resolve() / "mlflow.db")
    return uri, artifacts


def _scratch(prefix: str) -> Path:
    """A new temporary directory, in memory where possible: SQLite syncs to disk on every commit."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))


@contextmanager
def _workdir(prefix: str):
    path = _scratch(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- the data and the reference model (the contract of log_runs) ----------------------------


def iris_split(seed: int = 0):
    """``X_train, X_test, y_train, y_test``: iris, 30 % held out, stratified, ``random_state=seed``."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    X, y = load_iris(return_X_y=True)
    return train_test_split(X, y, test_size=TEST_SIZE, random_state=seed, stratify=y)


def make_model(params: dict, seed: int = 0):
    """``StandardScaler`` then ``LogisticRegression(max_iter=1000, random_state=seed)`` with ``params`` set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed).set_params(**params))


def grid_points(grid: dict) -> list[dict]:
    """The points of ``grid`` in ``sklearn.model_selection.ParameterGrid`` order."""
    from sklearn.model_selection import ParameterGrid

    return list(ParameterGrid(grid))


def _skip_slow_requirement_steps() -> None:
    """Child side: make ``log_model`` skip two slow steps that do not change what is judged.

    Requirement inference loads the model in a new Python process (seconds per model), and the
    mismatch warning scans every installed distribution; both only shape ``requirements.txt``.
    Without inference ``log_model`` records the flavor's default requirements. A learner who
    leaves ``pip_requirements`` out is not wrong, only slower, and grading must not depend on speed.
    """
    import mlflow.models
    import mlflow.utils.environment

    def defaults(model_uri, flavor, fallback=None, *args, **kwargs):
        return list(fallback or [])

    mlflow.models.infer_pip_requirements = defaults
    mlflow.utils.environment.warn_dependency_requirement_mismatches = lambda *args, **kwargs: None


# --- reading a store back (child side, grader code only) -----------------------------------


def _db(root: str):
    import sqlite3

    return sqlite3.connect(f"file:{Path(root) / 'mlflow.db'}?mode=ro", uri=True)


def _local_path(root: str, location: str) -> Path | None:
    """The folder an artifact location names, when it lies inside the store ``root``; else None.

    ``file://`` URIs and plain paths are the embedded store's; ``mlflow-artifacts:/x`` is the
    tracking server's, kept under ``root/artifacts`` (see :func:`start_tracking_server`).
    """
    from urllib.parse import unquote, urlparse

    if location.startswith("mlflow-artifacts:"):
        path = Path(root) / "artifacts" / location.split(":", 1)[1].lstrip("/")
    elif location.startswith("file:"):
        path = Path(unquote(urlparse(location).path))
    else:
        path = Path(location)
    path = path.resolve()
    return path if path.is_relative_to(Path(root).resolve()) else None


def _load_logged_model(root: str, location: str):
    """``(model, None)`` for the skops model in a logged model's folder, or ``(None, why not)``."""
    import yaml

    folder = _local_path(root, location)
    if folder is None:
        return None, f"its files are at {location!r}, outside the store's folder"
    try:
        flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        return None, f"no scikit-learn MLmodel file in {location!r} ({type(exc).__name__})"
    if flavor.get("serialization_format") != "skops":
        return None, (f"it is saved as {flavor.get('serialization_format')!r}; keep MLflow's default format, skops, "
                      "which loads only the types it trusts")
    import skops.io

    try:
        return skops.io.load(folder / flavor["pickled_model"]), None
    except Exception as exc:  # noqa: BLE001 - reported to the learner
        return None, f"skops could not load it: {type(exc).__name__}: {str(exc)[:160]}"


# --- exercise 1: data_fingerprint -----------------------------------------------------------


def fingerprint_data(variant: str):
    """``(X, y)`` for a named variant of the iris data (the fingerprint checks' inputs).

    ``iris`` is the data as numpy arrays; ``lists``, ``fortran`` and ``copy`` hold the same values
    in another container or memory order; ``bump`` (one value changed), ``swap_rows`` (two rows
    exchanged, labels with them), ``reshaped`` (the same numbers as 75 rows of 8) and ``relabel``
    (one label changed) are different data.
    """
    import numpy as np
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    if variant == "iris":
        return X, y
    if variant == "lists":
        return X.tolist(), y.tolist()
    if variant == "fortran":
        return np.asfortranarray(X), y.copy()
    if variant == "copy":
        return X.copy(), y.copy()
    if variant == "bump":
        X = X.copy()
        X[17, 2] += 0.1
        return X, y
    if variant == "swap_rows":
        order = np.arange(len(X))
        order[[0, 60]] = order[[60, 0]]
        return X[order], y[order]
    if variant == "reshaped":
        return X.reshape(75, 8), y
    if variant == "relabel":
        y = y.copy()
        y[-1] = 0
        return X, y
    raise ValueError(f"unknown variant {variant!r}")


def _fingerprints(data_fingerprint, inputs: dict) -> dict:
    """Child side: ``{name: fingerprint or {"raised": ...}}`` for each ``(X, y)`` in ``inputs``."""
    out = {}
    for name, (X, y) in inputs.items():
        try:
            value = data_fingerprint(X, y)
            out[name] = value if isinstance(value, str) else {"type": type(value).__name__, "repr": repr(value)[:80]}
        except Exception as exc:  # noqa: BLE001 - judged below
            out[name] = {"raised": describe_exception(exc)}
    return out


def check_fingerprint(data_fingerprint, cases: list[dict]) -> None:
    """``data_fingerprint`` returns 64 lowercase hex digits; equal data gives equal ones, different data different ones.

    A case is ``{"why", "a", "b", "same"}`` where ``a`` and ``b`` name :func:`fingerprint_data`
    variants; ``"b": "iris@other"`` computes the variant in a second, separate process.
    """
    names = sorted({c["a"] for c in cases} | {c["b"] for c in cases})
    here = {n: fingerprint_data(n) for n in names if not n.endswith("@other")}
    there = {n: fingerprint_data(n.split("@")[0]) for n in names if n.endswith("@other")}
    got = run_isolated(_fingerprints, data_fingerprint, here, timeout=CALL_TIMEOUT, what="your data_fingerprint")
    if there:
        got.update(run_isolated(_fingerprints, data_fingerprint, there, timeout=CALL_TIMEOUT, what="your data_fingerprint"))
    for name in names:
        value = got[name]
        shown = name.split("@")[0]
        if isinstance(value, dict) and "raised" in value:
            r = value["raised"]
            if r["type"] == "NotImplementedError":
                raise NotAnswered("data_fingerprint raised NotImplementedError: write it, then run its cell again.")
            raise CheckFailed(f"data_fingerprint on the {shown!r} data raised {r['type']}: {r['message']}")
        if isinstance(value, dict):
            raise CheckFailed(f"data_fingerprint should return a str of 64 hex digits; it returned a {value['type']}: {value['repr']}")
        if not SHA256.fullmatch(value):
            raise CheckFailed(f"data_fingerprint should return 64 lowercase hex digits (hashlib.sha256(...).hexdigest()); it returned {value[:80]!r}.")
    for case in cases:
        a, b = got[case["a"]], got[case["b"]]
        if case["same"] and a != b:
            raise CheckFailed(f"{case['why']}: the same data should give the same fingerprint; got {a[:12]}… and {b[:12]}….")
        if not case["same"] and a == b:
            raise CheckFailed(f"{case['why']}: different data should give a different fingerprint; both gave {a[:12]}….")


# --- exercise 2: log_runs -------------------------------------------------------------------


def _call_log_runs(log_runs, uri: str, calls: list[dict]) -> dict:
    """Child side: call ``log_runs`` for each call spec; report outcomes and what it left in the working directory."""
    _skip_slow_requirement_steps()
    before = set(os.listdir("."))
    outcomes = []
    for call in calls:
        try:
            value = log_runs(uri, call["experiment"], call["grid"], artifact_location=call["artifact_location"], seed=call["seed"])
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                outcomes.append({"returned": list(value)})
            else:
                outcomes.append({"returned_other": f"{type(value).__name__}: {repr(value)[:120]}"})
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            outcomes.append({"raised": describe_exception(exc)})
    stray = sorted(set(os.listdir(".")) - before - {"result.json", "result.json.tmp"})
    return {"outcomes": outcomes, "stray": stray}


def _inspect_runs(root: str, experiments: list[dict]) -> dict:
    """Child side, no learner code: what the store in ``root`` holds for each experiment, and the reference for each grid point."""
    import numpy as np
    from sklearn.metrics import accuracy_score, log_loss

    report = {}
    with _db(root) as db:
        for spec in experiments:
            name, seed = spec["experiment"], spec["seed"]
            X_train, X_test, y_train, y_test = iris_split(seed)
            reference = []
            for point in grid_points(spec["grid"]):
                model = make_model(point, seed).fit(X_train, y_train)
                proba = model.predict_proba(X_test)
                reference.append({
                    "params": {k: str(v) for k, v in point.items()},
                    "accuracy": float(accuracy_score(y_test, model.predict(X_test))),
                    "log_loss": float(log_loss(y_test, proba)),
                    "proba": proba.tolist(),
                })
            row = db.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (name,)).fetchone()
            if row is None:
                report[name] = {"exists": False, "reference": reference}
                continue
            exp_id, location = row
            runs = {}
            for run_id, status in db.execute("SELECT run_uuid, status FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'", (exp_id,)):
                entry = {
                    "status": status,
                    "params": dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,))),
                    "metrics": {k: float(v) for k, v in db.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,))},
                    "tags": dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ? AND key NOT LIKE 'mlflow.%'", (run_id,))),
                    "models": [{"name": n, "artifact_location": a} for n, a in db.execute(
                        "SELECT name, artifact_location FROM logged_models WHERE source_run_id = ? AND lifecycle_stage = 'active'", (run_id,))],
                }
                named = [m for m in entry["models"] if m["name"] == MODEL_ARTIFACT]
                if len(named) == 1:
                    model, problem = _load_logged_model(root, named[0]["artifact_location"])
                    if problem:
                        entry["loaded"] = {"error": problem}
                    else:
                        try:
                            entry["loaded"] = {"proba": np.asarray(model.predict_proba(X_test), dtype=float).tolist()}
                        except Exception as exc:  # noqa: BLE001 - reported to the learner
                            entry["loaded"] = {"error": f"predict_proba raised {type(exc).__name__}: {str(exc)[:160]}"}
                runs[run_id] = entry
            report[name] = {"exists": True, "artifact_location": location, "runs": runs, "reference": reference}
    return report


def _same_location(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.rstrip("/") == b.rstrip("/")


def _judge_call(case: dict, outcome: dict, store: dict) -> None:
    """One call's verdict: its returned ids, and each of those runs in the store."""
    call = f"log_runs(..., {case['experiment']!r}, {case['grid']!r}, seed={case['seed']}) ({case['why']})"
    if "raised" in outcome:
        r = outcome["raised"]
        if r["type"] == "NotImplementedError":
            raise NotAnswered("log_runs raised NotImplementedError: write it, then run its cell again.")
        raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
    if "returned_other" in outcome:
        raise CheckFailed(f"{call} should return the list of run ids (str), one per grid point; it returned {outcome['returned_other']}.")
    ids, reference = outcome["returned"], store["reference"]
    if len(ids) != len(reference) or len(set(ids)) != len(ids):
        raise CheckFailed(f"{call} returned {len(ids)} run ids ({len(set(ids))} different); the grid has {len(reference)} points, one run each.")
    if not store["exists"]:
        raise CheckFailed(f"{call}: the store has no experiment named {case['experiment']!r} afterwards.")
    if case["artifact_location"] and not _same_location(store["artifact_location"], case["artifact_location"]):
        raise CheckFailed(
            f"{call}: the experiment stores its artifacts at {store['artifact_location']!r}; create it with "
            f"artifact_location={case['artifact_location']!r} (the argument), so that models land in the store's folder."
        )
    runs, hashes = store["runs"], set()
    for i, (run_id, want) in enumerate(zip(ids, reference)):
        where = f"{call}: run {i} ({run_id})"
        if run_id not in runs:
            raise CheckFailed(f"{where} is not a run of experiment {case['experiment']!r}.")
        run = runs[run_id]
        for key, value in {**want["params"], "seed": str(case["seed"])}.items():
            if run["params"].get(key) != value:
                raise CheckFailed(
                    f"{where} should have param {key}={value!r} (grid point {i} in ParameterGrid order, and the seed); "
                    f"its params are {run['params']}."
                )
        if run["status"] != "FINISHED":
            raise CheckFailed(f"{where} has status {run['status']}; end every run (a `with mlflow.start_run():` block does).")
        for metric in METRICS:
            if metric not in run["metrics"]:
                raise CheckFailed(f"{where} has no metric {metric!r}; its metrics are {sorted(run['metrics'])}.")
            if not math.isclose(run["metrics"][metric], want[metric], rel_tol=1e-6, abs_tol=1e-9):
                raise CheckFailed(
                    f"{where} logged {metric}={run['metrics'][metric]:.6f}; the model for {want['params']} trained on the "
                    f"training rows of the seed-{case['seed']} split gives {want[metric]:.6f} on its held-out 30 %."
                )
        tag = run["tags"].get("data_sha256")
        if tag is None or not SHA256.fullmatch(tag):
            raise CheckFailed(f"{where} should have the tag data_sha256 with 64 hex digits (the training data's fingerprint); it has {tag!r}.")
        hashes.add(tag)
        named = [m for m in run["models"] if m["name"] == MODEL_ARTIFACT]
        if len(named) != 1:
            raise CheckFailed(
                f"{where} should have exactly one logged model named {MODEL_ARTIFACT!r} "
                f"(mlflow.sklearn.log_model(model, name={MODEL_ARTIFACT!r}) inside the run); it has {[m['name'] for m in run['models']]}."
            )
        loaded = run.get("loaded", {})
        if "error" in loaded:
            raise CheckFailed(f"{where}: its logged model could not be read back: {loaded['error']}.")
        got = loaded["proba"]
        worst = max((abs(a - b) for ra, rb in zip(got, want["proba"]) for a, b in zip(ra, rb)), default=0.0)
        if len(got) != len(want["proba"]) or worst > 1e-6:
            raise CheckFailed(
                f"{where}: its logged model's probabilities on the held-out rows differ from the model for {want['params']} "
                f"trained on the training rows (by up to {worst:.3g}); log the model you trained and measured in that run."
            )
    if len(hashes) > 1:
        raise CheckFailed(f"{call}: the runs have different data_sha256 tags {sorted(hashes)}, but they were trained on the same data.")


def check_log_runs(log_runs, cases: list[dict], through_server: bool = False) -> None:
    """Each call of ``log_runs`` leaves one finished run per grid point, each with its params, metrics, data tag and model.

    A case is ``{"why", "grid", "seed", "experiment"}``. The cases run in order against one fresh
    embedded store, each experiment with its own folder of that store as ``artifact_location``;
    two cases naming the same experiment (with the same grid and seed) test a second call on an
    existing experiment. With ``through_server``, the check starts a tracking server on the store
    (:func:`start_tracking_server`), passes its URL and ``artifact_location=None``, and stops it
    before reading the store.
    """
    with _workdir("servelab-q10-runs-") as work:
        root = work / "store"
        uri, artifacts = fresh_store(root)
        server = start_tracking_server(root) if through_server else None
        try:
            if server is not None:
                uri, artifacts = server.base_url, None
            calls = [{**case, "artifact_location": artifacts and f"{artifacts}/{case['experiment']}"} for case in cases]
            got = run_isolated(_call_log_runs, log_runs, uri, calls, timeout=CALL_TIMEOUT, what="your log_runs")
        finally:
            if server is not None:
                server.stop()
        first = got["outcomes"][0] if got["outcomes"] else {}
        if "raised" in first:
            # Nothing to read back: say what the first call raised.
            _judge_call(calls[0], first, {})
        specs = {}
        for call in calls:
            specs.setdefault(call["experiment"], {"experiment": call["experiment"], "seed": call["seed"], "grid": call["grid"]})
        store = run_isolated(_inspect_runs, str(root), list(specs.values()), timeout=CALL_TIMEOUT, what="reading the tracking store")
    for call, outcome in zip(calls, got["outcomes"]):
        _judge_call(call, outcome, store[call["experiment"]])
    for name, view in store.items():
        made = [c for c in calls if c["experiment"] == name]
        want = len(made) * len(view["reference"])
        if len(view["runs"]) != want:
            raise CheckFailed(
                f"after {len(made)} call(s) of log_runs on experiment {name!r} with {len(view['reference'])} grid points, "
                f"it holds {len(view['runs'])} runs; expected {want}, one per grid point and call."
            )
    if got["stray"]:
        raise CheckFailed(
            f"log_runs left {got['stray']} in the working directory; every artifact belongs in the store "
            "(create the experiment with the artifact_location you were given)."
        )


# --- exercise 3: register_best --------------------------------------------------------------


def _make_runs(uri: str, artifacts: str, experiments: list[dict], template: str | None = None) -> dict:
    """Child side: make each experiment's runs as specified, each with a small logged model named ``model``.

    A run spec is ``{"metrics": {...}, "start": seconds, "status": "FINISHED" | "FAILED"}``;
    ``start`` offsets its start time, so runs can start in another order than they are made.
    """
    import mlflow
    import mlflow.sklearn
    import sklearn

    from sklearn.datasets import load_iris

    client = _open_store(uri, template)
    _skip_slow_requirement_steps()
    X, y = load_iris(return_X_y=True)
    pins = [f"scikit-learn=={sklearn.__version__}"]
    model = make_model({}).fit(X, y)
    base = 1_700_000_000_000
    made = {}
    for spec in experiments:
        exp_id = client.create_experiment(spec["experiment"], artifact_location=f"{artifacts}/{spec['experiment']}")
        ids = []
        for k, run_spec in enumerate(spec["runs"]):
            run = client.create_run(exp_id, start_time=base + int(run_spec.get("start", k) * 1000))
            with mlflow.start_run(run_id=run.info.run_id):
                for key, value in run_spec["metrics"].items():
                    mlflow.log_metric(key, value)
                mlflow.sklearn.log_model(model, name=MODEL_ARTIFACT, pip_requirements=pins, serialization_format=FAST_FORMAT)
            if run_spec.get("status", "FINISHED") != "FINISHED":
                client.set_terminated(run.info.run_id, run_spec["status"])
            ids.append(run.info.run_id)
        made[spec["experiment"]] = ids
    return made


def _call_register_best(register_best, uri: str, calls: list[dict]) -> list[dict]:
    """Child side: call ``register_best`` for each call spec, in order."""
    out = []
    for call in calls:
        try:
            value = register_best(uri, call["experiment"], call["model_name"], metric=call["metric"], greater_is_better=call["greater"])
            if isinstance(value, dict):
                plain = {}
                for key, v in value.items():
                    plain[str(key)] = v.item() if hasattr(v, "item") and callable(v.item) else v
                    if not isinstance(plain[str(key)], (str, int, float, bool, type(None))):
                        plain[str(key)] = repr(v)
                out.append({"returned": plain})
            else:
                out.append({"returned_other": f"{type(value).__name__}: {repr(value)[:120]}"})
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            out.append({"raised": {**describe_exception(exc), "classes": [c.__name__ for c in type(exc).__mro__]}})
    return out


def _inspect_registry(root: str, names: list[str]) -> dict:
    """Child side, no learner code: each registered model's versions (number → run id) and aliases, or None."""
    report = {}
    with _db(root) as db:
        for name in names:
            if db.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,)).fetchone() is None:
                report[name] = None
                continue
            report[name] = {
                "versions": {str(v): r for v, r in db.execute("SELECT version, run_id FROM model_versions WHERE name = ?", (name,))},
                "aliases": {a: str(v) for a, v in db.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (name,))},
            }
    return report


def check_register_best(register_best, cases: list[dict]) -> None:
    """``register_best`` registers the best finished run's model as a new version and points ``champion`` at it.

    A case is ``{"why", "runs": [run specs, see _make_runs], "metric", "greater", "best": index}``,
    or ``"raises": "ValueError"`` instead of ``best``; ``"times": 2`` calls it twice (the second
    call must make version 2 of the same run). Runs whose status is not FINISHED, and runs
    without the metric, never win; ties go to the run that started first.
    """
    with _workdir("servelab-q10-registry-") as work:
        root = work / "store"
        uri, artifacts = fresh_store(root)
        experiments = [{"experiment": f"exp-{i}", "runs": case["runs"]} for i, case in enumerate(cases)]
        made = run_isolated(_make_runs, uri, artifacts, experiments, str(_template_path()), timeout=CALL_TIMEOUT, what="making the runs")
        calls = []
        for i, case in enumerate(cases):
            for _ in range(case.get("times", 1)):
                calls.append({"case": i, "experiment": f"exp-{i}", "model_name": f"iris-{i}", "metric": case["metric"], "greater": case["greater"]})
        got = run_isolated(_call_register_best, register_best, uri, calls, timeout=CALL_TIMEOUT, what="your register_best")
        if got and got[0].get("raised", {}).get("type") == "NotImplementedError":
            raise NotAnswered("register_best raised NotImplementedError: write it, then run its cell again.")
        registry = run_isolated(_inspect_registry, str(root), [f"iris-{i}" for i in range(len(cases))], timeout=CALL_TIMEOUT, what="reading the model registry")
    _judge_registrations(cases, calls, got, made, registry)


def _judge_registrations(cases: list[dict], calls: list[dict], got: list[dict], made: dict, registry: dict) -> None:
    """The verdict on every call (what it returned) and then on the registry it left.

    ``made`` maps ``exp-<i>`` to case i's run ids; ``registry`` is :func:`_inspect_registry`'s report.
    """
    count: dict[int, int] = {}
    for call, outcome in zip(calls, got):
        i = call["case"]
        case = cases[i]
        count[i] = count.get(i, 0) + 1
        direction = "highest" if case["greater"] else "lowest"
        what = (f"register_best(..., metric={case['metric']!r}, greater_is_better={case['greater']}) on {case['why']}"
                + (f" (call {count[i]})" if case.get("times", 1) > 1 else ""))
        if "raised" in outcome and outcome["raised"]["type"] == "NotImplementedError":
            raise NotAnswered("register_best raised NotImplementedError: write it, then run its cell again.")
        if "raises" in case:
            if "raised" not in outcome:
                raise CheckFailed(f"{what} should raise {case['raises']} (no finished run has the metric); it returned {outcome.get('returned', outcome.get('returned_other'))!r}.")
            if case["raises"] not in outcome["raised"]["classes"]:
                raise CheckFailed(f"{what} raised {outcome['raised']['type']}: {outcome['raised']['message']}; expected {case['raises']}.")
            if registry.get(f"iris-{i}"):
                raise CheckFailed(f"{what} raised, but registered a version anyway: {registry[f'iris-{i}']}.")
            continue
        if "raised" in outcome:
            raise CheckFailed(f"{what} raised {outcome['raised']['type']}: {outcome['raised']['message']}")
        if "returned_other" in outcome:
            raise CheckFailed(f"{what} should return a dict with run_id, version and value; it returned {outcome['returned_other']}.")
        value = outcome["returned"]
        best_id = made[f"exp-{i}"][case["best"]]
        best_value = case["runs"][case["best"]]["metrics"][case["metric"]]
        if set(value) != {"run_id", "version", "value"}:
            raise CheckFailed(f"{what} should return a dict with exactly the keys run_id, version and value; it returned {value!r}.")
        if value["run_id"] != best_id:
            k = made[f"exp-{i}"].index(value["run_id"]) if value["run_id"] in made[f"exp-{i}"] else None
            chosen = f"run {k} ({case['runs'][k]})" if k is not None else repr(value["run_id"])
            raise CheckFailed(
                f"{what} chose {chosen}; the best is run {case['best']} ({case['runs'][case['best']]}): the {direction} "
                f"{case['metric']} among FINISHED runs that have it, ties going to the run that started first."
            )
        if isinstance(value["version"], bool) or not isinstance(value["version"], int) or value["version"] != count[i]:
            raise CheckFailed(f"{what} returned version {value['version']!r}; expected {count[i]} (an int: the version this call registered).")
        if not isinstance(value["value"], (int, float)) or not math.isclose(value["value"], best_value, rel_tol=1e-9):
            raise CheckFailed(f"{what} returned value {value['value']!r}; the best run's {case['metric']} is {best_value}.")
    for i, case in enumerate(cases):
        if "raises" in case:
            continue
        entry = registry.get(f"iris-{i}")
        times = case.get("times", 1)
        best_id = made[f"exp-{i}"][case["best"]]
        want = {str(v): best_id for v in range(1, times + 1)}
        where = f"after register_best on {case['why']}, the registered model 'iris-{i}'"
        if entry is None:
            raise CheckFailed(f"{where} does not exist; register the run's model (mlflow.register_model).")
        if entry["versions"] != want:
            raise CheckFailed(f"{where} has versions {entry['versions']} (version → run id); expected {want}.")
        if entry["aliases"].get(ALIAS) != str(times):
            raise CheckFailed(f"{where} has aliases {entry['aliases']}; {ALIAS!r} should point at version {times}, the one just registered.")


# --- exercise 4: create_app -----------------------------------------------------------------


def _two_versions(uri: str, artifacts: str, name: str, probe: list, template: str | None = None) -> dict:
    """Child side: register two models that disagree on every probe row as versions 1 and 2; ``champion`` → 2."""
    import mlflow
    import mlflow.sklearn
    import sklearn

    from sklearn.datasets import load_iris

    client = _open_store(uri, template)
    _skip_slow_requirement_steps()
    X, y = load_iris(return_X_y=True)
    exp_id = client.create_experiment("serving", artifact_location=f"{artifacts}/serving")
    runs, predictions = {}, {}
    for version, labels in ((1, y), (2, (y + 1) % 3)):
        model = make_model({"C": 1.0}).fit(X, labels)
        with mlflow.start_run(experiment_id=exp_id) as run:
            info = mlflow.sklearn.log_model(
                model, name=MODEL_ARTIFACT, pip_requirements=[f"scikit-learn=={sklearn.__version__}"], serialization_format=FAST_FORMAT
            )
        mv = mlflow.register_model(info.model_uri, name)
        runs[str(mv.version)] = run.info.run_id
        predictions[str(mv.version)] = model.predict(probe).tolist()
    client.set_registered_model_alias(name, ALIAS, "2")
    return {"runs": runs, "predictions": predictions}


SERVED_NAME = "iris-classifier"
_SERVING: dict = {}


def _serving_store(directory: Path) -> tuple[str, dict]:
    """A store in ``directory`` holding the two versions of :func:`_two_versions`; returns its URI and what was made.

    The versions are made once per process, in a child, and each check gets a copy of that
    database (its artifact paths point into the original folder, which the apps only read).
    """
    if "db" not in _SERVING or not _SERVING["db"].is_file():
        folder = _scratch("servelab-q10-versions-")
        atexit.register(shutil.rmtree, folder, True)
        uri, artifacts = fresh_store(folder)
        made = run_isolated(_two_versions, uri, artifacts, SERVED_NAME, PROBE, str(_template_path()),
                            timeout=CALL_TIMEOUT, what="registering two versions")
        _SERVING.update(db=folder / "mlflow.db", made=made)
    uri, _ = local_store(directory)
    shutil.copyfile(_SERVING["db"], Path(directory) / "mlflow.db")
    return uri, _SERVING["made"]


def _build_app(create_app, handler, config):
    """Server side: the harness passes ``(handler, config)``; the learner's factory takes the store and the version."""
    return create_app(config["tracking_uri"], config["model_name"], config["version"])


@contextmanager
def serve(create_app, tracking_uri: str, model_name: str, version, start_timeout: float = APP_START_TIMEOUT):
    """Serve ``create_app(tracking_uri, model_name, version)`` in its own process; yield a LiveServer."""
    from autograder.harness import live_server

    config = {"tracking_uri": tracking_uri, "model_name": model_name, "version": version}
    with live_server(partial(_build_app, create_app), config=config, start_timeout=start_timeout) as server:
        yield server


def _json(r) -> object:
    try:
        return r.json()
    except ValueError:
        return None


def _judge_version(server, call: str, name: str, version: str, run_id: str, predictions: list, other: list) -> None:
    r = server.get(f"/v1/models/{name}")
    body = _json(r)
    if r.status_code != 200 or not isinstance(body, dict):
        raise CheckFailed(f"{call}: GET /v1/models/{name} answered {r.status_code} {r.text[:200]!r}; expected 200 with JSON.")
    if body.get("name") != name or str(body.get("version")) != version or body.get("run_id") != run_id:
        raise CheckFailed(
            f"{call}: GET /v1/models/{name} answered {body}; expected name {name!r}, version {version!r} and the run id "
            f"of version {version}, {run_id!r}."
        )
    r = server.post(f"/v1/models/{name}:predict", json={"instances": PROBE})
    body = _json(r)
    if r.status_code != 200 or not isinstance(body, dict) or "predictions" not in body:
        raise CheckFailed(f"{call}: POST /v1/models/{name}:predict with {len(PROBE)} instances answered {r.status_code} {r.text[:200]!r}; expected 200 with JSON predictions.")
    if body["predictions"] == other and other != predictions:
        raise CheckFailed(f"{call}: the predictions {body['predictions']} are the other version's; serve version {version}.")
    if body["predictions"] != predictions:
        raise CheckFailed(f"{call}: POST /v1/models/{name}:predict gave {body['predictions']}; version {version}'s model predicts {predictions}.")
    if str(body.get("version")) != version:
        raise CheckFailed(f"{call}: the predict answer should say which version answered (\"version\": {version!r}); it has {body.get('version')!r}.")


def _judge_errors(server, call: str, name: str, cases: list[dict]) -> None:
    for case in cases:
        method, path = case.get("method", "POST"), case["path"].format(name=name)
        kwargs = {k: case[k] for k in ("json", "data", "headers") if k in case}
        r = server.request(method, path, **kwargs)
        body = _json(r)
        sent = f"{method} {path}" + (f" with {case['why']}" if case.get("why") else "")
        if r.status_code != case["status"]:
            raise CheckFailed(f"{call}: {sent} answered {r.status_code} {r.text[:160]!r}; expected {case['status']}.")
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            raise CheckFailed(f"{call}: {sent} answered {r.status_code} with {r.text[:160]!r}; errors should be JSON {{\"error\": \"<message>\"}}.")


def check_serves_version(create_app, cases: list[dict]) -> None:
    """The app serves exactly the version it was asked for, reports it, and answers errors in JSON.

    The check registers two models that disagree on every probe row (versions 1 and 2, alias
    ``champion`` on 2). A case is ``{"why", "version": 1 | 2 | "champion", "errors": [request
    specs]}``; a request spec is ``{"method", "path" (``{name}`` is the served model's name),
    "json" | "data", "headers", "status"}``.
    """
    name = SERVED_NAME
    with _workdir("servelab-q10-serve-") as work:
        uri, made = _serving_store(work / "store")
        for case in cases:
            version = "2" if case["version"] == ALIAS else str(case["version"])
            other = "1" if version == "2" else "2"
            call = f"create_app(tracking_uri, {name!r}, {case['version']!r}) ({case['why']})"
            with serve(create_app, uri, name, case["version"]) as server:
                _judge_version(server, call, name, version, made["runs"][version], made["predictions"][version], made["predictions"][other])
                _judge_errors(server, call, name, case.get("errors", []))
