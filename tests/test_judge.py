"""autograder.grade.judge: the replay runs once per notebook, in a fork server the checks' children come from.

Small synthetic notebooks (no nbgrader, no sandbox): what the outside grader does with a
submission's answer cells, how often it runs them, and what it reports when they misbehave.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from autograder import procs
from autograder.grade.judge import verify

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the pinned fork server is Linux-only")

# A given cell that leaves a mark each time it runs, so the test can count replays.
COUNT = "import os as _os\nwith open(_os.path.join(_os.getcwd(), 'replays.txt'), 'a') as _f:\n    _f.write('x')\n"


def _notebook(tmp_path: Path, answer: str) -> Path:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {"nbgrader": {"solution": True, "grade_id": "a1"}}, "source": answer,
         "outputs": [], "execution_count": None},
    ]}
    path = tmp_path / "sub.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _trusted(tests: list[str]) -> dict:
    return {"notebook": "sub",
            "cells": [{"kind": "given", "id": "count", "source": COUNT}, {"kind": "answer", "id": "a1", "source": ""}],
            "tests": [{"id": f"t{i}", "points": 1.0, "source": src} for i, src in enumerate(tests)],
            "release": []}


CALLS = ["assert square(3) == 9", "assert square(4) == 16", "assert square(5) == 26"]


def _replays(workdir: Path) -> int:
    return len((workdir / "replays.txt").read_text())


def test_the_replay_runs_once_and_every_check_starts_from_it(tmp_path):
    work = tmp_path / "w"
    result = verify(_notebook(tmp_path, "def square(x):\n    return x * x\n"), _trusted(CALLS), work)
    assert [result["questions"][f"t{i}"]["status"] for i in range(3)] == ["passed", "passed", "failed"]
    # Three checks and the probe each ran the student's square in a child; the notebook was replayed once.
    assert _replays(work) == 1
    assert not procs._state.get("server"), "the pinned server outlived its notebook"


def test_a_replay_that_leaves_threads_is_replayed_in_each_child_instead(tmp_path):
    work = tmp_path / "w"
    answer = ("import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n\n"
              "def square(x):\n    return x * x\n")
    result = verify(_notebook(tmp_path, answer), _trusted(CALLS), work)
    assert [result["questions"][f"t{i}"]["status"] for i in range(3)] == ["passed", "passed", "failed"]
    assert _replays(work) == 1 + 1 + 3  # the pinned attempt, the probe and the three checks


def test_a_replay_that_exits_fails_every_question_with_the_reason(tmp_path):
    result = verify(_notebook(tmp_path, "import os\nos._exit(3)\n"), _trusted(CALLS[:2]), tmp_path / "w")
    for verdict in result["questions"].values():
        assert verdict["status"] == "failed"
        assert "ended the test process (exit code 3)" in verdict["message"]


def test_a_missing_answer_is_unanswered_not_an_error(tmp_path):
    result = verify(_notebook(tmp_path, "raise NotImplementedError()\n"), _trusted(CALLS[:1]), tmp_path / "w")
    assert result["questions"]["t0"]["status"] == "unanswered"
    assert any("NotImplementedError" in e for e in result["errors"])


def test_a_forked_server_runs_the_replay_with_none_of_the_judges_files(tmp_path):
    """The pinned server is forked from the judge, which holds its verdict pipe: the replay sees no inherited file."""
    secret = open(tmp_path / "secret.txt", "w")  # stands for the judge's verdict pipe
    answer = ("import os\n"
              "STDIN_IS_NULL = os.path.samestat(os.fstat(0), os.stat(os.devnull))\n"
              "def _link(fd):\n"
              "    try:\n"
              "        return os.readlink(f'/proc/self/fd/{fd}')\n"
              "    except OSError:  # the listing's own descriptor\n"
              "        return ''\n"
              "OPEN = sorted(_link(fd) for fd in os.listdir('/proc/self/fd'))\n")
    tests = ["assert STDIN_IS_NULL", "assert not any(p.endswith('secret.txt') for p in OPEN), OPEN"]
    try:
        result = verify(_notebook(tmp_path, answer), _trusted(tests), tmp_path / "w")
    finally:
        secret.close()
    assert {q: v["status"] for q, v in result["questions"].items()} == {"t0": "passed", "t1": "passed"}, result


def test_checks_that_the_replay_itself_starts_are_forked_from_it(tmp_path):
    """A given cell that runs a check in a child (00's offline training) forks it from the replaying server."""
    given = ("from autograder.isolate import run_isolated\n\n"
             "def _forked_from_the_replay():\n"
             "    import sys\n"
             "    return any(name.startswith('servelab_submission') for name in sys.modules)\n\n"
             "FORKED = run_isolated(_forked_from_the_replay)\n")
    trusted = _trusted(["assert FORKED is True, FORKED"])
    trusted["cells"].insert(0, {"kind": "given", "id": "setup", "source": given})
    result = verify(_notebook(tmp_path, "x = 1\n"), trusted, tmp_path / "w")
    assert result["questions"]["t0"]["status"] == "passed", result


def test_a_deep_temporary_folder_still_gets_a_pinned_server(tmp_path, monkeypatch):
    """AF_UNIX socket paths stop at 107 bytes; a sandboxed run's TMPDIR is deeper than that (notebook 11 hit it)."""
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)
    work = tmp_path / "w"
    result = verify(_notebook(tmp_path, "def square(x):\n    return x * x\n"), _trusted(CALLS[:2]), work)
    assert [v["status"] for v in result["questions"].values()] == ["passed", "passed"]
    assert _replays(work) == 1
