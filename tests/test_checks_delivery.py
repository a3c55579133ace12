"""autograder.checks.delivery (notebook 11) on the solution and on answers that are wrong in one way each."""
from __future__ import annotations

import math

import pytest

from autograder.checks import delivery
from autograder.errors import CheckFailed, NotAnswered

from conftest import load_solution_module


@pytest.fixture(scope="module")
def solution(tmp_path_factory):
    return load_solution_module("11_validation_containers_ci.ipynb", tmp_path_factory.mktemp("sol11"))


# --- validate_batch -------------------------------------------------------------------------

SCHEMA = {
    "columns": {
        "id": {"type": "int", "min": 1},
        "sepal_length": {"type": "float", "min": 4.0, "max": 8.0},
        "sepal_width": {"type": "float", "min": 2.0, "max": 4.5},
        "petal_length": {"type": "float", "min": 1.0, "max": 7.0},
        "petal_width": {"type": "float", "min": 0.1, "max": 2.5, "nullable": True},
        "source": {"type": "str", "allowed": ["web", "app", "batch"], "required": False},
    },
    "extra_columns": "reject",
}


def rows_with(changes: dict) -> list[dict]:
    """Eight iris records with ``{index: {column: value or DELETE}}`` applied."""
    rows = delivery.iris_records(8, seed=5)
    for i, change in changes.items():
        for column, value in change.items():
            if value is DELETE:
                del rows[i][column]
            else:
                rows[i][column] = value
    return rows


DELETE = object()
CASE_KINDS = {
    "why": "one problem of each kind", "schema": SCHEMA,
    "rows": rows_with({0: {"sepal_length": DELETE}, 1: {"id": True}, 2: {"sepal_width": float("nan")},
                       3: {"petal_length": 7.5}, 4: {"source": "mail"}, 5: {"debug": 1},
                       6: {"sepal_length": "5.1", "id": 0, "petal_width": None}, 7: {"sepal_length": 4.0, "source": DELETE}}),
    "bad": {0: [("sepal_length", "missing")], 1: [("id", "type")], 2: [("sepal_width", "null")], 3: [("petal_length", "range")],
            4: [("source", "allowed")], 5: [("debug", "extra")], 6: [("id", "range"), ("sepal_length", "type")]},
}
CASE_DROP = {
    "why": "the drop policy", "schema": {**SCHEMA, "extra_columns": "drop"},
    "rows": rows_with({1: {"note": "x"}, 2: {"note": "y", "sepal_width": None}}), "bad": {2: [("sepal_width", "null")]},
}
CASE_EMPTY = {"why": "an empty batch", "schema": SCHEMA, "rows": [], "bad": {}}
CASE_BAD_SCHEMA = {"why": "an unknown type", "schema": {"columns": {"x": {"type": "decimal"}}}, "rows": [], "raises": "ValueError"}
ALL_CASES = [CASE_KINDS, CASE_DROP, CASE_EMPTY, CASE_BAD_SCHEMA]


