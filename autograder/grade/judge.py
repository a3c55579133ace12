"""Verdicts a submission cannot forge: every graded test re-run outside the student's kernel.

``nbgrader autograde`` runs the hidden tests inside the student's kernel, after the student's
own code, so that code could patch ``requests``, the checks or the traceback display and fake
a pass. This module grades the same questions again from a process that never runs student
code:

1. The submission becomes a *replay*: in notebook order, the trusted cells of the instructor's
   notebook (the ``parameters`` cell and the locked, ungraded "given" cells, whose source is
   taken from ``solutions/``) and the student's answer cells, plus the definitions of any cell
   the student added. ``%%writefile`` answers write their file, other magics are dropped, and
   an answer cell that raises does not stop the cells after it (as in the kernel).
2. A child process (:func:`autograder.isolate.run_isolated`) runs the replay and reports what
   each top-level name is, as plain data: a JSON value, an importable library object, or a
   student's function, class or object.
3. The grader builds the test namespace from that report. A student's callable becomes a
   :class:`Remote`: a reference (replay file, name) that pickles as that reference, so the
   checks hand it to their child processes and live servers exactly as they hand a
   notebook's function over; calling it locally also runs it in a child and returns JSON.
4. Each graded cell's source *from the instructor's notebook* (hidden tests included) runs in
   that namespace. Passed, failed (with the check's message) or unanswered is the verdict.

:func:`verify` does all of this. It runs in the grading sandbox's entry process
(:mod:`autograder.grade.inside`) before any student code has run there; the pipeline compares
its verdict with the kernel's scores, records this verdict and flags every question where the
two disagree. docs/grading.md states what it may read and write.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered, Timeout

MODULE = "servelab_submission"
CELL_SECONDS = 120.0
# Like nbgrader's per-cell limit in the kernel (Execute.timeout): a replayed cell that runs
# longer is stopped, and the cells after it still run.
REPLAY_CELL_SECONDS = 60.0


# --- the trusted side: what the instructor's notebook says -----------------------------------


def _text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _meta(cell: dict) -> dict:
    meta = cell.get("metadata")
    nbg = meta.get("nbgrader") if isinstance(meta, dict) else None
    return nbg if isinstance(nbg, dict) else {}


def trusted_tests(solution: Path) -> dict:
    """What the outside grader needs from the instructor's notebook, as plain data.

    ``{"notebook", "cells": [{"kind": "parameters"|"given"|"answer", "id", "source"}],
    "tests": [{"id", "points", "source"}], "release": [sources of unlocked cells]}``;
    ``given`` cells carry their (trusted) source, ``answer`` cells only their position.
    """
    nb = json.loads(Path(solution).read_text(encoding="utf-8"))
    cells, tests, release = [], [], []
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        meta, text = _meta(cell), _text(cell)
        if meta.get("grade"):
            tests.append({"id": meta["grade_id"], "points": float(meta.get("points", 0)), "source": text})
        elif meta.get("solution"):
            cells.append({"kind": "answer", "id": meta["grade_id"], "source": ""})
        elif "parameters" in cell.get("metadata", {}).get("tags", []):
            cells.append({"kind": "parameters", "id": "parameters", "source": text})
        elif meta.get("locked"):
            cells.append({"kind": "given", "id": meta.get("grade_id", ""), "source": text})
        else:
            release.append(text)
    return {"notebook": Path(solution).stem, "cells": cells, "tests": tests, "release": release}


# --- the replay: trusted cells and the student's answers, in order ---------------------------


def _definitions(text: str) -> str:
    """Only the top-level definitions (def, class, import, assignment) of ``text``."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return ""
    keep = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)
    return "\n\n".join(ast.unparse(node) for node in tree.body if isinstance(node, keep))


