"""``python -m autograder``: a thin command line over the grading library.

Commands:
  check NOTEBOOK [--json]   grade one notebook (hidden tests included)
  release                   regenerate notebooks/ from solutions/
  grade SUBMISSIONS         grade a class in parallel, isolated and resumable
  demo                      run, check and grade the whole workbook (``make demo``)
"""
from __future__ import annotations

import argparse
import json
import sys


def _print_table(rows: list[tuple], headers: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


def cmd_check(args) -> int:
    from autograder.grade.classgrade import IsolationError
    from autograder.grade.course import GradingError
    from autograder.grade.grading import NotGradable, check_notebook

    try:
        result = check_notebook(args.notebook, isolation=args.isolation)
    except (NotGradable, IsolationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GradingError as exc:
        print(f"error: grading failed: {exc}", file=sys.stderr)
        return 3
    if args.json:
        doc = {
            "notebook": result.notebook,
            "score": result.score,
            "max_score": result.max_score,
            "status": result.status,
            "reason": result.reason,
            "isolation": result.isolation,
            "suspected_tampering": result.suspected_tampering,
            "questions": [
                {"id": q.id, "score": q.score, "max_score": q.max_score, "status": q.status, "message": q.message,
                 "kernel_score": q.kernel_score}
                for q in result.questions
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{result.notebook}: {result.score:g} / {result.max_score:g}" + (f" ({result.status}: {result.reason})" if result.reason else ""))
    print("isolation: " + ", ".join(f"{k} = {v}" for k, v in result.isolation.items()))
    _print_table(
        [(q.id, f"{q.score:g}/{q.max_score:g}", q.status, q.message.splitlines()[0][:100] if q.message else "")
         for q in result.questions],
        ("question", "score", "status", "message"),
    )
    return 0


def cmd_release(args) -> int:
    from pathlib import Path

    from autograder.release import generate_into, release

    try:
        written = generate_into(Path(args.dest), args.only) if args.dest else release(only=args.only)
    except ValueError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_grade(args) -> int:
    from pathlib import Path

    from autograder.grade.classgrade import IsolationError, grade_class
    from autograder.grade.collect import CollectError
    from autograder.grade.sandbox import Limits

    limits = Limits(notebook_seconds=args.notebook_timeout, submission_seconds=args.submission_timeout)
    try:
        run = grade_class(
            Path(args.submissions), Path(args.out), workers=args.workers, force=args.force,
            scheduler=args.scheduler, limits=limits, regexp=args.regexp, isolation=args.isolation,
        )
    except (CollectError, IsolationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every grade stored so far is kept; run the same command again to finish", file=sys.stderr)
        return 130
    print(f"graded {run.graded} submissions ({run.skipped} already graded, {run.total} in all) in {run.seconds:.1f} s")
    for name in ("gradebook.db", "grades.csv", "questions.csv", "feedback/", "report/index.html"):
        print(f"  {run.out / name}")
    return 0


def cmd_demo(args) -> int:
    from autograder.demo import run_demo

    return run_demo()


def _isolation_option(p) -> None:
    p.add_argument("--isolation", choices=("require", "warn"), default=None,
                   help="require: refuse to grade without every protection (the default as root); "
                        "warn: grade anyway, with a loud warning (the default otherwise)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description="servelab's grader")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="grade one notebook, hidden tests included")
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _isolation_option(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("release", help="regenerate notebooks/ from solutions/ (nbgrader generate_assignment)")
    p.add_argument("--dest", help="write the student notebooks here instead of notebooks/")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="only these notebooks (e.g. 08_load_latency)")
    p.set_defaults(func=cmd_release)
    p = sub.add_parser("grade", help="grade a class: parallel, isolated and resumable")
    p.add_argument("submissions", help="an nbgrader course folder or its submitted/, or a folder or .zip of LMS exports")
    p.add_argument("--out", default="build/grades", help="where the gradebook, CSVs, feedback and report go")
    p.add_argument("--workers", type=int, default=None, help="parallel submissions (default: the number of cores)")
    p.add_argument("--force", action="store_true", help="regrade submissions already in the gradebook")
    p.add_argument("--scheduler", default=None, help="a Dask scheduler address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--regexp", default=None, help="zip_collect file-name pattern with student_id and file_id groups")
    p.add_argument("--notebook-timeout", type=float, default=300.0, help="wall-clock seconds per notebook")
    p.add_argument("--submission-timeout", type=float, default=900.0, help="wall-clock seconds per submission")
    _isolation_option(p)
    p.set_defaults(func=cmd_grade)
    p = sub.add_parser("demo", help="execute, drift-check and grade the whole workbook")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)