def make_validator(bool_is_int=False, nan_passes=False, coerce=False, exclusive=False, ignore_extra=False,
                   mutate=False, keep_extra=False, vague=False, empty_raises=False, lenient_schema=False, first_only=False):
    """A validate_batch that is right unless one of the flags breaks it in one way."""

    def validate_batch(rows, schema):
        types = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
        columns, policy = schema["columns"], schema.get("extra_columns", "reject")
        if not lenient_schema and (policy not in ("reject", "drop") or any(s["type"] not in types for s in columns.values())):
            raise ValueError("bad schema")
        if empty_raises and not rows:
            raise ValueError("empty batch")
        good, bad = [], []
        for index, row in enumerate(rows):
            errors = []
            for name, spec in columns.items():
                if name not in row:
                    if spec.get("required", True):
                        errors.append((name, "missing"))
                    continue
                value = row[name]
                if coerce and isinstance(value, str) and spec["type"] == "float":
                    value = float(value)
                if value is None or (not nan_passes and isinstance(value, float) and math.isnan(value)):
                    if not spec.get("nullable"):
                        errors.append((name, "null"))
                    continue
                if not isinstance(value, types[spec["type"]]) or (isinstance(value, bool) and spec["type"] != "bool" and not bool_is_int):
                    errors.append((name, "type"))
                    continue
                low, high = spec.get("min"), spec.get("max")
                below = low is not None and (value <= low if exclusive else value < low)
                if below or (high is not None and value > high) or (isinstance(value, float) and math.isinf(value)):
                    errors.append((name, "range"))
                    continue
                if "allowed" in spec and value not in spec["allowed"]:
                    errors.append((name, "allowed"))
            extra = [k for k in row if k not in columns]
            if policy == "reject" and not ignore_extra:
                errors += [(k, "extra") for k in extra]
            if first_only:
                errors = errors[:1]
            if errors:
                bad.append({"index": index, "row": row, "errors": [
                    {"column": c, "problem": p, "message": "invalid value" if vague else f"{c}: {p}"} for c, p in errors]})
            elif policy == "drop" and mutate:
                for k in extra:
                    del row[k]
                good.append(row)
            else:
                good.append({k: v for k, v in row.items() if k in columns or keep_extra or policy == "reject"})
        return {"good": good, "bad": bad}

    return validate_batch


def test_the_solution_passes_every_validation_case(solution):
    delivery.check_validate_batch(solution.validate_batch, ALL_CASES)


def test_the_validation_double_is_right_when_no_flag_is_set():
    delivery.check_validate_batch(make_validator(), ALL_CASES)


@pytest.mark.parametrize("flags, case, message", [
    ({"bool_is_int": True}, CASE_KINDS, r"row 1 .* should be a bad row \(id: type\)"),
    ({"nan_passes": True}, CASE_KINDS, r"row 2 .* should be a bad row \(sepal_width: null\)"),
    ({"exclusive": True}, CASE_KINDS, r"row 7 .* is valid, but 'bad' lists it"),
    ({"ignore_extra": True}, CASE_KINDS, r"row 5 .* should be a bad row \(debug: extra\)"),
    ({"first_only": True}, CASE_KINDS, r"row 6 .* should have the errors \('id', 'range'\), \('sepal_length', 'type'\)"),
    ({"vague": True}, CASE_KINDS, "the message of each error should name its column"),
    ({"mutate": True}, CASE_DROP, "changed the input rows"),
    ({"keep_extra": True}, CASE_DROP, "keeps only the schema's columns"),
    ({"empty_raises": True}, CASE_EMPTY, "an empty batch raised ValueError"),
    ({"lenient_schema": True}, CASE_BAD_SCHEMA, "should raise ValueError"),
])
def test_a_wrong_validator_fails_with_what_went_wrong(flags, case, message):
    with pytest.raises(CheckFailed, match=message):
        delivery.check_validate_batch(make_validator(**flags), [case])


def test_string_numbers_are_a_type_error_not_converted():
    case = {"why": "a number as text", "schema": SCHEMA, "rows": rows_with({3: {"petal_length": "1.4"}}), "bad": {3: [("petal_length", "type")]}}
    delivery.check_validate_batch(make_validator(), [case])
    with pytest.raises(CheckFailed, match=r"should be a bad row \(petal_length: type\)"):
        delivery.check_validate_batch(make_validator(coerce=True), [case])


def test_an_unwritten_or_malformed_validator():
    def not_written(rows, schema):
        raise NotImplementedError()

    def a_tuple(rows, schema):
        return rows, []

    with pytest.raises(NotAnswered):
        delivery.check_validate_batch(not_written, [CASE_EMPTY])
    with pytest.raises(CheckFailed, match=r"should return \{'good': \[...\], 'bad': \[...\]\}"):
        delivery.check_validate_batch(a_tuple, [CASE_EMPTY])


