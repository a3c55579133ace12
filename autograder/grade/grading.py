"""Grading one notebook, or a set of them, with real nbgrader.

The library side of ``python -m autograder check``; the CLI only parses arguments and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

from autograder import REPO
from autograder.grade.course import SOLUTIONS, NotebookResult, Question, solution_notebooks  # noqa: F401
NOTEBOOKS = REPO / "notebooks"


class NotGradable(ValueError):
    """The input is not a notebook this workbook can grade; the message says why."""


def grade_ids(nb: dict) -> set[str]:
    return {
        cell["metadata"]["nbgrader"]["grade_id"]
        for cell in nb.get("cells", [])
        if isinstance(cell, dict)
        and isinstance(cell.get("metadata"), dict)
        and isinstance(cell["metadata"].get("nbgrader"), dict)
        and cell["metadata"]["nbgrader"].get("grade_id")
    }


def match_solution(path: Path) -> Path:
    """The solution notebook that ``path`` is a copy of.

    By file name first; a renamed file is matched by its nbgrader cell ids. Raises
    :class:`NotGradable` for a file that is not a notebook or matches no solution.
    """
    path = Path(path)
    if not path.is_file():
        raise NotGradable(f"{path}: no such file")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotGradable(f"{path}: not a notebook (invalid JSON: {exc})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotGradable(f"{path}: not a Jupyter notebook (no list of cells)")
    by_name = SOLUTIONS / path.name
    if by_name.is_file() and by_name.name[:2].isdigit():
        return by_name
    ids = grade_ids(nb)
    best, overlap = None, 0
    for sol in solution_notebooks():
        common = len(ids & grade_ids(json.loads(sol.read_text())))
        if common > overlap:
            best, overlap = sol, common
    if best is None:
        names = ", ".join(s.name for s in solution_notebooks())
        raise NotGradable(f"{path}: matches no servelab notebook by name or by its graded cells (known: {names})")
    return best


def check_notebook(path: Path, isolation: str | None = None) -> NotebookResult:
    """Grade one notebook through the class pipeline (sandbox, judge, kernel), hidden tests included.

    The recorded scores are the judge's, as for ``grade``; each question also carries its
    kernel score, and the result its isolation record.
    """
    from autograder.grade.classgrade import expected_questions, isolation_policy, template_gradebook
    from autograder.grade.judge import trusted_tests
    from autograder.grade.pipeline import grade_submission
    from autograder.grade.sandbox import Limits, shutdown

    solution = match_solution(path)
    require = isolation_policy(isolation)
    expected = expected_questions([solution])
    try:
        result = grade_submission("student", {solution.stem: Path(path).read_bytes()}, template_gradebook([solution]), expected,
                                  Limits().to_dict(), {solution.stem: trusted_tests(solution)},
                                  hide=[str(Path(path).resolve().parent)] if Path(path).resolve().parent != NOTEBOOKS else [],
                                  require_full=require)
    finally:
        shutdown()
    nb = result["notebooks"][0]
    questions = [Question(q["id"], q["score"], q["max_score"], q["status"], q["message"], q.get("kernel_score"))
                 for q in nb["questions"]]
    return NotebookResult("student", str(path), nb["score"], nb["max_score"], questions, status=nb["status"],
                          reason=nb.get("reason", ""), isolation=nb.get("isolation", {}),
                          suspected_tampering=nb.get("suspected_tampering", []))
