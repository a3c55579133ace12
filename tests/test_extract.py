"""autograder.extract: a submitted notebook becomes a module the runner can serve."""
from __future__ import annotations

import json

import pytest

from autograder.extract import ExtractError, extract_source
from autograder.grade.grading import SOLUTIONS


def notebook(tmp_path, cells):
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    return path


def cell(source, **nbgrader):
    meta = {"nbgrader": {"grade_id": "x", **nbgrader}} if nbgrader else {}
    return {"cell_type": "code", "source": source, "metadata": meta, "outputs": [], "execution_count": None}


def test_keeps_answers_and_imports_drops_tests_magics_and_demos(tmp_path):
    path = notebook(tmp_path, [
        cell("import json\nprint('setup')\n%matplotlib inline"),
        cell("def create_app(handler, config=None):\n    return json\n!ls", solution=True),
        cell("assert create_app(None) is json\nimport secret_test_helper", grade=True),
    ])
    text = extract_source(path)
    namespace = {}
    exec(compile(text, "extracted", "exec"), namespace)
    assert namespace["create_app"](None) is json
    assert "print('setup')" not in text and "secret_test_helper" not in text and "get_ipython" not in text


def test_a_syntax_error_in_an_answer_names_the_cell(tmp_path):
    path = notebook(tmp_path, [cell("def create_app(:\n", solution=True)])
    with pytest.raises(ExtractError, match="answer cell 'x' has a syntax error"):
        extract_source(path)


def test_a_notebook_without_answers_is_refused(tmp_path):
    with pytest.raises(ExtractError, match="no answer cells"):
        extract_source(notebook(tmp_path, [cell("x = 1")]))


def test_every_solution_extracts_and_compiles():
    for nb in sorted(SOLUTIONS.glob("*.ipynb")):
        compile(extract_source(nb), nb.name, "exec")