def build_replay(submission: Path, trusted: dict) -> list[dict]:
    """The replay of ``submission``: ``[{"kind", "id", "source"}]`` in notebook order.

    Answer cells are matched to the instructor's by grade id; a missing one is skipped (its
    names stay undefined, as in a kernel where it never ran). Cells the student added (no
    nbgrader metadata, source not in the release) contribute their top-level definitions.
    Raises ``ValueError`` for a file that is not a notebook.
    """
    nb = json.loads(Path(submission).read_text(encoding="utf-8"))
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("not a notebook (no list of cells)")
    answers: dict[str, str] = {}
    added: list[tuple[str | None, str]] = []  # (the answer id it follows, source)
    last_answer = None
    release = {s.strip() for s in trusted["release"]}
    for cell in nb["cells"]:
        if not isinstance(cell, dict):
            continue
        meta, text = _meta(cell), _text(cell)
        # nbgrader turns a retyped answer cell back into code (OverwriteCells); so does the replay.
        if cell.get("cell_type") != "code" and not meta.get("solution"):
            continue
        if meta.get("solution") and meta.get("grade_id"):
            answers.setdefault(meta["grade_id"], text)  # a duplicated answer cell: the first counts
            last_answer = meta["grade_id"]
        elif not meta and text.strip() and text.strip() not in release:
            added.append((last_answer, _definitions(_transform(text))))
    replay = []
    for cell in trusted["cells"]:
        if cell["kind"] == "answer":
            if cell["id"] in answers:
                replay.append({"kind": "answer", "id": cell["id"], "source": answers[cell["id"]]})
            replay.extend({"kind": "added", "id": f"after {cell['id']}", "source": src}
                          for after, src in added if after == cell["id"] and src)
        else:
            if cell["kind"] == "parameters":
                replay.extend({"kind": "added", "id": "added", "source": src} for after, src in added if after is None and src)
            replay.append(cell)
    return replay


def _transform(text: str) -> str:
    """IPython syntax (``%magic``, ``!cmd``) as the plain Python IPython would run."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(text)


def _writefile(text: str) -> tuple[str, str, bool] | None:
    """``(path, content, append)`` for a ``%%writefile [-a] path`` cell, else None."""
    first, _, body = text.partition("\n")
    parts = first.split()
    if not parts or parts[0] != "%%writefile":
        return None
    append = "-a" in parts[1:] or "--append" in parts[1:]
    names = [p for p in parts[1:] if not p.startswith("-")]
    return (names[0].strip("'\""), body, append) if names else None


def run_cell(module: types.ModuleType, cell: dict) -> str | None:
    """Run one replay cell in ``module``'s namespace; the error it raised, as text, or None."""
    text = cell["source"]
    try:
        wf = _writefile(text.lstrip("\n"))
        if wf is not None:
            path, content, append = wf
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a" if append else "w", encoding="utf-8") as f:
                f.write(content if content.endswith("\n") or not content else content + "\n")
            return None
        tree = ast.parse(_transform(text))
        # Shell lines and line magics (get_ipython() calls) are the notebook's business, not an answer's.
        tree.body = [n for n in tree.body if not (isinstance(n, ast.Expr) and "get_ipython()" in ast.unparse(n))]
        exec(compile(tree, f"<{cell['kind']} cell {cell['id']}>", "exec"), module.__dict__)
        return None
    except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything, even SystemExit
        if isinstance(exc, (KeyboardInterrupt, _CellTimeout)):
            raise
        return f"{cell['kind']} cell {cell['id']!r}: {type(exc).__name__}: {str(exc)[:300]}"


def load_replay(path: str) -> types.ModuleType:
    """Run the replay in ``path`` (JSON) once per process, in its folder; the module it makes."""
    path = str(Path(path).resolve())
    key = f"{MODULE}_{abs(hash(path))}"
    if key in sys.modules:
        return sys.modules[key]
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    module = types.ModuleType(key)
    module.__file__ = path
    module.__dict__["__builtins__"] = __builtins__
    module.__dict__["get_ipython"] = _NoShell  # answer cells that call it run on, as in the kernel
    sys.modules[key] = module
    here = os.getcwd()
    os.chdir(Path(path).parent)
    errors = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for cell in spec["cells"]:
                if cell.get("skip"):
                    errors.append(f"{cell['kind']} cell {cell['id']!r}: skipped, it ran out of time before")
                    continue
                signal.setitimer(signal.ITIMER_REAL, REPLAY_CELL_SECONDS)
                try:
                    error = run_cell(module, cell)
                except _CellTimeout:
                    error = f"{cell['kind']} cell {cell['id']!r}: stopped after {REPLAY_CELL_SECONDS:g} s"
                    cell["timed_out"] = True
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if error:
                    errors.append(error)
    finally:
        signal.signal(signal.SIGALRM, previous)
        os.chdir(here)
    module.__servelab_errors__ = errors
    module.__servelab_timed_out__ = [i for i, c in enumerate(spec["cells"]) if c.get("timed_out")]
    return module


