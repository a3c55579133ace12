"""Student notebooks from solutions: ``nbgrader generate_assignment``, and the drift check."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from autograder.grade.course import Course
from autograder.grade.grading import NOTEBOOKS, solution_notebooks


def generate_into(dest: Path, only: list[str] | None = None) -> list[Path]:
    """Run generate_assignment over the solution notebooks; copy the results into ``dest``.

    ``only`` limits it to the notebooks whose stem or file name is listed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    sources = [nb for nb in solution_notebooks() if not only or nb.stem in only or nb.name in only]
    if not sources:
        raise ValueError(f"no solution notebook matches {only}")
    with Course.temporary(sources) as course:
        release_dir = course.generate()
        for nb in sorted(release_dir.glob("*.ipynb")):
            shutil.copy(nb, dest / nb.name)
            written.append(dest / nb.name)
    return written


def release(dest: Path = NOTEBOOKS, only: list[str] | None = None) -> list[Path]:
    """Regenerate ``notebooks/`` (or only the listed notebooks). Notebooks without a solution are removed."""
    if not only:
        fresh = {p.name for p in solution_notebooks()}
        for old in dest.glob("*.ipynb"):
            if old.name not in fresh:
                old.unlink()
    return generate_into(dest, only)


def drift(generated: Path, committed: Path = NOTEBOOKS) -> list[str]:
    """Differences between a fresh generation and ``committed``, one line each; empty if none."""
    problems = []
    fresh = {p.name: p for p in generated.glob("*.ipynb")}
    have = {p.name: p for p in committed.glob("*.ipynb")}
    for name in sorted(fresh.keys() - have.keys()):
        problems.append(f"{name}: missing from {committed.name}/ (run `make release`)")
    for name in sorted(have.keys() - fresh.keys()):
        problems.append(f"{name}: in {committed.name}/ but has no solution")
    for name in sorted(fresh.keys() & have.keys()):
        a, b = json.loads(fresh[name].read_text()), json.loads(have[name].read_text())
        if a != b:
            cells_a, cells_b = a.get("cells", []), b.get("cells", [])
            where = next((i for i, (x, y) in enumerate(zip(cells_a, cells_b)) if x != y), min(len(cells_a), len(cells_b)))
            problems.append(f"{name}: differs from a fresh generate_assignment from cell {where} (run `make release`)")
    return problems
