"""Real nbgrader, run in a throw-away course directory.

servelab keeps solutions and student notebooks in flat folders, while nbgrader wants
``source/<assignment>/`` and ``submitted/<student>/<assignment>/``. :class:`Course` builds
that tree in a temporary folder, loads the repo's ``nbgrader_config.py`` into it, and runs
the ``nbgrader`` command line there, so what is graded is exactly what nbgrader grades.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autograder import REPO

ASSIGNMENT = "servelab"
SOLUTIONS = REPO / "solutions"
CONFIG = REPO / "nbgrader_config.py"
# Exceptions that mean "the check ran and the answer is wrong", as opposed to a crash.
FAILED = {"CheckFailed", "AssertionError", "ServerStartError", "Timeout"}
TIMEOUT = {"CellTimeoutError", "KeyboardInterrupt", "DeadKernelError"}


def solution_notebooks() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


class GradingError(RuntimeError):
    """nbgrader itself failed; the message carries the end of its log."""


@dataclass
class Question:
    id: str
    score: float
    max_score: float
    status: str  # passed | failed | unanswered | error | timeout | missing
    message: str = ""
    kernel_score: float | None = None


@dataclass
class NotebookResult:
    student: str
    notebook: str
    score: float
    max_score: float
    questions: list[Question] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""
    isolation: dict = field(default_factory=dict)
    suspected_tampering: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def nbgrader_env() -> dict:
    """The environment nbgrader needs: this interpreter's bin first (nbgrader runs ``alembic``)."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    return env


class Course:
    """An nbgrader course directory with ``sources`` (solution notebooks) as its assignment."""

    def __init__(self, root: Path, sources: list[Path], db_url: str | None = None):
        self.root = Path(root)
        self.sources = [Path(s) for s in sources]
        source_dir = self.root / "source" / ASSIGNMENT
        source_dir.mkdir(parents=True, exist_ok=True)
        for src in self.sources:
            shutil.copy(src, source_dir / src.name)
        (self.root / "nbgrader_config.py").write_text(
            "c = get_config()\n"
            f"exec(compile(open({str(CONFIG)!r}).read(), {str(CONFIG)!r}, 'exec'))\n"
            f"c.CourseDirectory.root = {str(self.root)!r}\n"
            + (f"c.CourseDirectory.db_url = {db_url!r}\n" if db_url else "")
        )

    @classmethod
    @contextmanager
    def temporary(cls, sources: list[Path]):
        """A course in a temporary folder, removed afterwards."""
        root = Path(tempfile.mkdtemp(prefix=f"servelab-grader-{os.getpid()}-course-"))  # a later run removes it if we are killed
        try:
            yield cls(root, sources)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def run(self, *args: str) -> None:
        """Run ``nbgrader <args>`` in the course (the grader's own work: no student code); raise :class:`GradingError` if it fails."""
        with open(self.root / "nbgrader.log", "ab") as out:
            code = subprocess.run(
                [sys.executable, "-m", "autograder.grade.nbgrader_cli", *args],
                cwd=self.root, env=nbgrader_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            ).returncode
        if code != 0:
            raise GradingError(f"nbgrader {' '.join(args)} failed (exit {code}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        text = (self.root / "nbgrader.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def generate(self) -> Path:
        """``nbgrader generate_assignment``; returns the folder of student notebooks."""
        self.run("generate_assignment", ASSIGNMENT, "--force")
        release = self.root / "release" / ASSIGNMENT
        missing = [s.name for s in self.sources if not (release / s.name).exists()]
        if missing:
            raise GradingError(f"nbgrader generate_assignment produced no {', '.join(missing)}:\n{self.log_tail()}")
        return release

    def submit(self, student: str, notebook: Path, name: str | None = None) -> None:
        """Place ``notebook`` as ``student``'s submission, under ``name`` (default: its own)."""
        dest = self.root / "submitted" / student / ASSIGNMENT
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(notebook, dest / (name or Path(notebook).name))

    def autograde(self, *students: str) -> None:
        """``nbgrader autograde`` for the given students (all submitted ones by default)."""
        self.generate_if_needed()
        args = ["autograde", ASSIGNMENT, "--force"]
        for student in students:
            args.append(f"--student={student}")
        self.run(*args)

    def generate_if_needed(self) -> None:
        if not (self.root / "gradebook.db").exists():
            self.generate()

    def results(self, student: str, names: list[str] | None = None) -> list[NotebookResult]:
        """Per-question scores and outcomes for ``student``, from the gradebook.

        ``names`` are the notebooks to read (default: those of the course's sources).
        """
        from nbgrader.api import Gradebook, MissingEntry

        out = []
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as gb:
            for name in names if names is not None else [s.stem for s in self.sources]:
                try:
                    nb = gb.find_submission_notebook(name, ASSIGNMENT, student)
                except MissingEntry:
                    continue
                outcomes = _cell_outcomes(self.root / "autograded" / student / ASSIGNMENT / f"{name}.ipynb")
                order = {grade_id: i for i, grade_id in enumerate(outcomes)}
                questions = []
                for grade in sorted(nb.grades, key=lambda g: order.get(g.name, len(order))):
                    if grade.max_score == 0:
                        continue
                    score = float(grade.score)
                    status, message = outcomes.get(grade.name, ("missing", "the cell was not in the graded notebook"))
                    if score >= grade.max_score:
                        status, message = "passed", ""
                    elif status == "passed":
                        status, message = "failed", "the cell produced output on stderr or was scored 0 by nbgrader"
                    questions.append(Question(grade.name, score, float(grade.max_score), status, message))
                out.append(
                    NotebookResult(student, name, float(nb.score), float(nb.max_score), questions)
                )
        return out


def _cell_outcomes(autograded: Path) -> dict[str, tuple[str, str]]:
    """``grade_id -> (status, message)`` read from the error outputs of the graded notebook."""
    try:
        cells = json.loads(autograded.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return {}
    outcomes = {}
    for cell in cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if not grade_id:
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if not errors:
            outcomes[grade_id] = ("passed", "")
            continue
        ename, evalue = errors[-1].get("ename", ""), errors[-1].get("evalue", "")
        if ename in FAILED:
            status = "failed"
        elif ename in ("NotImplementedError", "NotAnswered"):
            status, evalue = "unanswered", evalue or "the exercise is not answered yet"
        elif ename in TIMEOUT:
            status, evalue = "timeout", evalue or "the cell ran past the time limit and was interrupted"
        else:
            status = "error"
        message = f"{ename}: {evalue}" if evalue else ename
        outcomes[grade_id] = (status, message[:1000])
    return outcomes