def test_infer_schema_reads_types_ranges_and_domains():
    rows = [{"a": 1, "b": 2.5, "c": "x", "d": True}, {"a": 3, "b": 1, "c": "y", "d": None}, {"a": 2, "b": float("nan"), "c": "x"}]
    schema = delivery.infer_schema(rows)["columns"]
    assert schema["a"] == {"type": "int", "min": 1, "max": 3}
    assert schema["b"] == {"type": "float", "nullable": True, "min": 1, "max": 2.5}
    assert schema["c"] == {"type": "str", "allowed": ["x", "y"]}
    assert schema["d"] == {"type": "bool", "required": False, "nullable": True}


# --- Dockerfiles ----------------------------------------------------------------------------

BASE, PORT = "python:3.11.10-slim-bookworm", 8000


def solution_text(solution, base=BASE, port=PORT) -> str:
    return solution.dockerfile(base, port)


def returning(text_of):
    """A ``dockerfile(base_image, port)`` answer that returns ``text_of(base_image, port)``."""
    def dockerfile(base_image=BASE, port=PORT):
        return text_of(base_image, port)
    return dockerfile


def test_the_solution_dockerfile_passes_lint_and_structure(solution):
    cases = [{"base_image": BASE, "port": PORT}, {"base_image": "registry.example.com/ml/python:3.12.7-slim", "port": 5000}]
    delivery.check_dockerfile_lint(solution.dockerfile, cases)
    delivery.check_dockerfile_structure(solution.dockerfile, cases)


def test_the_parser_joins_continuations_and_skips_comments():
    text = 'FROM python:3.11 AS base\n# note\nRUN a \\\n  # inside\n  && b\nHEALTHCHECK --interval=5s CMD ["python", "-c", "x"]\nCMD gunicorn app\n'
    ins = delivery.parse_dockerfile(text)
    assert [(i.line, i.keyword) for i in ins] == [(1, "FROM"), (3, "RUN"), (6, "HEALTHCHECK"), (7, "CMD")]
    assert ins[1].args == "a && b"
    assert ins[2].flags == {"interval": "5s"} and ins[2].exec_form == ["python", "-c", "x"]
    assert ins[3].exec_form is None


