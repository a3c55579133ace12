"""Cell constructors for authoring solution notebooks with the right nbgrader metadata.

solutions/*.ipynb are the source of truth; this only saves typing the metadata when a
notebook is first written or a cell is added::

    from tools.nbcells import md, code, given, answer, test, write
    write("solutions/04_model_handler.ipynb", [md("# Title"), answer("def f(): ...", "f"), ...])
"""
from __future__ import annotations

import textwrap

import nbformat

KERNELSPEC = {"display_name": "Python 3 (servelab)", "language": "python", "name": "python3"}


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _nbgrader(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def md(text: str):
    return nbformat.v4.new_markdown_cell(_src(text))


def code(text: str, tags: list[str] | None = None):
    cell = nbformat.v4.new_code_cell(_src(text))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def parameters(text: str):
    """The papermill parameters cell."""
    return code(text, tags=["parameters"])


def given(text: str, grade_id: str):
    """Code the student runs but cannot edit."""
    return nbformat.v4.new_code_cell(_src(text), metadata=_nbgrader(grade_id, locked=True))


def given_md(text: str, grade_id: str):
    return nbformat.v4.new_markdown_cell(_src(text), metadata=_nbgrader(grade_id, locked=True))


def answer(text: str, grade_id: str):
    """An answer cell: code between ### BEGIN/END SOLUTION is removed for students."""
    return nbformat.v4.new_code_cell(_src(text), metadata=_nbgrader(grade_id, solution=True))


def test(text: str, grade_id: str, points: float):
    """A graded, locked test cell; ### BEGIN/END HIDDEN TESTS hold tests only graders see."""
    return nbformat.v4.new_code_cell(
        _src(text), metadata=_nbgrader(grade_id, grade=True, locked=True, points=points)
    )


def write(path: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    # Stable ids, so that rewriting a notebook gives the same file.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:03d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)
