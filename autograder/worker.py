"""Grade one submission: the unit of work of ``python -m autograder grade``.

:func:`grade_submission` takes plain data (the student id, each notebook's text, the
gradebook template's bytes) and returns plain data (scores, outcomes, the autograded
notebooks' text), so the same call runs in a local thread or on a Dask worker on another
machine. Inside, real ``nbgrader autograde`` runs once per notebook in a throw-away course,
inside the sandbox of :mod:`autograder.sandbox`, each notebook under its own wall clock and
all of them under the submission's.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from autograder.course import ASSIGNMENT, Course, GradingError, nbgrader_env
from autograder.sandbox import Limits, run_nbgrader


def grade_submission(student: str, notebooks: dict[str, bytes], template_db: bytes, expected: dict[str, dict], limits: dict) -> dict:
    """Grade ``notebooks`` (``{"04_model_handler": file bytes}``) of ``student``.

    ``expected`` maps each notebook of the assignment to ``{grade_id: max_score}``, so a
    notebook that is missing or cannot run still gets a row for every question. Never raises
    for anything in the submission: problems become a status and a reason.
    """
    limits = Limits(**limits)
    started = time.monotonic()
    deadline = started + limits.submission_seconds
    # The throw-away course lives in memory where possible: nbgrader commits to its SQLite
    # gradebook many times per notebook, and each commit syncs to disk.
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="servelab-grade-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    results = []
    try:
        course = Course(work, [])
        (work / "gradebook.db").write_bytes(template_db)
        for name in sorted(expected):
            t0 = time.monotonic()
            data = notebooks.get(name)
            if data is None:
                results.append(_zero(name, expected[name], "missing", "the submission has no such notebook", 0.0))
                continue
            problem = _unreadable(data)
            if problem:
                results.append(_zero(name, expected[name], "invalid", problem, 0.0))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 1:
                results.append(_zero(name, expected[name], "timeout", "the submission's time limit ran out before this notebook", 0.0))
                continue
            course.submit(student, _write(work / "incoming" / f"{name}.ipynb", data))
            run = run_nbgrader(
                ["autograde", ASSIGNMENT, "--force", f"--student={student}", f"--notebook={name}"],
                cwd=work, env=nbgrader_env(), limits=limits,
                wall_seconds=min(limits.notebook_seconds, remaining), log_path=work / f"{name}.log",
            )
            seconds = time.monotonic() - t0
            if run.timed_out:
                limit = "notebook" if limits.notebook_seconds <= remaining else "submission"
                results.append(_zero(name, expected[name], "timeout", f"grading stopped at the {limit} time limit ({run.seconds:.0f} s)", seconds))
                continue
            graded = _read_result(course, student, name)
            if graded is None:
                tail = "\n".join((work / f"{name}.log").read_text(errors="replace").splitlines()[-8:])
                reason = "nbgrader could not grade this notebook" + (" (its output was cut at the size limit)" if run.output_truncated else "")
                results.append(_zero(name, expected[name], "error", f"{reason}: {tail[-600:]}", seconds))
                continue
            graded["seconds"] = seconds
            graded["isolation"] = run.isolation
            results.append(graded)
    except GradingError as exc:  # our own course set-up failed: still report, never raise
        results.append({"notebook": "*", "status": "error", "reason": str(exc)[:600], "questions": [], "score": 0, "max_score": 0, "seconds": 0})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    status = "ok" if all(r["status"] == "ok" for r in results) else next(r["status"] for r in results if r["status"] != "ok")
    return {
        "student": student,
        "status": status,
        "seconds": time.monotonic() - started,
        "score": sum(r["score"] for r in results),
        "max_score": sum(r["max_score"] for r in results),
        "notebooks": results,
    }


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _unreadable(data: bytes) -> str | None:
    """Why ``data`` is not a notebook nbgrader can run, or None."""
    if not data.strip():
        return "the notebook file is empty"
    try:
        nb = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"the notebook is not valid JSON ({exc})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return "the file is JSON but not a Jupyter notebook (no list of cells)"
    if not isinstance(nb.get("nbformat"), int) or nb["nbformat"] < 4:
        return "the notebook format is missing or older than version 4"
    return None


def _zero(name: str, expected: dict[str, float], status: str, reason: str, seconds: float) -> dict:
    return {
        "notebook": name,
        "status": status,
        "reason": reason,
        "score": 0.0,
        "max_score": float(sum(expected.values())),
        "seconds": seconds,
        "questions": [
            {"id": gid, "score": 0.0, "max_score": float(pts), "status": status, "message": reason}
            for gid, pts in expected.items()
        ],
        "autograded": None,
    }


def _read_result(course: Course, student: str, name: str) -> dict | None:
    autograded = course.root / "autograded" / student / ASSIGNMENT / f"{name}.ipynb"
    if not autograded.exists():
        return None
    try:
        results = course.results(student, [name])
    except Exception:  # noqa: BLE001 - a gradebook nbgrader left half-written
        return None
    if not results:
        return None
    r = results[0]
    return {
        "notebook": name,
        "status": "ok",
        "reason": "",
        "score": r.score,
        "max_score": r.max_score,
        "questions": [q.__dict__ for q in r.questions],
        "autograded": autograded.read_text(errors="replace"),
    }
