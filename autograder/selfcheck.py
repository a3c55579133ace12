"""A student's one-liner: check one exercise against its public tests, with a friendly verdict.

In a notebook, after running your answer cell::

    from autograder.selfcheck import check
    check("q05_predict")

It runs the public self-check of that question (taken from the student notebook, so never
a hidden test) against the names defined in your notebook, and prints what passed or what
to fix. It returns True or False, and never raises, so it is safe anywhere in a notebook.
"""
from __future__ import annotations

import inspect
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

from autograder import REPO
from autograder.errors import CheckFailed, NotAnswered

NOTEBOOKS = REPO / "notebooks"


def public_tests() -> dict[str, str]:
    """``{question id: public test source}`` for every graded cell of the student notebooks."""
    tests = {}
    for nb_path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(nb_path.read_text())["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade") and meta.get("grade_id"):
                source = cell["source"]
                tests[meta["grade_id"]] = "".join(source) if isinstance(source, list) else source
    return tests


def _hint(question: str) -> str:
    m = re.match(r"q(\d\d)_", question)
    return f" (notebook {m.group(1)})" if m else ""


def check(question: str, namespace: dict | None = None) -> bool:
    """Run ``question``'s public self-check against ``namespace`` (default: the caller's globals)."""
    if namespace is None:
        frame = inspect.currentframe().f_back
        namespace = frame.f_globals if frame is not None else {}
    tests = public_tests()
    if question not in tests:
        close = [q for q in tests if q.startswith(question[:4])] or sorted(tests)
        print(f"❓ There is no exercise called {question!r}. Exercises{_hint(question)}: {', '.join(close)}")
        return False
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            exec(compile(tests[question], f"<self-check {question}>", "exec"), namespace)
    except NotAnswered as exc:
        print(f"✏️  {question}: not answered yet. {exc}")
        return False
    except NameError as exc:
        print(f"✏️  {question}: {exc}. Run your answer cell (and the cells above it) first, then check again.")
        return False
    except CheckFailed as exc:
        print(f"❌ {question}: {exc}")
        return False
    except AssertionError as exc:
        print(f"❌ {question}: {exc or 'a check did not hold'}")
        return False
    except Exception as exc:  # noqa: BLE001 - the student's code, whatever it raised
        print(f"❌ {question}: your code raised {type(exc).__name__}: {exc}")
        return False
    print(f"✅ {question}: the public self-check passes. Grading adds hidden tests, so also try cases of your own.")
    return True