class _NoShell:
    """What ``get_ipython()`` gives a replayed cell: every attribute is a no-op callable."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Remote:
    """A student's callable or object, by reference: (replay file, name).

    Pickling it sends only the reference; the unpickling process runs the replay and
    returns the real object. Calling it here runs the call in a child process and returns
    JSON data (never an object the student built).
    """

    def __init__(self, path: str, name: str, callable_: bool = True):
        self._path, self._name, self._callable = path, name, callable_

    def __reduce__(self):
        return (resolve, (self._path, self._name))

    def __call__(self, *args, **kwargs):
        from functools import partial

        from autograder.isolate import run_isolated

        if not self._callable:
            raise TypeError(f"{self._name} is not callable")
        return run_isolated(partial(self, **kwargs) if kwargs else self, *args, what=f"your {self._name}")

    def __repr__(self):
        return f"<the submission's {self._name}>"


def resolve(path: str, name: str):
    """Unpickling side of :class:`Remote`."""
    module = load_replay(path)
    try:
        return module.__dict__[name]
    except KeyError:
        raise NameError(f"name {name!r} is not defined (its cell raised or is missing)") from None


def probe(path: str) -> dict:
    """Run the replay and describe every top-level name it defines (in a child process)."""
    module = load_replay(path)
    root = str(Path(path).resolve().parent)
    names = {}
    for name, value in list(module.__dict__.items()):
        if name.startswith("__") or name in ("In", "Out", "get_ipython", "exit", "quit"):
            continue
        try:
            names[name] = _describe(value, module.__name__, root)
        except Exception:  # noqa: BLE001 - an object that raises when looked at (a proxy, a property)
            names[name] = {"kind": "remote", "callable": False}
    return {"names": names, "errors": module.__servelab_errors__, "timed_out": module.__servelab_timed_out__}


def _describe(value, module_name: str, root: str) -> dict:
    if type(value).__name__ == "LocalProxy" and "flask" in sys.modules:
        from autograder.isolate import FLASK_PROXIES

        for proxy in FLASK_PROXIES:
            if value is getattr(sys.modules["flask"], proxy, None):
                return {"kind": "import", "module": "flask", "qualname": proxy}
    if isinstance(value, types.ModuleType):
        origin = getattr(value, "__file__", None) or ""
        if value.__name__.startswith(MODULE) or origin.startswith(root):
            return {"kind": "remote", "callable": False}
        return {"kind": "module", "module": value.__name__}
    if isinstance(value, Path):
        return {"kind": "path", "value": str(value)}
    owner = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if (callable(value) and isinstance(owner, str) and isinstance(qualname, str) and not owner.startswith(MODULE)
            and "<" not in qualname and owner != "__main__"):
        origin = getattr(sys.modules.get(owner), "__file__", None) or ""
        if not origin.startswith(root):
            try:
                found = importlib.import_module(owner)
                for part in qualname.split("."):
                    found = getattr(found, part)
                if found is value:
                    return {"kind": "import", "module": owner, "qualname": qualname}
            except Exception:  # noqa: BLE001 - not importable by name: keep it remote
                pass
    if callable(value):
        return {"kind": "remote", "callable": True}
    try:
        return {"kind": "value", "value": json.loads(json.dumps(value, allow_nan=False))}
    except (TypeError, ValueError, RecursionError):
        return {"kind": "remote", "callable": False}


def namespace(path: str, report: dict) -> dict:
    """The test cells' globals, built in the grader from the probe's ``report``."""
    ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    for name, d in report["names"].items():
        kind = d["kind"]
        try:
            if kind == "value":
                ns[name] = d["value"]
            elif kind == "path":
                ns[name] = Path(d["value"])
            elif kind == "module":
                ns[name] = importlib.import_module(d["module"])
            elif kind == "import":
                obj = importlib.import_module(d["module"])
                for part in d["qualname"].split("."):
                    obj = getattr(obj, part)
                ns[name] = obj
            else:
                ns[name] = Remote(path, name, d.get("callable", True))
        except Exception:  # noqa: BLE001 - an import the grader cannot repeat: leave it to the student's side
            ns[name] = Remote(path, name, kind != "module")
    return ns


# --- the verdicts ----------------------------------------------------------------------------


class _CellTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _CellTimeout()


def run_test(source: str, ns: dict, qid: str, seconds: float) -> dict:
    """Run one graded cell's source in a copy of ``ns``; ``{"status", "message"}``."""
    started = time.monotonic()
    out = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(_transform(source), f"<test {qid}>", "exec"), dict(ns))
        verdict = {"status": "passed", "message": ""}
    except _CellTimeout:
        verdict = {"status": "failed", "message": f"the test did not finish within {seconds:g} s"}
    except NotAnswered as exc:
        verdict = {"status": "unanswered", "message": str(exc)}
    except (CheckFailed, Timeout, AssertionError) as exc:
        verdict = {"status": "failed", "message": str(exc) or "a check did not hold"}
    except NameError as exc:
        verdict = {"status": "unanswered", "message": f"{exc}: the answer is missing or its cell raised"}
    except BaseException as exc:  # noqa: BLE001 - whatever the student's objects made the test raise
        verdict = {"status": "failed", "message": f"{type(exc).__name__}: {str(exc)[:500]}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    verdict["seconds"] = round(time.monotonic() - started, 3)
    return verdict


def verify(submission: Path, trusted: dict, workdir: Path, cell_seconds: float = CELL_SECONDS) -> dict:
    """Grade ``submission`` outside its kernel. ``{"questions": {id: verdict}, "errors": [...]}``.

    Runs in (and writes to) ``workdir``, which should be empty. Never raises for anything
    in the submission.
    """
    from autograder.isolate import run_isolated

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tests = trusted["tests"]

    def everyone(status: str, message: str) -> dict:
        return {"questions": {t["id"]: {"status": status, "message": message} for t in tests}, "errors": [message]}

    try:
        replay = build_replay(Path(submission), trusted)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return everyone("failed", f"the notebook could not be read: {exc}")
    spec = workdir / "replay.json"
    spec.write_text(json.dumps({"cells": replay}))
    here = os.getcwd()
    os.chdir(workdir)
    budget = cell_seconds + REPLAY_CELL_SECONDS * sum(c["kind"] in ("answer", "added") for c in replay)
    what = "your notebook's answer cells"
    try:
        with _replayed_once(spec, budget) as (state, detail):
            # "died" (the replay ended its process, or the server failed) goes on as unpinned: the
            # probe below replays in a child of its own and reports what happens there.
            if state == "timeout":
                return everyone("failed", f"the answer cells could not be run outside the notebook: {what} did not "
                                          f"finish within {detail:g} s (an endless loop, or waiting on something?)")
            try:
                report = run_isolated(probe, str(spec), timeout=budget, what=what)
            except (CheckFailed, Timeout) as exc:
                return everyone("failed", f"the answer cells could not be run outside the notebook: {exc}")
            if not isinstance(report, dict) or "names" not in report:
                return everyone("failed", "the answer cells could not be run outside the notebook")
            if report.get("timed_out") and state != "ready":
                # Later loads of the replay (one per check process) skip what never finished.
                for i in report["timed_out"]:
                    replay[i]["skip"] = True
                spec.write_text(json.dumps({"cells": replay}))
            ns = namespace(str(spec), report)
            questions = {t["id"]: run_test(t["source"], ns, t["id"], cell_seconds) for t in tests}
            return {"questions": questions, "errors": report.get("errors", [])}
    finally:
        os.chdir(here)


@contextlib.contextmanager
def _replayed_once(spec: Path, budget: float):
    """Where the checks' children come from: a fork server that ran the replay once, if it can.

    Yields :func:`autograder.procs.pinned`'s state. ``"ready"``: every child starts from the
    replayed state. ``"threads"``, ``"died"`` or not Linux (``"unpinned"``): each child runs the
    replay itself, as :func:`load_replay` does on unpickling. ``"timeout"``: the replay did not
    finish within its budget.
    """
    from autograder import procs

    if sys.platform != "linux":
        yield "unpinned", None
        return
    with procs.pinned(str(spec), budget, load_replay) as state:
        yield state
