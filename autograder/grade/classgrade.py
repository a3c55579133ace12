"""Grade a whole class: in parallel, each submission isolated, resumable.

``python -m autograder grade SUBMISSIONS`` is the CLI on top of :func:`grade_class`.

- Submissions are graded by :func:`autograder.grade.pipeline.grade_submission`, in a pool of local
  threads (one sandboxed nbgrader per thread; the default is one per core) or, with
  ``scheduler``, as tasks on a Dask cluster.
- One writer (this process) stores each result as it completes in nbgrader's gradebook, in
  one transaction per student that also records the student in the table
  ``servelab_grading``. A student listed there is done: a rerun after a crash or ``kill -9``
  grades only the others, and ``force`` regrades everyone.
- Outputs in ``out``: ``gradebook.db``, ``grades.csv`` (nbgrader's export),
  ``questions.csv``, ``autograded/``, ``feedback/<student>/index.html`` and ``report/``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from autograder.grade.collect import Submission, collect
from autograder.grade.course import ASSIGNMENT, Course, solution_notebooks
from autograder import REPO
from autograder.grade.sandbox import Limits

CACHE = REPO / "build" / "cache"

TABLE = """
CREATE TABLE IF NOT EXISTS servelab_grading (
    student TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    score REAL NOT NULL,
    max_score REAL NOT NULL,
    seconds REAL NOT NULL,
    finished_at REAL NOT NULL,
    result TEXT NOT NULL
)
"""


@dataclass
class ClassRun:
    graded: int  # graded in this run
    skipped: int  # already in the gradebook
    total: int
    seconds: float
    out: Path
    questions: int  # graded questions per submission, across the workbook


def expected_questions(sources: list[Path]) -> dict[str, dict[str, float]]:
    """``{notebook: {grade_id: points}}`` for the graded cells of each solution."""
    out = {}
    for src in sources:
        cells = json.loads(src.read_text())["cells"]
        out[src.stem] = {
            c["metadata"]["nbgrader"]["grade_id"]: float(c["metadata"]["nbgrader"].get("points", 0))
            for c in cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c["metadata"]["nbgrader"].get("points")
        }
    return out


def template_gradebook(sources: list[Path]) -> bytes:
    """A gradebook that knows the assignment: what ``generate_assignment`` records.

    Kept in ``build/cache/`` under a hash of the sources and nbgrader's version, because a new
    gradebook costs nbgrader an ``alembic heads`` subprocess (5 s here) on top of the
    generation. ``build/`` is the grader's: the sandbox never sees it.
    """
    from importlib.metadata import version

    digest = hashlib.sha256(f"{ASSIGNMENT} nbgrader {version('nbgrader')}".encode())
    for src in sorted(sources, key=lambda s: s.name):
        digest.update(f"\0{src.name}\0".encode() + src.read_bytes())
    cached = CACHE / f"gradebook-{digest.hexdigest()[:32]}.db"
    if cached.is_file() and not cached.is_symlink():
        return cached.read_bytes()
    with Course.temporary(sources) as course:
        course.generate()
        data = (course.root / "gradebook.db").read_bytes()
    with contextlib.suppress(OSError):  # a read-only checkout grades without the cache
        CACHE.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=CACHE, prefix=".gradebook-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, cached)
    return data


def ensure_assignment(out: Path, sources: list[Path], template: bytes) -> None:
    """Make ``out/gradebook.db`` know every notebook and graded cell of ``sources``.

    A new gradebook starts from ``template``; an existing one that predates a notebook is
    brought up to date by ``generate_assignment`` itself, keeping its grades.
    """
    db = out / "gradebook.db"
    if not db.exists():
        db.write_bytes(template)
        return
    from nbgrader.api import MissingEntry

    with _gradebook(out) as gb:
        try:
            known = {nb.name for nb in gb.find_assignment(ASSIGNMENT).notebooks}
        except MissingEntry:
            known = set()
    if {s.stem for s in sources} - known:
        with tempfile.TemporaryDirectory(prefix="servelab-update-") as tmp:
            Course(Path(tmp), sources, db_url=f"sqlite:///{db.resolve()}").generate()


def _gradebook(out: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{out / 'gradebook.db'}")


def done_students(out: Path) -> set[str]:
    from sqlalchemy import text

    if not (out / "gradebook.db").exists():
        return set()
    with _gradebook(out) as gb:
        gb.db.execute(text(TABLE))
        gb.db.commit()
        return {row[0] for row in gb.db.execute(text("SELECT student FROM servelab_grading"))}


def store(out: Path, result: dict) -> None:
    """Write one student's result into the gradebook, atomically with its completion mark."""
    from nbgrader.api import MissingEntry
    from sqlalchemy import text

    student = result["student"]
    for nb in result["notebooks"]:
        if nb.get("autograded"):
            dest = out / "autograded" / student / ASSIGNMENT / f"{nb['notebook']}.ipynb"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(nb["autograded"], encoding="utf-8", errors="backslashreplace")
    with _gradebook(out) as gb, warnings.catch_warnings():
        # nbgrader's add_submission trips SQLAlchemy autoflush warnings that are harmless.
        warnings.simplefilter("ignore")
        gb.update_or_create_student(student)
        try:
            gb.find_submission(ASSIGNMENT, student)
        except MissingEntry:
            gb.add_submission(ASSIGNMENT, student)
        for nb in result["notebooks"]:
            if nb["notebook"] == "*":
                continue
            scores = {q["id"]: q["score"] for q in nb["questions"]}
            notebook = gb.find_submission_notebook(nb["notebook"], ASSIGNMENT, student)
            for grade in notebook.grades:
                grade.auto_score = scores.get(grade.name, 0.0)
        slim = {**result, "notebooks": [{k: v for k, v in nb.items() if k != "autograded"} for nb in result["notebooks"]]}
        gb.db.execute(text(TABLE))
        gb.db.execute(
            text("INSERT OR REPLACE INTO servelab_grading VALUES (:s, :st, :sc, :mx, :sec, :t, :r)"),
            {"s": student, "st": result["status"], "sc": result["score"], "mx": result["max_score"],
             "sec": result["seconds"], "t": time.time(), "r": json.dumps(slim)},
        )
        gb.db.commit()


