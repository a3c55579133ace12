"""Real `nbgrader autograde` over the workbook: solutions, blanks and deliberately wrong answers.

One temporary course per notebook; the courses are graded concurrently (one nbgrader each).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from autograder.course import Course
from autograder.grading import NOTEBOOKS, SOLUTIONS, solution_notebooks
from autograder.release import drift, generate_into

from autograder.synth import WRONG, apply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    """``{(student, notebook stem): NotebookResult}`` plus each course's root, by notebook."""
    base = tmp_path_factory.mktemp("grading")

    def grade(solution):
        course = Course(base / solution.stem, [solution])
        course.submit("solution", solution)
        course.submit("blank", NOTEBOOKS / solution.name)
        for wrong in WRONG:
            if wrong.notebook == solution.name:
                course.submit(f"wrong_{wrong.name}", apply(wrong, SOLUTIONS, base / "wrong" / wrong.name / solution.name))
        course.autograde()
        students = sorted(p.name for p in (course.root / "submitted").iterdir())
        return course, {(s, r.notebook): r for s in students for r in course.results(s)}

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(grade, solution_notebooks()))
    results, roots = {}, {}
    for course, res in done:
        results.update(res)
        roots[course.sources[0].stem] = course.root
    return results, roots


def test_solutions_get_full_marks(graded):
    results, _ = graded
    for nb in solution_notebooks():
        r = results[("solution", nb.stem)]
        assert r.max_score > 0
        assert r.score == r.max_score, [(q.id, q.message) for q in r.questions if q.status != "passed"]


def test_blank_notebooks_get_zero_and_every_question_is_graded(graded):
    results, _ = graded
    for nb in solution_notebooks():
        r = results[("blank", nb.stem)]
        assert r.score == 0
        assert {q.id for q in r.questions} == {q.id for q in results[("solution", nb.stem)].questions}
        assert all(q.status in {"failed", "unanswered"} for q in r.questions), [(q.id, q.status, q.message) for q in r.questions]


@pytest.mark.parametrize("wrong", WRONG, ids=[w.name for w in WRONG])
def test_a_wrong_answer_loses_exactly_the_questions_it_should(graded, wrong):
    results, _ = graded
    r = results[(f"wrong_{wrong.name}", wrong.notebook.removesuffix(".ipynb"))]
    lost = {q.id for q in r.questions if q.score < q.max_score}
    assert lost == set(wrong.fails), [(q.id, q.status, q.message[:200]) for q in r.questions]
    for q in r.questions:
        if q.id in wrong.fails:
            assert q.score == 0 and q.message, q
            assert "Traceback" not in q.message


def test_wrong_answers_cover_the_required_kinds_of_bug():
    whys = " ".join(w.why for w in WRONG)
    assert len(WRONG) >= 8
    for kind in ("wrong number", "wrong order", "500", "missing route", "wrong status", "wrong content type",
                 "crash on startup", "hang"):
        assert kind in whys, kind


def test_graded_test_cells_write_nothing_to_stderr(graded):
    _, roots = graded
    for stem, root in roots.items():
        nb = json.loads((root / "autograded" / "solution" / "servelab" / f"{stem}.ipynb").read_text())
        for cell in nb["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                streams = [o for o in cell.get("outputs", []) if o.get("name") == "stderr"]
                assert streams == [], (stem, cell["metadata"]["nbgrader"]["grade_id"], streams)


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