BROKEN = {
    "latest": (lambda t: t.replace(f"FROM {BASE}", "FROM python:latest"), "DL3007", "moving tag 'latest'"),
    "no tag": (lambda t: t.replace(f"FROM {BASE}", "FROM python"), "DL3006", "has no tag"),
    "root": (lambda t: t.replace("USER 10001:10001", "USER root"), "DL3002", "runs the server as root"),
    "shell-form CMD": (lambda t: t.replace(t[t.index('CMD ["gunicorn"'):], f"CMD gunicorn --bind 0.0.0.0:{PORT} serving.wsgi:app\n"),
                       "DL3025", "is in shell form"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_hadolint_and_the_structure_both_reject(solution, name):
    edit, code, words = BROKEN[name]
    text = edit(solution_text(solution))
    assert code in {f["code"] for f in delivery.lint_dockerfile(text)}
    assert any(words in p for p in delivery.dockerfile_problems(text, None, PORT)), delivery.dockerfile_problems(text, None, PORT)


def test_the_checks_reject_latest_root_shell_cmd_and_no_healthcheck_through_the_answer(solution):
    make = solution.dockerfile  # not the module: a closure over it would send the whole module to the child
    good = make(BASE, PORT)
    hc = good[good.index("HEALTHCHECK"):good.index('CMD ["gunicorn"')]
    cases = [{"base_image": BASE, "port": PORT}]
    for edit, message in [
        (lambda t: t.replace(f"FROM {BASE}", "FROM python:latest"), "DL3007"),
        (lambda t: t.replace("USER 10001:10001", "USER 0"), "DL3002"),
        (BROKEN["shell-form CMD"][0], "DL3025"),
    ]:
        with pytest.raises(CheckFailed, match=message):
            delivery.check_dockerfile_lint(returning(lambda b, p, e=edit: e(make(b, p))), cases)
    with pytest.raises(CheckFailed, match="there is no HEALTHCHECK"):
        delivery.check_dockerfile_structure(returning(lambda b, p: make(b, p).replace(hc, "")), cases)


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("--bind\", \"0.0.0.0", "--bind\", \"127.0.0.1"), "the container's own loopback"),
    (lambda t: t.replace(', "--bind", "0.0.0.0:8000"', ""), "passes no --bind"),
    (lambda t: t.replace("EXPOSE 8000", "EXPOSE 5000"), "EXPOSE 8000 is missing"),
    (lambda t: t.replace("0.0.0.0:8000", "0.0.0.0:9000"), "binds port 9000"),
    (lambda t: t.replace("127.0.0.1:8000/health", "127.0.0.1:8000/"), "should ask http://127.0.0.1:8000/health"),
    (lambda t: t.replace("HEALTHCHECK --interval", "HEALTHCHECK NONE\n#").replace("  CMD [\"python\"", "#  CMD [\"python\""), "HEALTHCHECK NONE"),
    (lambda t: t.replace("COPY requirements.txt .\n", "COPY . .\n"), "copy requirements.txt on its own"),
    (lambda t: t.replace("COPY requirements.txt .\n", "COPY requirements.txt .\nCOPY serving/ serving/\n"), "comes before the pip install"),
    (lambda t: t.replace("COPY model/ model/\n", ""), "nothing copies model/"),
    (lambda t: t.replace("COPY model/ model/", "COPY models/ model/"), "COPY models: the build context has no such"),
    (lambda t: t.replace("USER 10001:10001\n", ""), "there is no USER"),
    (lambda t: t.replace("USER 10001:10001\n", "").replace("COPY requirements.txt .", "USER 10001\nCOPY requirements.txt ."),
     "USER comes before the install"),
    (lambda t: t.replace("USER 10001:10001", "USER svc"), "no RUN creates that user"),
    (lambda t: t.replace("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 API_TOKEN=s3cr3t"), "ENV API_TOKEN puts a secret"),
    (lambda t: t.replace("CMD [\"python\", \"-c\", \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)\"]",
                         "CMD curl -f http://127.0.0.1:8000/health"), "runs curl, which slim Python images do not have"),
    (lambda t: t.replace('CMD ["gunicorn"', 'ENTRYPOINT ["gunicorn"]\nCMD ["gunicorn"'), "leave out ENTRYPOINT"),
    (lambda t: t.replace("WORKDIR /app\n", ""), "absolute WORKDIR"),
])
def test_each_structural_rule_names_its_problem(solution, edit, words):
    text = edit(solution_text(solution))
    assert text != solution_text(solution)
    problems = delivery.dockerfile_problems(text, BASE, PORT)
    assert any(words in p for p in problems), problems


def test_the_structure_follows_the_arguments(solution):
    text = solution_text(solution, "python:3.12.7-slim-bookworm", 9000)
    assert delivery.dockerfile_problems(text, "python:3.12.7-slim-bookworm", 9000) == []
    fixed = solution.dockerfile(BASE, PORT)
    ignored = returning(lambda b, p: fixed)
    with pytest.raises(CheckFailed, match=r"built FROM python:3.11.10-slim-bookworm; expected .*python:3.12.7.*\n.*EXPOSE 9000 is missing"):
        delivery.check_dockerfile_structure(ignored, [{"base_image": "python:3.12.7-slim-bookworm", "port": 9000}])


def test_ignore_pragmas_do_not_silence_hadolint():
    text = "# hadolint ignore=DL3007\nFROM python:latest\nCMD [\"python\"]\n"
    assert "DL3007" in {f["code"] for f in delivery.lint_dockerfile(text)}


def test_an_unwritten_or_non_text_dockerfile():
    def not_written(base_image=BASE, port=PORT):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        delivery.check_dockerfile_lint(not_written, [{"base_image": BASE, "port": PORT}])
    with pytest.raises(CheckFailed, match="should return the text as a str; it returned a list"):
        delivery.check_dockerfile_structure(returning(lambda b, p: ["FROM", b]), [{"base_image": BASE, "port": PORT}])


