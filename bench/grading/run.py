"""Benchmark: stock serial ``nbgrader autograde`` against ``python -m autograder grade``.

One run, one synthetic class of N submissions (correct, partly wrong, blank, broken, in
rotation; see :func:`autograder.synth.make_class`):

1. **bare**: every submission's notebooks executed with nbclient, one after another, with no
   grading at all (the notebooks as nbgrader would run them: hidden tests restored). This is
   the floor: bare / workers is what perfect parallel grading would take.
2. **stock**: ``nbgrader autograde servelab`` over the class in one course directory, serially,
   as nbgrader ships.
3. **grade**: ``python -m autograder grade`` with ``--workers`` (default: cores). This does more
   than stock: every question is graded a second time outside the kernel (the recorded grade),
   in the sandbox. Its checks fork their child processes from a preloaded server
   (:mod:`autograder.procs`, in the sandbox of :mod:`autograder.grade.sandbox`); stock and bare start plain processes, as students' kernels do.

It prints the three wall times, stock / grade, grade / (bare / workers), and whether every
question's score in the two gradebooks is identical. With ``--baseline DIR`` (a checkout of an
older commit, e.g. from ``git worktree add``), the same class is also graded by that checkout's
``grade``, in a subprocess, so a redesign is measured before and after on the same run (repeat the
option for several checkouts). Targets on a 2-core machine: stock/grade
>= 1.8 with identical scores, and grade within 15% of bare / workers.

    python bench/grading/run.py --n 40 --notebooks 05_flask_api
    python bench/grading/run.py --n 40 --notebooks 04_model_handler --baseline /tmp/old
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from autograder.grade.classgrade import grade_class, gradebook_scores  # noqa: E402
from autograder.grade.course import ASSIGNMENT, Course, nbgrader_env  # noqa: E402
from autograder.grade.grading import NOTEBOOKS, SOLUTIONS  # noqa: E402
from autograder.synth import make_class  # noqa: E402


def stock(class_dir: Path, sources: list[Path], work: Path) -> tuple[float, Path]:
    """Serial nbgrader: one course directory, ``nbgrader autograde`` once for everyone."""
    course = Course(work, sources)
    course.generate()
    shutil.copytree(class_dir / "submitted", work / "submitted")
    started = time.monotonic()
    subprocess.run(
        [str(Path(sys.executable).parent / "nbgrader"), "autograde", ASSIGNMENT, "--force"],
        cwd=work, env=nbgrader_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started, work / "gradebook.db"


def bare(class_dir: Path, sources: list[Path], work: Path) -> float:
    """Execute each submission's notebooks with nbclient (hidden tests restored), serially."""
    import nbformat
    from nbclient import NotebookClient

    # The notebooks nbgrader would execute: the submissions after autograde's cell overwrite
    # are what stock grading leaves in autograded/, with outputs cleared.
    total = 0.0
    for nb_path in sorted((work / "autograded").glob(f"*/{ASSIGNMENT}/*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        started = time.monotonic()
        # As nbgrader starts its kernels: with the command history in memory, not in SQLite.
        client = NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                                extra_arguments=["--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR"],
                                resources={"metadata": {"path": str(nb_path.parent)}})
        try:
            client.execute()
        except Exception:  # noqa: BLE001 - broken notebooks count as far as they ran
            pass
        total += time.monotonic() - started
    return total


BASELINE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
# The venv's editable install would serve a module the checkout lacks, so pick by the files.
if (Path(sys.argv[1]) / "autograder" / "grade" / "classgrade.py").exists():
    import autograder.grade.classgrade as cg
else:  # the layout before autograder/grade/
    import autograder.classgrade as cg
if not cg.__file__.startswith(sys.argv[1]):
    raise SystemExit(f"baseline imported {cg.__file__}, not the checkout in {sys.argv[1]}")
sources = [Path(sys.argv[1]) / "solutions" / n for n in sys.argv[4].split(",")]
cg.solution_notebooks = lambda: sources
started = time.monotonic()
cg.grade_class(Path(sys.argv[2]), Path(sys.argv[3]), workers=int(sys.argv[5]), progress=False)
print(json.dumps({"seconds": time.monotonic() - started}))
"""


def baseline(checkout: Path, class_dir: Path, out: Path, names: list[str], workers: int) -> float:
    """Grade the class with an older checkout's ``grade_class``, in its own Python process."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", BASELINE, str(checkout), str(class_dir), str(out), ",".join(names), str(workers)],
                          cwd=checkout, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the baseline grade failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="submissions in the class")
    parser.add_argument("--notebooks", default="05_flask_api", help="comma-separated notebook names to submit")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--keep", default=None, help="keep the work folder here")
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="also grade with the checkout in this folder (before/after); repeat for several")
    args = parser.parse_args()

    names = [f"{n}.ipynb" for n in args.notebooks.split(",")]
    sources = [SOLUTIONS / n for n in names]
    work = Path(args.keep or tempfile.mkdtemp(prefix="servelab-bench-"))
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    class_dir = work / "class"
    kinds = make_class(class_dir, args.n, SOLUTIONS, NOTEBOOKS, names)
    print(f"class: {args.n} submissions of {', '.join(names)}; "
          + ", ".join(f"{k} {list(kinds.values()).count(k)}" for k in ("correct", "wrong", "blank", "broken")), flush=True)

    stock_s, stock_db = stock(class_dir, sources, work / "stock")
    print(f"stock nbgrader autograde (serial): {stock_s:.1f} s", flush=True)
    bare_s = bare(class_dir, sources, work / "stock")
    print(f"bare execution (serial nbclient):  {bare_s:.1f} s; / {args.workers} workers = {bare_s / args.workers:.1f} s", flush=True)

    # grade() sees only the notebooks named here as the assignment.
    import autograder.grade.classgrade as cg

    cg.solution_notebooks = lambda: sources
    started = time.monotonic()
    grade_class(class_dir, work / "grade", workers=args.workers, progress=False)
    grade_s = time.monotonic() - started
    print(f"python -m autograder grade:        {grade_s:.1f} s ({args.workers} workers)", flush=True)

    ours = gradebook_scores(work / "grade" / "gradebook.db")
    theirs = gradebook_scores(stock_db)
    identical = ours == theirs
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    summary = {
        "n": args.n, "notebooks": args.notebooks, "workers": args.workers,
        "stock_s": round(stock_s, 1), "grade_s": round(grade_s, 1), "bare_s": round(bare_s, 1),
        "speedup": round(stock_s / grade_s, 2), "vs_ideal": round(grade_s / (bare_s / args.workers), 3),
        "identical_scores": identical, "questions_compared": len(ours),
    }
    print(f"speed-up stock/grade: {summary['speedup']:.2f}x (target >= 1.8)")
    print(f"grade / (bare / workers): {summary['vs_ideal']:.3f} (target <= 1.15)")
    print(f"identical scores: {identical} ({len(ours)} question scores compared)" + (f"; first differences: {diff[:5]}" if diff else ""))
    summary["baselines"] = []
    for i, checkout in enumerate(args.baseline):
        base_s = baseline(checkout.resolve(), class_dir, work / f"baseline-{i}", names, args.workers)
        same = gradebook_scores(work / f"baseline-{i}" / "gradebook.db") == theirs
        summary["baselines"].append({"checkout": str(checkout), "grade_s": round(base_s, 1),
                                     "speedup": round(stock_s / base_s, 2), "identical_scores": same})
        print(f"baseline grade ({checkout}): {base_s:.1f} s; stock/baseline {stock_s / base_s:.2f}x; identical scores: {same}",
              flush=True)
    print(json.dumps(summary))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
