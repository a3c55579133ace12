"""`python -m autograder grade`: a class graded in parallel, isolated, resumable, with outputs."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile

import pytest

from autograder import REPO
from autograder.grade.classgrade import grade_class, gradebook_scores
from autograder.grade.grading import NOTEBOOKS, SOLUTIONS
from autograder.grade.sandbox import Limits, bwrap_works
from autograder.synth import make_class

pytestmark = pytest.mark.slow
NB = "00_orientation.ipynb"  # the quickest notebook to grade; 05 serves the network test below
N = 12


def scores(out) -> dict:
    """``{(student, notebook, question): score}`` straight from the nbgrader gradebook."""
    return gradebook_scores(out / "gradebook.db")


def _questions(nb: str) -> list[dict]:
    cells = json.loads((SOLUTIONS / nb).read_text())["cells"]
    return [
        {"id": c["metadata"]["nbgrader"]["grade_id"], "max_score": c["metadata"]["nbgrader"]["points"]}
        for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")
    ]


def finished_at(out) -> dict:
    with sqlite3.connect(out / "gradebook.db") as db:
        return dict(db.execute("SELECT student, finished_at FROM servelab_grading"))


@pytest.fixture(scope="module")
def small_class(tmp_path_factory):
    """Twelve submissions of notebook 00: correct, partly wrong, blank and broken, three each."""
    root = tmp_path_factory.mktemp("class")
    kinds = make_class(root, N, SOLUTIONS, NOTEBOOKS, [NB])
    return root, kinds


@pytest.fixture(scope="module")
def graded_class(small_class, tmp_path_factory):
    root, kinds = small_class
    out = tmp_path_factory.mktemp("out")
    run = grade_class(root, out, workers=2, progress=False)
    return out, run, kinds


def test_every_submission_is_graded_and_a_broken_one_does_not_stop_the_run(graded_class):
    out, run, kinds = graded_class
    assert run.graded == run.total == N
    got = scores(out)
    full = sum(q["max_score"] for q in _questions(NB))
    for student, kind in kinds.items():
        total = sum(v for (s, _, _), v in got.items() if s == student)
        if kind == "correct":
            assert total == full, student
        elif kind in ("blank", "broken"):
            assert total == 0, student
        else:
            assert 0 < total < full, (student, total)
    report = (out / "report" / "index.html").read_text()
    for student, kind in kinds.items():
        if kind == "broken":
            assert student in report  # listed among the errored submissions, with a reason
    assert "not valid JSON" in report or "empty" in report


def test_outputs_gradebook_csv_feedback_and_report(graded_class):
    out, run, kinds = graded_class
    rows = (out / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("assignment,") and len(rows) == 1 + len(kinds)
    assert run.questions >= 10
    assert (out / "questions.csv").read_text().count("\n") == 1 + len(kinds) * run.questions
    for student in kinds:
        assert (out / "feedback" / student / "index.html").exists()
    for png in ("scores.png", "questions.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feedback_never_shows_hidden_test_source(graded_class):
    out, _, kinds = graded_class
    solution = (SOLUTIONS / NB).read_text()
    hidden_lines = []
    for cell in json.loads(solution)["cells"]:
        text = "".join(cell["source"])
        if "### BEGIN HIDDEN TESTS" in text:
            inner = text.split("### BEGIN HIDDEN TESTS", 1)[1].split("### END HIDDEN TESTS", 1)[0]
            hidden_lines += [line.strip() for line in inner.splitlines() if len(line.strip()) > 20]
    assert hidden_lines
    for student in kinds:
        html = (out / "feedback" / student / "index.html").read_text()
        assert "HIDDEN TESTS" not in html
        assert not [line for line in hidden_lines if line in html]


def test_a_rerun_grades_nothing_again_and_force_regrades_everything(graded_class, small_class):
    out, _, _ = graded_class
    root, _ = small_class
    before, marks = scores(out), finished_at(out)
    again = grade_class(root, out, workers=2, progress=False)
    assert (again.graded, again.skipped) == (0, N)
    assert finished_at(out) == marks
    forced = grade_class(root, out, workers=2, force=True, progress=False)
    assert forced.graded == N
    assert all(finished_at(out)[s] > marks[s] for s in marks)
    assert scores(out) == before


def test_kill_9_mid_run_keeps_every_grade_and_the_rerun_finishes_identically(graded_class, small_class, tmp_path):
    reference, _, _ = graded_class
    root, _ = small_class
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autograder", "grade", str(root), "--out", str(out), "--workers", "2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (out / "gradebook.db").exists():
                try:
                    if len(finished_at(out)) >= 2:
                        break
                except sqlite3.OperationalError:
                    pass  # the table is not created yet
            assert proc.poll() is None, "grading ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = finished_at(out)
    assert 2 <= len(kept) < N
    resumed = grade_class(root, out, workers=2, progress=False)
    assert resumed.skipped == len(kept) and resumed.graded == N - len(kept)
    assert {s: t for s, t in finished_at(out).items() if s in kept} == kept  # nothing graded twice
    assert scores(out) == scores(reference)


def test_lms_zip_export_grades_like_the_course_tree(graded_class, small_class, tmp_path):
    reference, _, kinds = graded_class
    root, _ = small_class
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for student in kinds:
            src = root / "submitted" / student / "servelab" / NB
            zf.write(src, f"servelab_{student}_attempt_2026-11-20-10-00-00_{NB}")
            # An older attempt of the same notebook must lose to the newer one.
            zf.writestr(f"servelab_{student}_attempt_2026-11-19-10-00-00_{NB}", b"{old")
        zf.writestr("notes_for_ta.txt", "ignored")
    out = tmp_path / "zip-out"
    run = grade_class(archive, out, workers=2, progress=False)
    assert run.total == len(kinds)
    assert scores(out) == scores(reference)


def test_dask_scheduler_on_a_local_loopback_cluster_gives_the_same_grades(graded_class, small_class, tmp_path):
    from distributed import LocalCluster

    reference, _, _ = graded_class
    root, _ = small_class
    out = tmp_path / "dask-out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=50) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        run = grade_class(root, out, scheduler=cluster.scheduler_address, progress=False)
    assert run.graded == N
    assert scores(out) == scores(reference)


@pytest.mark.skipif(not bwrap_works(), reason="needs Linux with bubblewrap usable (root or user namespaces)")
def test_each_submission_runs_in_its_own_loopback_only_network(tmp_path):
    from autograder.grade.classgrade import expected_questions, template_gradebook
    from autograder.grade.judge import trusted_tests
    from autograder.grade.pipeline import grade_submission

    probe = json.loads((SOLUTIONS / "05_flask_api.ipynb").read_text())
    # Answer cell: bind a fixed port (collides across submissions without namespaces) and
    # try a non-loopback address, which must be unreachable without any packet leaving.
    for cell in probe["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            cell["source"] = "".join(cell["source"]) + (
                "\nimport socket as _s\n_fixed = _s.socket(); _fixed.bind(('127.0.0.1', 8000)); _fixed.listen()\n"
                "_out = _s.socket(); _out.settimeout(2)\nNET = _out.connect_ex(('10.255.255.1', 80))\n"
                "assert NET != 0, 'a non-loopback address was reachable'\n"
            )
            break
    data = json.dumps(probe).encode()
    sources = [SOLUTIONS / "05_flask_api.ipynb"]
    expected = expected_questions(sources)
    template = template_gradebook(sources)
    tests = {"05_flask_api": trusted_tests(sources[0])}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: grade_submission(s, {"05_flask_api": data}, template, expected, Limits().to_dict(), tests), ["p1", "p2"]))
    for r in results:
        nb = r["notebooks"][0]
        assert nb["isolation"]["net"] == "net namespace", nb["isolation"]
        assert r["score"] == r["max_score"] == 10, [(q["id"], q["message"]) for q in nb["questions"]]


def test_the_template_gradebook_is_cached_by_the_sources_and_nbgrader(tmp_path, monkeypatch):
    from autograder.grade import classgrade

    source = tmp_path / NB
    source.write_bytes((SOLUTIONS / NB).read_bytes())
    monkeypatch.setattr(classgrade, "CACHE", tmp_path / "cache")
    first = classgrade.template_gradebook([source])
    assert first.startswith(b"SQLite format 3")
    assert [p.name.startswith("gradebook-") for p in (tmp_path / "cache").iterdir()] == [True]

    class NoCourse:
        @staticmethod
        def temporary(sources):
            raise AssertionError("the cache was missed")

    monkeypatch.setattr(classgrade, "Course", NoCourse)
    assert classgrade.template_gradebook([source]) == first  # served from the cache
    nb = json.loads(source.read_text())
    nb["cells"][0]["source"] = ["changed\n"]
    source.write_text(json.dumps(nb))
    with pytest.raises(AssertionError, match="the cache was missed"):  # a changed source is a new key
        classgrade.template_gradebook([source])