def gradebook_scores(db: Path) -> dict[tuple[str, str, str], float]:
    """``{(student, notebook, grade_id): score}`` read straight from an nbgrader gradebook."""
    from nbgrader.api import Gradebook

    got = {}
    with Gradebook(f"sqlite:///{db}") as gb:
        for student in gb.students:
            for sub in student.submissions:
                for nb in sub.notebooks:
                    for grade in nb.grades:
                        got[(student.id, nb.name, grade.name)] = float(grade.score)
    return got


def stored_results(out: Path) -> list[dict]:
    from sqlalchemy import text

    with _gradebook(out) as gb:
        return [json.loads(r[0]) for r in gb.db.execute(text("SELECT result FROM servelab_grading ORDER BY student"))]


def _payload(sub: Submission) -> dict[str, bytes]:
    data = {}
    for name, path in sub.notebooks.items():
        try:
            data[name] = path.read_bytes()
        except OSError:
            data[name] = b""
    return data


def grade_class(
    submissions: Path,
    out: Path,
    workers: int | None = None,
    force: bool = False,
    scheduler: str | None = None,
    limits: Limits | None = None,
    regexp: str | None = None,
    progress: bool = True,
    isolation: str | None = None,
) -> ClassRun:
    """Grade every submission under ``submissions`` into ``out``; see the module doc."""
    from autograder.grade.report import write_outputs

    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = solution_notebooks()
    expected = expected_questions(sources)
    scratch = Path(tempfile.mkdtemp(prefix=f"servelab-grader-{os.getpid()}-collect-"))  # removed by a later run if we are killed
    try:
        subs = collect(Path(submissions), list(expected), **({"regexp": regexp} if regexp else {}), scratch=scratch)
        template = template_gradebook(sources)
        ensure_assignment(out, sources, template)
        done = set() if force else done_students(out)
        todo = [s for s in subs if s.student not in done]
        limits_dict = (limits or Limits()).to_dict()
        from autograder.grade.judge import trusted_tests

        tests = {src.stem: trusted_tests(src) for src in sources}
        hide = sorted({str(out.resolve()), str(Path(submissions).resolve()), str(scratch)})
        require = isolation_policy(isolation)
        args = [(s.student, _payload(s), template, expected, limits_dict, tests, hide, require) for s in todo]
        workers = workers or os.cpu_count() or 1
        bar = _progress(len(subs), len(subs) - len(todo), progress)
        try:
            for result in _run(args, workers, scheduler):
                store(out, result)
                bar.update(1)
                bar.set_postfix_str(f"{result['student']}: {result['score']:g}/{result['max_score']:g}")
        finally:
            bar.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_outputs(out, stored_results(out), expected)
    n_questions = sum(len(q) for q in expected.values())
    return ClassRun(len(todo), len(subs) - len(todo), len(subs), time.monotonic() - started, out, n_questions)


class IsolationError(RuntimeError):
    """``--isolation require`` and this machine cannot give every protection; the message says which."""


def isolation_policy(isolation: str | None) -> bool:
    """Whether to require full isolation (the default as root), after checking what this machine offers.

    Raises :class:`IsolationError` under ``require`` when a protection is missing; under ``warn``
    prints a loud warning and goes on.
    """
    import sys

    from autograder.grade.sandbox import Cgroup, Limits, bwrap_works, full, planned_isolation

    require = (isolation or ("require" if os.geteuid() == 0 else "warn")) == "require"
    cgroup = Cgroup(Limits())
    try:
        record = planned_isolation(cgroup.applied, bwrap_works(), 0 if os.geteuid() == 0 else None)
    finally:
        cgroup.close()
    if full(record):
        return require
    missing = ", ".join(f"{k}: {v}" for k, v in record.items() if v == "none" or str(v).startswith(("rlimit", "not ")))
    if require:
        raise IsolationError(f"refusing to grade: --isolation require, and this machine cannot apply every protection ({missing}). "
                             "Run as root with bubblewrap and cgroups, or pass --isolation warn.")
    print(f"\n*** WARNING: grading with less than full isolation ({missing}). Student code is less contained "
          "than docs/grading.md describes. ***\n", file=sys.stderr)
    return False


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="submission", desc="grading", disable=not enabled, dynamic_ncols=True)


def _run(args: list[tuple], workers: int, scheduler: str | None):
    """Yield each result as it completes, locally or on a Dask cluster."""
    from autograder.grade.pipeline import grade_submission

    if not args:
        return
    if scheduler:
        from distributed import Client
        from distributed import as_completed as dask_completed

        with Client(scheduler, timeout=30) as client:
            futures = [client.submit(grade_submission, *a, pure=False, key=f"servelab-{a[0]}-{time.time_ns()}") for a in args]
            for future in dask_completed(futures):
                yield future.result()
        return
    from autograder.grade.sandbox import shutdown

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(grade_submission, *a) for a in args]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            shutdown()  # the zygote: a class ends with nothing of it running
