"""The notebook-03 checks: right answers pass, each wrong one fails with a message that names
the mistake, and the booby-trapped files never fire in the judging process."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import joblib
import pytest

from autograder.checks import serialization as check
from autograder.errors import CheckFailed, NotAnswered
from server_stub.model import FEATURES

CLASSES = ["setosa", "versicolor", "virginica"]
WRITE_CASES = [
    {"subdir": "iris-v1", "features": FEATURES, "classes": CLASSES},
    {"subdir": "deep/er", "features": ["a", "b", "c", "d"], "classes": ["x", "y", "z"], "model": "other"},
]
REFUSALS = [
    {"tamper": "replace_model", "raises": "ChecksumMismatch", "mentions": ["sha256"]},
    {"tamper": "flip_byte", "raises": "ChecksumMismatch"},
    {"tamper": "append_bytes", "raises": "ChecksumMismatch"},
    {"tamper": "edit_meta_sha", "raises": "ChecksumMismatch"},
    {"tamper": "rewrite_both", "expected_sha256": "right", "raises": "ChecksumMismatch"},
    {"expected_sha256": "wrong", "raises": "ChecksumMismatch"},
    {"tamper": "old_sklearn", "raises": "VersionMismatch", "mentions": ["sklearn", "0.24.2"]},
    {"tamper": "old_numpy", "raises": "VersionMismatch", "mentions": ["numpy", "1.19.5"]},
    {"tamper": "no_meta", "raises": "ArtifactError"},
]


class ArtifactError(ValueError):
    pass


class ChecksumMismatch(ArtifactError):
    pass


class VersionMismatch(ArtifactError):
    pass


# --- right answers ----------------------------------------------------------------------------

def save_pickle(obj, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def load_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_artifact(model, directory, features, classes, versions=None, digest=None):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, directory / "model.joblib")
    meta = {
        "features": list(features),
        "classes": list(classes),
        "sha256": digest or _sha(directory / "model.joblib"),
        "versions": versions or check.installed_versions(),
    }
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def load_artifact(directory, expected_sha256=None, *, check_sha=True, check_versions=True, check_first=True,
                  error=ChecksumMismatch):
    directory = Path(directory)
    if not check_first:
        joblib.load(directory / "model.joblib")
    if not (directory / "meta.json").is_file():
        raise ArtifactError("no meta.json")
    meta = json.loads((directory / "meta.json").read_text())
    digest = _sha(directory / "model.joblib")
    if check_sha and (digest != meta["sha256"] or expected_sha256 is not None and digest != expected_sha256):
        raise error(f"sha256 {digest} does not match")
    if check_versions:
        for library in ("sklearn", "joblib", "numpy"):
            if meta["versions"][library] != check.installed_versions()[library]:
                raise VersionMismatch(f"{library}: saved with {meta['versions'][library]}")
    return joblib.load(directory / "model.joblib"), meta


# --- wrong answers ----------------------------------------------------------------------------

def save_compressed(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(obj, path, compress=3)
    return Path(path)


def save_without_folders(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


_CACHE = {}


def save_in_memory(obj, path):
    save_pickle(obj, path)
    _CACHE["model"] = obj
    return path


def load_from_memory(path):
    return _CACHE.get("model") or load_pickle(path)


def write_sha_of_object(model, directory, features, classes):
    return write_artifact(model, directory, features, classes, digest=hashlib.sha256(pickle.dumps(model)).hexdigest())


def write_without_numpy(model, directory, features, classes):
    versions = {k: v for k, v in check.installed_versions().items() if k != "numpy"}
    return write_artifact(model, directory, features, classes, versions=versions)


def write_course_names(model, directory, features, classes):
    return write_artifact(model, directory, FEATURES, CLASSES)


def load_first(directory, expected_sha256=None):
    return load_artifact(directory, expected_sha256, check_first=False)


def load_plain_value_error(directory, expected_sha256=None):
    return load_artifact(directory, expected_sha256, error=ValueError)


def load_ignoring_versions(directory, expected_sha256=None):
    return load_artifact(directory, expected_sha256, check_versions=False)


def load_without_sha_check(directory, expected_sha256=None):
    return load_artifact(directory, expected_sha256, check_sha=False)


def load_ignoring_expected(directory, expected_sha256=None):
    return load_artifact(directory)


def refuse_everything(directory, expected_sha256=None):
    raise ChecksumMismatch("sha256: refusing everything")


def unanswered(*args):
    raise NotImplementedError()


# --- tests ------------------------------------------------------------------------------------

def test_right_answers_pass():
    check.check_pickle_round_trip(save_pickle, load_pickle, ["model.pkl", "a/b/model.pickle"])
    check.check_write_artifact(write_artifact, WRITE_CASES)
    check.check_load_artifact(load_artifact, [{"why": "good"}, {"why": "other", "model": "other", "expected_sha256": "right"}])
    check.check_refuses(load_artifact, REFUSALS)


@pytest.mark.parametrize("save, load, message", [
    (save_compressed, load_pickle, "pickle.load cannot read the file"),
    (save_without_folders, load_pickle, "raised FileNotFoundError"),
    (save_in_memory, load_from_memory, "load_pickle on a file saved by pickle.dump of another model"),
])
def test_wrong_round_trips_fail(save, load, message):
    with pytest.raises(CheckFailed, match=message):
        check.check_pickle_round_trip(save, load, ["sub/model.pkl"])


@pytest.mark.parametrize("impl, message", [
    (write_sha_of_object, r"the sha256 of model\.joblib's bytes is"),
    (write_without_numpy, r"\['versions'\]\['numpy'\] should be"),
    (write_course_names, r"\['features'\] should be \['a', 'b', 'c', 'd'\]"),
])
def test_wrong_sidecars_fail(impl, message):
    with pytest.raises(CheckFailed, match=message):
        check.check_write_artifact(impl, WRITE_CASES)


@pytest.mark.parametrize("impl, cases, message", [
    (load_first, REFUSALS[:1], "loaded the file before refusing it"),
    (load_plain_value_error, REFUSALS[1:2], "should raise ChecksumMismatch .* it raised ValueError"),
    # The version tamperings also swap in a booby-trapped model with a matching sha256.
    (load_ignoring_versions, REFUSALS[6:7], "scikit-learn 0.24.2 loaded the file before refusing it"),
    (load_ignoring_expected, REFUSALS[4:5], "loaded the file before refusing it"),
    (load_without_sha_check, REFUSALS[3:4], "should raise ChecksumMismatch; it returned normally"),
    (refuse_everything, REFUSALS[:1], "on a good artifact raised ChecksumMismatch"),
])
def test_wrong_loaders_fail(impl, cases, message):
    with pytest.raises(CheckFailed, match=message):
        check.check_refuses(impl, cases)


def test_blank_answers_are_not_answered():
    with pytest.raises(NotAnswered):
        check.check_pickle_round_trip(unanswered, load_pickle, ["model.pkl"])
    with pytest.raises(NotAnswered):
        check.check_write_artifact(unanswered, WRITE_CASES[:1])
    with pytest.raises(NotAnswered):
        check.check_refuses(unanswered, REFUSALS[:1])


def test_every_tampering_changes_what_a_careful_loader_sees(tmp_path):
    good = check.write_reference_artifact(tmp_path / "good")
    for name, (_, tamper) in check.TAMPERINGS.items():
        directory = tmp_path / name
        check.write_reference_artifact(directory)
        tamper(directory, tmp_path / f"{name}.marker")
        meta_path = directory / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        changed = meta != good or _sha(directory / "model.joblib") != good["sha256"]
        assert changed, name
        assert not (tmp_path / f"{name}.marker").exists(), name


def test_the_booby_trap_fires_only_when_loaded(tmp_path):
    marker = tmp_path / "MARKER"
    data = check.booby_trap(marker)
    assert not marker.exists()
    pickle.loads(data)  # the demonstration: loading is what runs it
    assert marker.read_text().startswith("written while unpickling")
