"""`python -m autograder check`: grades one notebook, prints JSON, refuses what it cannot grade."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autograder import REPO


def check(*args):
    return subprocess.run(
        [sys.executable, "-m", "autograder", "check", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_check_json_on_a_blank_notebook_reports_every_question_at_zero():
    proc = check(REPO / "notebooks" / "05_flask_api.ipynb", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"notebook", "score", "max_score", "status", "reason", "isolation", "suspected_tampering", "questions"}
    assert set(doc["isolation"]) == {"net", "pid", "mount", "uid", "memory", "pids", "cpu"}
    if os.geteuid() == 0:  # the default is --isolation require: a graded notebook had every protection
        from autograder.grade.sandbox import full

        assert full(doc["isolation"]), doc["isolation"]
    assert doc["score"] == 0 and doc["max_score"] == 10
    assert [q["id"] for q in doc["questions"]] == ["q05_health", "q05_metadata", "q05_predict", "q05_errors"]
    for q in doc["questions"]:
        assert set(q) == {"id", "score", "max_score", "status", "message", "kernel_score"}
        assert q["status"] == "unanswered" and "create_app" in q["message"]


@pytest.mark.slow
def test_check_finds_the_solution_of_a_renamed_notebook(tmp_path):
    renamed = tmp_path / "my work (1).ipynb"
    renamed.write_text((REPO / "notebooks" / "04_model_handler.ipynb").read_text())
    proc = check(renamed)
    assert proc.returncode == 0, proc.stderr
    assert "0 / 15" in proc.stdout and "q04_handle" in proc.stdout


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "invalid JSON"),
        ("", "invalid JSON"),
        ('{"cells": "nope"}', "no list of cells"),
        ('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "matches no servelab notebook"),
    ],
    ids=["invalid-json", "empty-file", "not-a-notebook", "wrong-assignment"],
)
def test_check_refuses_input_it_cannot_grade(tmp_path, content, message):
    bad = tmp_path / "submission.ipynb"
    bad.write_text(content)
    proc = check(bad)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_check_refuses_a_missing_file(tmp_path):
    proc = check(tmp_path / "nope.ipynb")
    assert proc.returncode == 2 and "no such file" in proc.stderr
