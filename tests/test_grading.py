"""Real grading of the workbook: solutions, blanks and deliberately wrong answers.

One class holds every solution, every blank student notebook and every wrong answer; it is
graded once with ``python -m autograder grade`` (:func:`autograder.grade.classgrade.grade_class`):
real ``nbgrader autograde`` in the sandbox, then every question again outside the kernel
(:mod:`autograder.grade.judge`), whose verdict is the recorded grade.
"""
from __future__ import annotations

import json
import shutil

import pytest

from autograder.grade.grading import NOTEBOOKS, SOLUTIONS, solution_notebooks
from autograder.release import drift, generate_into
from autograder.synth import WRONG, apply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    """``({(student, notebook stem): notebook result dict}, out folder)``."""
    from autograder.grade.classgrade import grade_class, stored_results

    base = tmp_path_factory.mktemp("grading")
    submitted = base / "class" / "submitted"

    def put(student, source, name):
        dest = submitted / student / "servelab" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, dest)

    for nb in solution_notebooks():
        put("solution", nb, nb.name)
        put("blank", NOTEBOOKS / nb.name, nb.name)
    for wrong in WRONG:
        put(f"wrong_{wrong.name}", apply(wrong, SOLUTIONS, base / "wrong" / wrong.name / wrong.notebook), wrong.notebook)
    out = base / "out"
    grade_class(base / "class", out, progress=False)
    results = {(r["student"], nb["notebook"]): nb for r in stored_results(out) for nb in r["notebooks"]}
    return results, out


def _why(r):
    return [(q["id"], q["status"], q["message"][:300]) for q in r["questions"] if q["score"] < q["max_score"]]


def test_solutions_get_full_marks(graded):
    results, _ = graded
    for nb in solution_notebooks():
        r = results[("solution", nb.stem)]
        assert r["status"] == "ok", (nb.stem, r.get("reason"))
        assert r["max_score"] > 0
        assert r["score"] == r["max_score"], (nb.stem, _why(r))


def test_blank_notebooks_get_zero_and_every_question_is_graded(graded):
    results, _ = graded
    for nb in solution_notebooks():
        r = results[("blank", nb.stem)]
        assert r["score"] == 0
        assert {q["id"] for q in r["questions"]} == {q["id"] for q in results[("solution", nb.stem)]["questions"]}
        assert all(q["status"] in {"failed", "unanswered"} for q in r["questions"]), [(q["id"], q["status"], q["message"]) for q in r["questions"]]


def test_inside_and_outside_verdicts_agree_for_honest_work(graded):
    """Solutions, blanks and wrong answers never patch the grader: the kernel and the outside grader must agree."""
    results, _ = graded
    for (student, notebook), r in results.items():
        if r["status"] == "missing":
            continue
        assert not r.get("suspected_tampering"), (student, notebook, [
            (q["id"], q["kernel_score"], q["kernel_status"], q["score"], q["message"][:200]) for q in r["questions"]
            if q["id"] in r["suspected_tampering"]])
        assert all(q["kernel_score"] == q["score"] for q in r["questions"]), (student, notebook)


@pytest.mark.parametrize("wrong", WRONG, ids=[w.name for w in WRONG])
def test_a_wrong_answer_loses_exactly_the_questions_it_should(graded, wrong):
    results, _ = graded
    r = results[(f"wrong_{wrong.name}", wrong.notebook.removesuffix(".ipynb"))]
    lost = {q["id"] for q in r["questions"] if q["score"] < q["max_score"]}
    assert lost == set(wrong.fails), _why(r)
    for q in r["questions"]:
        if q["id"] in wrong.fails:
            assert q["score"] == 0 and q["message"], q
            assert "Traceback" not in q["message"]


def test_wrong_answers_cover_the_required_kinds_of_bug():
    whys = " ".join(w.why for w in WRONG)
    assert len(WRONG) >= 8
    for kind in ("wrong number", "wrong order", "500", "missing route", "wrong status", "wrong content type",
                 "crash on startup", "hang"):
        assert kind in whys, kind


def test_graded_test_cells_write_nothing_to_stderr(graded):
    _, out = graded
    for nb_path in solution_notebooks():
        nb = json.loads((out / "autograded" / "solution" / "servelab" / nb_path.name).read_text())
        for cell in nb["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                streams = [o for o in cell.get("outputs", []) if o.get("name") == "stderr"]
                assert streams == [], (nb_path.stem, cell["metadata"]["nbgrader"]["grade_id"], streams)


def test_notebooks_match_a_fresh_generate_assignment(tmp_path):
    generate_into(tmp_path)
    assert drift(tmp_path) == []


def test_hidden_tests_exist_in_solutions_and_never_reach_students():
    for nb in solution_notebooks():
        for cell in json.loads(nb.read_text())["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                assert "### BEGIN HIDDEN TESTS" in "".join(cell["source"]), (nb.name, cell["metadata"]["nbgrader"]["grade_id"])
        student = (NOTEBOOKS / nb.name).read_text()
        assert "HIDDEN TESTS" not in student and "BEGIN SOLUTION" not in student, nb.name


def test_every_notebook_has_a_parameters_cell():
    for nb in solution_notebooks():
        cells = json.loads(nb.read_text())["cells"]
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), nb.name
