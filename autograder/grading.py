"""Grading one notebook, or a set of them, with real nbgrader.

The library side of ``python -m autograder check``; the CLI only parses arguments and prints.
"""
from __future__ import annotations

import json
from pathlib import Path

from autograder import REPO
from autograder.course import Course, NotebookResult

SOLUTIONS = REPO / "solutions"
NOTEBOOKS = REPO / "notebooks"


class NotGradable(ValueError):
    """The input is not a notebook this workbook can grade; the message says why."""


def solution_notebooks() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


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


def check_notebook(path: Path) -> NotebookResult:
    """Grade one notebook as nbgrader autograde does, hidden tests included."""
    solution = match_solution(path)
    with Course.temporary([solution]) as course:
        course.submit("student", path, name=solution.name)
        course.autograde("student")
        results = course.results("student")
    if not results:
        raise NotGradable(f"{path}: nbgrader recorded no grades for it")
    result = results[0]
    result.notebook = str(path)
    return result
