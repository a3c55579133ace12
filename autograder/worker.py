"""Grade one submission: the unit of work of ``python -m autograder grade``.

:func:`grade_submission` takes plain data (the student id, each notebook's text, the
gradebook template's bytes) and returns plain data (scores, outcomes, the autograded
notebooks' text), so the same call runs in a local thread or on a Dask worker on another
machine. Inside, real ``nbgrader autograde`` runs once per notebook in a throw-away course,
inside the sandbox of :mod:`autograder.sandbox`, each notebook under its own wall clock and
all of them under the submission's.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from autograder import REPO
from autograder.course import ASSIGNMENT, Course, GradingError, nbgrader_env
from autograder.sandbox import Limits, network_isolation_available, run_nbgrader

# Grader files that must not exist for student code, whatever user it runs as.
HIDDEN_IN_REPO = ("solutions", ".git", "build", "tests", "bench")
_uids = itertools.count()


def _sandbox_uid() -> int | None:
    """A user id of its own for each notebook run, when we are root on Linux.

    Distinct per run, so two submissions graded at once cannot signal or trace each other's
    processes; unprivileged and absent from /etc/passwd.
    """
    if not network_isolation_available():
        return None
    return 200000 + (os.getpid() % 4096) * 1000 + next(_uids) % 1000


def grade_submission(student: str, notebooks: dict[str, bytes], template_db: bytes, expected: dict[str, dict], limits: dict,
                     tests: dict[str, dict] | None = None, hide: list[str] | None = None) -> dict:
    """Grade ``notebooks`` (``{"04_model_handler": file bytes}``) of ``student``.

    ``expected`` maps each notebook of the assignment to ``{grade_id: max_score}``, so a
    notebook that is missing or cannot run still gets a row for every question. ``tests``
    maps notebooks to :func:`autograder.outside.trusted_tests`; with it every question is
    graded again outside the kernel (:mod:`autograder.outside`), that verdict is recorded,
    and a disagreement with the kernel's is flagged. ``hide`` adds folders that student code
    must not see. Never raises for anything in the submission: problems become a status and
    a reason.
    """
    limits = Limits(**limits)
    started = time.monotonic()
    deadline = started + limits.submission_seconds
    # The throw-away course lives in memory where possible: nbgrader commits to its SQLite
    # gradebook many times per notebook, and each commit syncs to disk.
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="servelab-grade-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    hidden = [str(REPO / d) for d in HIDDEN_IN_REPO] + [str(Path(h).resolve()) for h in (hide or [])]
    results = []
    try:
        course = Course(work, [])
        _write_private(work / "gradebook.db", template_db)
        # Student code may pass through the course folder to its own, but not list it or read the gradebook.
        os.chmod(work, 0o711)
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
            incoming = _write(work / "incoming" / f"{name}.ipynb", data)
            course.submit(student, incoming)
            uid = _sandbox_uid()
            env, argv = nbgrader_env(), ["autograde", ASSIGNMENT, "--force", f"--student={student}", f"--notebook={name}"]
            env["SERVELAB_FORKSERVER"] = "1"  # checks fork their children from a preloaded server
            if uid is not None:
                from autograder.kernel_sandbox import KERNEL_NAME, write_kernelspec

                env["JUPYTER_PATH"] = str(write_kernelspec(work / "jupyter"))
                env["SERVELAB_SANDBOX_USER"] = f"{uid}:{uid}"
                argv.append(f"--Execute.kernel_name={KERNEL_NAME}")
            run = run_nbgrader(
                argv, cwd=work, env=env, limits=limits, hide=hidden if uid is not None else None,
                wall_seconds=min(limits.notebook_seconds, remaining), log_path=work / f"{name}.log",
            )
            if run.timed_out:
                limit = "notebook" if limits.notebook_seconds <= remaining else "submission"
                graded = _zero(name, expected[name], "timeout", f"grading stopped at the {limit} time limit ({run.seconds:.0f} s)", 0.0)
            else:
                graded = _read_result(course, student, name)
                if graded is None:
                    tail = "\n".join((work / f"{name}.log").read_text(errors="replace").splitlines()[-8:])
                    reason = "nbgrader could not grade this notebook" + (" (its output was cut at the size limit)" if run.output_truncated else "")
                    graded = _zero(name, expected[name], "error", f"{reason}: {tail[-600:]}", 0.0)
            graded["isolation"] = run.isolation
            if tests and name in tests:
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    outside = {"error": "the submission's time limit ran out before the outside check"}
                else:
                    outside = _outside(work, name, incoming, tests[name], env, limits, uid, hidden, remaining)
                graded = merge_outside(graded, outside, expected[name])
            graded["seconds"] = time.monotonic() - t0
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


def _outside(work: Path, name: str, submitted: Path, trusted: dict, env: dict, limits: Limits,
             uid: int | None, hidden: list[str], remaining: float) -> dict:
    """Run :mod:`autograder.outside` on ``submitted`` in the sandbox; its result, or ``{"error"}``."""
    tests_path, out = work / f"{name}.tests.json", work / f"{name}.outside.json"
    _write_private(tests_path, json.dumps({**trusted, "cell_seconds": limits.cell_seconds}).encode())
    env = {k: v for k, v in env.items() if k not in ("JUPYTER_PATH", "SERVELAB_SANDBOX_USER")}
    run = run_nbgrader(
        [str(submitted), str(tests_path), str(out)], cwd=work, env=env, limits=limits, entry="outside",
        run_as=(uid, uid) if uid is not None else None, hide=hidden if uid is not None else None,
        wall_seconds=min(limits.notebook_seconds, remaining), log_path=work / f"{name}.outside.log",
    )
    if run.timed_out:
        return {"error": f"the outside check stopped at the time limit ({run.seconds:.0f} s)"}
    try:
        result = json.loads(out.read_text())
        if isinstance(result.get("questions"), dict):
            return result
    except (OSError, ValueError, AttributeError):
        pass
    tail = "\n".join((work / f"{name}.outside.log").read_text(errors="replace").splitlines()[-6:])
    return {"error": f"the outside check ended without a verdict (exit code {run.returncode}): {tail[-400:]}"}


def merge_outside(graded: dict, outside: dict, expected: dict[str, float]) -> dict:
    """Record the outside verdict as each question's grade; flag where the kernel's disagrees.

    A question passes outside or scores 0. Its kernel score stays in ``kernel_score``. When
    the kernel produced scores (status ok) and any differs from the outside one, the notebook
    gets ``suspected_tampering`` with those question ids.
    """
    kernel = {q["id"]: q for q in graded.get("questions", [])}
    verdicts = outside.get("questions", {})
    questions, disagree = [], []
    for gid, points in expected.items():
        k = kernel.get(gid, {"score": 0.0, "status": graded["status"], "message": graded.get("reason", "")})
        v = verdicts.get(gid)
        if v is None:
            why = outside.get("error", "the outside check did not report this question")
            q = {"id": gid, "score": 0.0, "max_score": float(points), "status": "error",
                 "message": f"not confirmed outside the notebook's kernel: {why}"}
        else:
            q = {"id": gid, "score": float(points) if v["status"] == "passed" else 0.0, "max_score": float(points),
                 "status": v["status"], "message": v.get("message", "")}
        q["kernel_score"], q["kernel_status"] = float(k["score"]), k["status"]
        if graded["status"] == "ok" and q["kernel_score"] != q["score"]:
            disagree.append(gid)
        questions.append(q)
    merged = {**graded, "questions": questions, "score": sum(q["score"] for q in questions),
              "max_score": float(sum(expected.values())), "outside_errors": outside.get("errors", [])[:10]}
    if disagree:
        merged["suspected_tampering"] = disagree
    if "error" in outside and graded["status"] == "ok":
        merged["status"], merged["reason"] = "error", f"not confirmed outside the notebook's kernel: {outside['error']}"
    return merged


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the grader only, from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


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
        "autograded": _capped(autograded.read_text(errors="replace")),
    }


MAX_OUTPUT_CHARS = 100_000


def _capped(text: str) -> str:
    """The autograded notebook with each output cut to ``MAX_OUTPUT_CHARS`` (a flood stays in the sandbox)."""
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    try:
        nb = json.loads(text)
        for cell in nb.get("cells", []):
            for out in cell.get("outputs", []) or []:
                for key in ("text", "traceback"):
                    value = out.get(key)
                    joined = "".join(value) if isinstance(value, list) else value
                    if isinstance(joined, str) and len(joined) > MAX_OUTPUT_CHARS:
                        out[key] = joined[:MAX_OUTPUT_CHARS] + f"\n[... {len(joined) - MAX_OUTPUT_CHARS} more characters cut by the grader]"
                data = out.get("data")
                if isinstance(data, dict):
                    for mime, value in list(data.items()):
                        if len(json.dumps(value)) > MAX_OUTPUT_CHARS:
                            data[mime] = "[output cut by the grader]"
        return json.dumps(nb)
    except (ValueError, AttributeError, TypeError):
        return text[:MAX_OUTPUT_CHARS]
