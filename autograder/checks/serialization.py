"""Checks for notebook 03: saving and loading the course model, and refusing unsafe files.

The student's functions run in a child process (:func:`autograder.isolate.run_isolated`);
they get the course model there, and what comes back is plain data: predictions as lists,
paths, metadata dicts and exception names. The judging process never unpickles a file that
student code wrote or loaded: it reads JSON and computes sha256 digests itself.

An *artifact* is a directory with ``model.joblib`` and ``meta.json``::

    {"features": [...], "classes": [...], "sha256": "<hex digest of model.joblib>",
     "versions": {"python": "3.11.7", "sklearn": "...", "joblib": "...", "numpy": "..."}}

The refusal checks tamper with a good artifact in the ways listed in :data:`TAMPERINGS`.
Most plant a harmless booby trap: a pickle that, when loaded, writes a marker file into a
temporary directory. A loader that checks before it loads never writes the marker.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import platform
import tempfile
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered
from autograder.isolate import describe_exception, run_isolated

MODEL_FILE = "model.joblib"
META_FILE = "meta.json"
LIBRARIES = ("sklearn", "joblib", "numpy")
TIMEOUT = 30.0
TOL = 1e-12


def installed_versions() -> dict:
    """``{"python", "sklearn", "joblib", "numpy"}`` of this interpreter."""
    import joblib
    import numpy
    import sklearn

    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "joblib": joblib.__version__,
        "numpy": numpy.__version__,
    }


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def course_model(kind: str = "course"):
    """The course model (``"course"``), or another fit of the same pipeline (``"other"``) whose
    probabilities differ: a loader that returns the right one really read the file."""
    if kind == "course":
        from server_stub.model import train

        return train()[0]
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000)).fit(data.data, data.target)


def iris_rows() -> list:
    from sklearn.datasets import load_iris

    return load_iris().data.tolist()


def predictions(model) -> dict:
    """Labels and class probabilities for every iris row, as plain lists."""
    x = iris_rows()
    return {"labels": [int(v) for v in model.predict(x)], "proba": model.predict_proba(x).tolist()}


def write_reference_artifact(directory, kind: str = "course", features=None, classes=None) -> dict:
    """Write a correct artifact of ``course_model(kind)`` into ``directory``; return its meta."""
    import joblib

    from server_stub.model import FEATURES

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(course_model(kind), directory / MODEL_FILE)
    meta = {
        "features": list(features or FEATURES),
        "classes": list(classes or ["setosa", "versicolor", "virginica"]),
        "sha256": sha256_of(directory / MODEL_FILE),
        "versions": installed_versions(),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


# --- tampering ------------------------------------------------------------------------------

def booby_trap(marker: Path) -> bytes:
    """A pickle that, when loaded, writes ``marker`` and does nothing else. Never loaded here."""

    class Trap:
        def __reduce__(self):
            return (Path.write_text, (Path(marker), "written while unpickling an untrusted file\n"))

    return pickle.dumps(Trap(), protocol=4)


def _meta(directory: Path) -> dict:
    return json.loads((directory / META_FILE).read_text())


def _set_meta(directory: Path, meta: dict) -> None:
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


def _trap_model(directory: Path, marker: Path, *, update_meta: bool) -> None:
    (directory / MODEL_FILE).write_bytes(booby_trap(marker))
    if update_meta:
        meta = _meta(directory)
        meta["sha256"] = sha256_of(directory / MODEL_FILE)
        _set_meta(directory, meta)


def _flip_byte(directory: Path, marker: Path) -> None:
    data = bytearray((directory / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (directory / MODEL_FILE).write_bytes(bytes(data))


def _append(directory: Path, marker: Path) -> None:
    with open(directory / MODEL_FILE, "ab") as f:
        f.write(b"\0" * 16)


def _edit_sha(directory: Path, marker: Path) -> None:
    meta = _meta(directory)
    meta["sha256"] = hashlib.sha256(b"another file").hexdigest()
    _set_meta(directory, meta)


def _old_version(library: str, version: str):
    def tamper(directory: Path, marker: Path) -> None:
        # The model is also swapped (with a matching sha256), so a loader that checks the
        # versions only after loading runs the trap.
        _trap_model(directory, marker, update_meta=True)
        meta = _meta(directory)
        meta["versions"][library] = version
        _set_meta(directory, meta)

    return tamper


def _no_meta(directory: Path, marker: Path) -> None:
    _trap_model(directory, marker, update_meta=False)
    (directory / META_FILE).unlink()


# name -> (what it does, tamper(directory, marker))
TAMPERINGS = {
    "replace_model": ("model.joblib replaced by another pickle", lambda d, m: _trap_model(d, m, update_meta=False)),
    "flip_byte": ("one byte of model.joblib changed", _flip_byte),
    "append_bytes": ("bytes appended to model.joblib", _append),
    "edit_meta_sha": ("the sha256 in meta.json changed", _edit_sha),
    "rewrite_both": (
        "model.joblib replaced and meta.json's sha256 updated to match",
        lambda d, m: _trap_model(d, m, update_meta=True),
    ),
    "old_sklearn": ("meta.json says it was saved with scikit-learn 0.24.2", _old_version("sklearn", "0.24.2")),
    "old_numpy": ("meta.json says it was saved with numpy 1.19.5", _old_version("numpy", "1.19.5")),
    "no_meta": ("meta.json missing", _no_meta),
}


# --- the student's side (runs in a child process) --------------------------------------------

def _raised(exc: BaseException) -> dict:
    return {"raised": {**describe_exception(exc), "mro": [c.__name__ for c in type(exc).__mro__]}}


def _try(fn, *args):
    try:
        return {"value": fn(*args)}
    except Exception as exc:  # noqa: BLE001 - judged by the parent
        return _raised(exc)


def _path_text(value):
    """A returned path as text (``None`` stays ``None``; anything else is described)."""
    import os

    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value if value is None or isinstance(value, str) else repr(value)


def _observe_pickle(save_pickle, load_pickle, workdir: str, filenames: list) -> dict:
    """Save the course model with ``save_pickle`` and load it back, both ways; load a reference file."""
    model = course_model()
    out = {"original": predictions(model), "saves": []}
    for name in filenames:
        path = Path(workdir) / name
        obs = {"path": str(path)}
        saved = _try(save_pickle, model, path)
        if "raised" in saved:
            out["saves"].append({**obs, **saved})
            continue
        obs["returned"] = _path_text(saved["value"])
        obs["exists"] = path.is_file()
        if obs["exists"]:
            try:
                with open(path, "rb") as f:
                    obs["pickle_load"] = predictions(pickle.load(f))
            except Exception as exc:  # noqa: BLE001
                obs["pickle_load"] = _raised(exc)
            loaded = _try(load_pickle, path)
            obs["load_pickle"] = predictions(loaded["value"]) if "value" in loaded else loaded
        out["saves"].append(obs)
    other = course_model("other")
    reference = Path(workdir) / "reference.pkl"
    with open(reference, "wb") as f:
        pickle.dump(other, f)
    loaded = _try(load_pickle, reference)
    out["other_original"] = predictions(other)
    out["other_loaded"] = predictions(loaded["value"]) if "value" in loaded else loaded
    return out


def _observe_writes(write_artifact, jobs: list) -> list:
    """For each ``[directory, features, classes, kind]``: write an artifact, then reload its model."""
    import joblib

    results = []
    for directory, features, classes, kind in jobs:
        model = course_model(kind)
        out = {"original": predictions(model)}
        result = _try(write_artifact, model, Path(directory), list(features), list(classes))
        if "raised" in result:
            results.append({**out, **result})
            continue
        out["returned"] = _path_text(result["value"])
        path = Path(directory) / MODEL_FILE
        if path.is_file():
            try:
                out["reloaded"] = predictions(joblib.load(path))
            except Exception as exc:  # noqa: BLE001
                out["reloaded"] = _raised(exc)
        results.append(out)
    return results


def _observe_loads(load_artifact, jobs: list) -> list:
    """For each ``[directory, expected_sha256]``: call the loader; describe what it returned."""
    return [_observe_load(load_artifact, directory, expected) for directory, expected in jobs]


def _observe_load(load_artifact, directory: str, expected_sha256) -> dict:
    args = (Path(directory),) if expected_sha256 is None else (Path(directory), expected_sha256)
    result = _try(load_artifact, *args)
    if "raised" in result:
        return result
    value = result["value"]
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return {"shape": f"{type(value).__name__} {value!r}"[:300]}
    model, meta = value
    try:
        preds = predictions(model)
    except Exception as exc:  # noqa: BLE001
        return {"shape": f"a model that cannot predict ({type(exc).__name__}: {exc})"}
    try:
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError):
        meta = repr(meta)
    return {"predictions": preds, "meta": meta}


# --- the judging side ------------------------------------------------------------------------

def _not_answered(call: str) -> NotAnswered:
    return NotAnswered(f"{call} raised NotImplementedError: write it, then run its cell again.")


def _unexpected(call: str, obs: dict) -> CheckFailed:
    r = obs["raised"]
    if r["type"] == "NotImplementedError":
        return _not_answered(call)
    return CheckFailed(f"{call} raised {r['type']}: {r['message']}")


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)
    return a == b


def _compare(got, want: dict, what: str) -> None:
    if isinstance(got, dict) and "raised" in got:
        raise _unexpected(what, got)
    if got["labels"] != want["labels"]:
        wrong = sum(a != b for a, b in zip(got["labels"], want["labels"]))
        raise CheckFailed(f"{what}: the loaded model predicts a different class for {wrong} of {len(want['labels'])} iris rows.")
    if not _same(got["proba"], want["proba"]):
        raise CheckFailed(f"{what}: the loaded model's probabilities differ from the saved model's; it is not the same model.")


def check_pickle_round_trip(save_pickle, load_pickle, filenames: list) -> None:
    """``save_pickle(obj, path)`` writes a pickle (creating folders) and returns the path;
    ``load_pickle(path)`` reads it back. Predictions after the round trip are identical."""
    with tempfile.TemporaryDirectory(prefix="servelab-pickle-") as tmp:
        out = run_isolated(_observe_pickle, save_pickle, load_pickle, tmp, list(filenames), timeout=TIMEOUT,
                           what="your save_pickle/load_pickle")
    for obs in out["saves"]:
        name = Path(obs["path"]).name
        call = f"save_pickle(model, {obs['path']!r})"
        if "raised" in obs:
            raise _unexpected(call, obs)
        if not obs["exists"]:
            raise CheckFailed(f"after {call} there is no file at that path (create missing folders with mkdir(parents=True)).")
        if obs["returned"] is None or Path(obs["returned"]) != Path(obs["path"]):
            raise CheckFailed(f"{call} should return the path it wrote, {obs['path']!r}; it returned {obs['returned']!r}.")
        if "raised" in obs["pickle_load"]:
            r = obs["pickle_load"]["raised"]
            raise CheckFailed(f"pickle.load cannot read the file save_pickle wrote ({r['type']}: {r['message']}); save it with pickle.dump.")
        _compare(obs["pickle_load"], out["original"], f"pickle.load of {name}")
        _compare(obs["load_pickle"], out["original"], f"load_pickle({obs['path']!r})")
    _compare(out["other_loaded"], out["other_original"], "load_pickle on a file saved by pickle.dump of another model")


def check_write_artifact(write_artifact, cases: list) -> None:
    """``write_artifact(model, directory, features, classes)`` writes model.joblib and meta.json.

    Each case is ``{"subdir", "features", "classes"}`` and optionally ``"model": "other"``.
    meta.json must hold the given features and classes, the sha256 of model.joblib's bytes and
    the versions of python, sklearn, joblib and numpy; the function returns the directory.
    """
    want_versions = installed_versions()
    with tempfile.TemporaryDirectory(prefix="servelab-artifact-") as tmp:
        dirs = [Path(tmp) / f"case{i}" / case["subdir"] for i, case in enumerate(cases)]
        jobs = [[str(d), c["features"], c["classes"], c.get("model", "course")] for d, c in zip(dirs, cases)]
        results = run_isolated(_observe_writes, write_artifact, jobs, timeout=TIMEOUT, what="your write_artifact")
        for case, directory, out in zip(cases, dirs, results):
            call = f"write_artifact(model, {str(directory)!r}, {case['features']!r}, {case['classes']!r})"
            if "raised" in out:
                raise _unexpected(call, out)
            if out["returned"] is None or Path(out["returned"]) != directory:
                raise CheckFailed(f"{call} should return the directory, {str(directory)!r}; it returned {out['returned']!r}.")
            model_path, meta_path = directory / MODEL_FILE, directory / META_FILE
            for path in (model_path, meta_path):
                if not path.is_file():
                    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
                    raise CheckFailed(f"{call} should write {path.name} into the directory; it holds {present}.")
            _compare(out.get("reloaded"), out["original"], f"joblib.load of the {MODEL_FILE} that write_artifact wrote")
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError as exc:
                raise CheckFailed(f"{META_FILE} is not valid JSON ({exc}).") from None
            _judge_meta(meta, case, sha256_of(model_path), want_versions)


def _judge_meta(meta, case: dict, digest: str, want_versions: dict) -> None:
    if not isinstance(meta, dict):
        raise CheckFailed(f"{META_FILE} should hold a JSON object; it holds {type(meta).__name__}.")
    missing = [k for k in ("features", "classes", "sha256", "versions") if k not in meta]
    if missing:
        raise CheckFailed(f"{META_FILE} should have the keys features, classes, sha256 and versions; {missing} are missing.")
    for key in ("features", "classes"):
        if meta[key] != list(case[key]):
            raise CheckFailed(f"{META_FILE}[{key!r}] should be {list(case[key])}, as passed in; it is {meta[key]!r}.")
    if meta["sha256"] != digest:
        raise CheckFailed(
            f"{META_FILE}['sha256'] is {meta['sha256']!r}, but the sha256 of {MODEL_FILE}'s bytes is {digest!r}. "
            "Hash the file after writing it: hashlib.sha256(path.read_bytes()).hexdigest()."
        )
    versions = meta["versions"]
    if not isinstance(versions, dict):
        raise CheckFailed(f"{META_FILE}['versions'] should be an object like {want_versions}; it is {versions!r}.")
    for name, version in want_versions.items():
        if versions.get(name) != version:
            raise CheckFailed(
                f"{META_FILE}['versions'][{name!r}] should be {version!r}, the version installed here; it is {versions.get(name)!r}."
            )


def _run_loads(load_artifact, cases: list) -> list:
    """Write a good artifact per case, tamper with it as the case says, run the loader on all.

    Returns ``(observation, meta as written, whether the trap's marker exists)`` per case.
    """
    with tempfile.TemporaryDirectory(prefix="servelab-load-") as tmp:
        jobs, metas, markers = [], [], []
        for i, case in enumerate(cases):
            directory, marker = Path(tmp) / f"case{i}" / "artifact", Path(tmp) / f"case{i}" / "trap" / "MARKER"
            marker.parent.mkdir(parents=True)
            meta = write_reference_artifact(directory, case.get("model", "course"), case.get("features"), case.get("classes"))
            if case.get("tamper"):
                TAMPERINGS[case["tamper"]][1](directory, marker)
            expected = {"right": meta["sha256"], "wrong": "0" * 64, None: None}[case.get("expected_sha256")]
            jobs.append([str(directory), expected])
            metas.append(meta)
            markers.append(marker)
        observations = run_isolated(_observe_loads, load_artifact, jobs, timeout=TIMEOUT, what="your load_artifact")
        return [(obs, meta, marker.exists()) for obs, meta, marker in zip(observations, metas, markers)]


def _load_call(case: dict) -> str:
    extra = {"right": ", expected_sha256=<the good digest>", "wrong": ", expected_sha256='000...0'", None: ""}
    return f"load_artifact(directory{extra[case.get('expected_sha256')]})"


def _judge_loaded(case: dict, obs: dict, meta: dict) -> None:
    call = f"{_load_call(case)} on {case.get('why', 'a good artifact')}"
    if "raised" in obs:
        raise _unexpected(call, obs)
    if "shape" in obs:
        raise CheckFailed(f"{call} should return a tuple (model, meta); it returned {obs['shape']}.")
    _compare(obs["predictions"], predictions(course_model(case.get("model", "course"))), call)
    if obs["meta"] != meta:
        raise CheckFailed(f"{call} should return meta.json's contents as meta; it returned {obs['meta']!r}.")


def check_load_artifact(load_artifact, cases: list) -> None:
    """``load_artifact(directory, expected_sha256=None)`` returns ``(model, meta)`` for a good artifact.

    Each case is ``{"why"}`` with optional ``"model": "other"``, ``"features"``/``"classes"``
    and ``"expected_sha256": "right"``. The predictions must be the saved model's and ``meta``
    the contents of meta.json.
    """
    for case, (obs, meta, _) in zip(cases, _run_loads(load_artifact, cases)):
        _judge_loaded(case, obs, meta)


def check_refuses(load_artifact, cases: list) -> None:
    """``load_artifact`` refuses tampered artifacts with the right error, before loading anything.

    Each case is ``{"tamper": <a TAMPERINGS name>, "raises": <error class name>}``, with
    optional ``"mentions"`` (words the message must contain) and ``"expected_sha256"``
    (``"right"``: the good file's digest; ``"wrong"``: a digest of nothing). The error must be
    the named class, a subclass of ``ArtifactError`` and of ``ValueError``, and the booby-trapped
    file must not have been loaded.
    """
    # A loader that refuses everything is not a safe loader: a good artifact must load too.
    good = {"why": "a good artifact"}
    results = _run_loads(load_artifact, [good, *cases])
    _judge_loaded(good, *results[0][:2])
    for case, (obs, _, trapped) in zip(cases, results[1:]):
        what = TAMPERINGS[case["tamper"]][0] if case.get("tamper") else "a good artifact"
        call = f"{_load_call(case)} with {what}"
        if trapped:
            raise CheckFailed(
                f"{call} loaded the file before refusing it: unpickling ran the code planted in it (it wrote a "
                f"marker file). Check meta.json, the sha256 and the versions first; call joblib.load last."
            )
        if "raised" not in obs:
            raise CheckFailed(f"{call} should raise {case['raises']}; it returned normally.")
        r = obs["raised"]
        if r["type"] == "NotImplementedError":
            raise _not_answered(call)
        if case["raises"] not in r["mro"] or "ArtifactError" not in r["mro"] or "ValueError" not in r["mro"]:
            raise CheckFailed(f"{call} should raise {case['raises']} (an ArtifactError); it raised {r['type']}: {r['message']}")
        for word in case.get("mentions", []):
            if word.lower() not in r["message"].lower():
                raise CheckFailed(f"{call}: the {r['type']} message should mention {word!r}; it was {r['message']!r}.")