# --- CI workflows ---------------------------------------------------------------------------

PY, IMAGE = "3.11", "iris-service"


@pytest.fixture(scope="module")
def workflow(solution):
    return solution.ci_workflow(PY, IMAGE)


def test_load_workflow_gives_on_back():
    doc = delivery.load_workflow("on:\n  push:\njobs: {}\n")
    assert doc["on"] == {"push": None} and True not in doc
    with pytest.raises(ValueError, match="not valid YAML"):
        delivery.load_workflow("jobs:\n\t- x\n")


def test_the_solution_workflow_passes_and_fails_where_it_should(solution):
    delivery.check_ci_workflow(solution.ci_workflow, [
        {"python_version": "3.10", "image": "fraud-api", "projects": ["passing", "failing"]},
    ])


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("  pull_request:\n", ""), "it lacks pull_request"),
    (lambda t: t.replace('python-version: "3.11"', "python-version: 3.10"), "python-version is the number 3.1"),
    (lambda t: t.replace('python-version: "3.11"', 'python-version: "3.12"'), "should install Python '3.11'"),
    (lambda t: t.replace("    needs: test\n", ""), "needs: test"),
    (lambda t: t.replace("docker build -t", "docker run -t"), "runs `docker run`"),
    (lambda t: t.replace("${{ github.sha }}", "latest"), "is 'latest' or empty"),
    (lambda t: t.replace("-t iris-service:", "-t other:"), "should tag the image iris-service"),
    (lambda t: t.replace("python -m pip install -r requirements.txt", "echo no install"), "has no install step"),
    (lambda t: t.replace("      - name: Run the tests\n        run: python -m pytest -q\n", ""), "has no pytest step"),
    (lambda t: t.replace("run: python -m pytest -q", "continue-on-error: true\n        run: python -m pytest -q"), "continue-on-error"),
    (lambda t: t.replace("  build:\n", "  package:\n"), "there is no `build` job"),
    (lambda t: t.replace("jobs:\n", "jobs:\n\t"), "not valid YAML"),
])
def test_each_workflow_rule_names_its_problem(workflow, edit, words):
    text = edit(workflow)
    assert text != workflow
    problems = delivery.workflow_problems(text, PY, IMAGE)
    assert any(words in p for p in problems), problems


@pytest.mark.parametrize("command, projects, message", [
    ("python -m pytest -q -p no:cacheprovider --cov=service", ["passing"], r"failed \(exit code 4\) in a project whose tests all pass"),
    ("python -m pytest -q || true", ["failing"], "exited 0. A CI test step must fail the job"),
    ("python -m pytest -q tests/test_model.py", ["passing"], "did not run the project's whole test suite"),
    ("python -m pytest -q -k no_such_test", ["passing"], r"failed \(exit code 5\)"),
])
def test_a_test_step_that_does_not_test_fails_clearly(workflow, command, projects, message):
    text = workflow.replace("run: python -m pytest -q", f"run: {command}")
    with pytest.raises(CheckFailed, match=message):
        delivery.check_ci_workflow(lambda python_version=PY, image=IMAGE: text,
                                   [{"python_version": PY, "image": IMAGE, "projects": projects}])


def test_a_missing_test_step_fails_clearly(workflow, tmp_path):
    text = workflow.replace("      - name: Run the tests\n        run: python -m pytest -q\n", "")
    with pytest.raises(CheckFailed, match=r"the test job has no pytest step \(run: python -m pytest\)"):
        delivery.check_ci_workflow(lambda python_version=PY, image=IMAGE: text, [{"python_version": PY, "image": IMAGE}])
    with pytest.raises(ValueError, match="no step whose run: command calls pytest"):
        delivery.run_test_step(text, delivery.write_service_project(tmp_path / "project"))


def test_an_unwritten_workflow():
    def not_written(python_version=PY, image=IMAGE):
        raise NotImplementedError()

    with pytest.raises(NotAnswered):
        delivery.check_ci_workflow(not_written, [{"python_version": PY, "image": IMAGE}])
