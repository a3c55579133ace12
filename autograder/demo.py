"""``make demo``: the whole workbook, end to end.

1. Execute every solution notebook headlessly with papermill into ``build/executed/``.
2. Check that ``notebooks/`` is exactly what ``nbgrader generate_assignment`` makes of ``solutions/``.
3. Grade the solutions (they must get full marks) and the blank student notebooks (they must
   get zero, without breaking the grader) with ``python -m autograder grade``, which runs real
   ``nbgrader autograde`` per notebook; the class report goes to ``build/grades/report/``.
4. Print a score table.

Exit status 0 only if every step holds.
"""
from __future__ import annotations

import time
from pathlib import Path

from autograder import REPO
from autograder.grade.course import NotebookResult, Question
from autograder.grade.grading import NOTEBOOKS, solution_notebooks

BUILD = REPO / "build"


def execute_all(out_dir: Path = BUILD / "executed") -> list[tuple[str, float]]:
    """Run each solution notebook with papermill; return ``(name, seconds)`` for each."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for nb in solution_notebooks():
        started = time.monotonic()
        papermill.execute_notebook(
            str(nb), str(out_dir / nb.name), cwd=str(out_dir), kernel_name="python3", progress_bar=False,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not ipykernel's TCP warning once per notebook
        )
        timings.append((nb.name, time.monotonic() - started))
    return timings


def grade_invariants(out: Path = BUILD / "grades") -> tuple[list[NotebookResult], list[str], float]:
    """Grade the solutions as student ``solution`` and notebooks/ as student ``blank``.

    Uses ``python -m autograder grade`` (parallel, sandboxed, with the class report in
    ``out/report/``). Returns the results, the broken invariants (empty when all hold) and
    the grading wall time.
    """
    import shutil

    from autograder.grade.classgrade import grade_class, stored_results

    sources = solution_notebooks()
    class_dir = BUILD / "demo-class"
    shutil.rmtree(class_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    for nb in sources:
        for student, src in (("solution", nb), ("blank", NOTEBOOKS / nb.name)):
            dest = class_dir / "submitted" / student / "servelab" / nb.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    run = grade_class(class_dir, out, progress=False)
    stored = stored_results(out)
    fields = ("id", "score", "max_score", "status", "message")
    results = [
        NotebookResult(r["student"], nb["notebook"], nb["score"], nb["max_score"],
                       [Question(**{k: q[k] for k in fields if k in q}) for q in nb["questions"]])
        for r in stored for nb in r["notebooks"]
    ]
    # Honest notebooks: the kernel and the outside grader (the recorded grade) must agree.
    problems = [f"{r['student']} {nb['notebook']}: kernel and outside verdicts disagree on {nb['suspected_tampering']}"
                for r in stored for nb in r["notebooks"] if nb.get("suspected_tampering")]
    for r in results:
        if r.student == "solution" and r.score != r.max_score:
            lost = [f"{q.id} ({q.message[:120]})" for q in r.questions if q.status != "passed"]
            problems.append(f"solution {r.notebook}: {r.score:g}/{r.max_score:g}; lost {', '.join(lost)}")
        if r.student == "blank" and r.score != 0:
            won = [q.id for q in r.questions if q.score > 0]
            problems.append(f"blank {r.notebook}: {r.score:g}/{r.max_score:g}; scored on {', '.join(won)}")
        if r.student == "blank" and any(q.status not in ("failed", "unanswered") for q in r.questions):
            problems.append(f"blank {r.notebook}: a question ended as {[q.status for q in r.questions]}, not failed or unanswered")
    graded = {(r.student, r.notebook) for r in results}
    for nb in sources:
        for student in ("solution", "blank"):
            if (student, nb.stem) not in graded:
                problems.append(f"{student} {nb.stem}: no grade recorded")
    return results, problems, run.seconds


def score_table(results: list[NotebookResult]) -> str:
    by_nb: dict[str, dict[str, NotebookResult]] = {}
    for r in results:
        by_nb.setdefault(r.notebook, {})[r.student] = r
    rows = [("notebook", "questions", "solution", "blank")]
    for name in sorted(by_nb):
        sol, blank = by_nb[name].get("solution"), by_nb[name].get("blank")
        cell = lambda r: f"{r.score:g}/{r.max_score:g}" if r else "-"  # noqa: E731
        rows.append((name, str(len((sol or blank).questions)), cell(sol), cell(blank)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo() -> int:
    from autograder.release import drift, generate_into

    started = time.monotonic()
    ok = True
    print("1/4 executing solution notebooks with papermill ...", flush=True)
    for name, seconds in execute_all():
        print(f"    {name}: {seconds:.1f} s")

    print("2/4 checking notebooks/ against a fresh nbgrader generate_assignment ...", flush=True)
    fresh = BUILD / "generated"
    generate_into(fresh)
    problems = drift(fresh)
    for p in problems:
        print(f"    DRIFT {p}")
    ok &= not problems
    if not problems:
        print(f"    notebooks/ is current ({len(list(fresh.glob('*.ipynb')))} notebooks)")

    print("3/4 grading solutions and blank notebooks (python -m autograder grade) ...", flush=True)
    results, broken, seconds = grade_invariants()
    print(f"    graded {len(results)} notebooks in {seconds:.1f} s; class report: build/grades/report/index.html")
    for p in broken:
        print(f"    FAIL {p}")
    ok &= not broken

    print("4/4 scores")
    print(score_table(results))
    print(f"\n{'demo passed' if ok else 'demo FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1
