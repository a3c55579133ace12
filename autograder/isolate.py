"""Run student code in a child process and get plain data back.

The checks never call student code in the process that judges it. A callable and its
arguments are sent with cloudpickle (which carries classes and functions defined in a
notebook by value) to ``python -m autograder.isolate``; the child runs it and writes the
result as JSON. So the judge compares JSON values, never objects the student built, and a
hang, a crash or ``os._exit`` in student code costs one check, not the notebook.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from autograder.errors import CheckFailed, Timeout

DEFAULT_TIMEOUT = 20.0


def stop_process(proc, grace: float = 3.0) -> None:
    """Stop ``proc`` and everything it started (:func:`autograder.procs.stop`)."""
    from autograder.procs import stop

    stop(proc, grace)


def spawn(args: list[str], workdir: Path, log_path: Path):
    """Start ``python args...`` in its own session, output to ``log_path`` (:func:`autograder.procs.spawn`).

    In the grading sandbox it is a fork of a preloaded server, which saves every child's imports.
    """
    from autograder.procs import spawn as _spawn

    return _spawn(args, workdir, log_path)


def log_tail(log_path: Path, lines: int = 12) -> str:
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _by_value(objs) -> None:
    """Make cloudpickle copy code from modules a fresh interpreter could not import.

    Notebook code lives in ``__main__`` and travels by value anyway; this covers code
    loaded from a file (an extracted submission, a test's wrong implementation).
    """
    import cloudpickle

    repo = Path(__file__).resolve().parent.parent
    installed = (sys.prefix, sys.base_prefix, str(repo / "autograder"), str(repo / "server_stub"))
    for obj in objs:
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        origin = getattr(module, "__file__", None)
        if module is not None and origin and not str(Path(origin).resolve()).startswith(installed):
            cloudpickle.register_pickle_by_value(module)


FLASK_PROXIES = ("request", "session", "g", "current_app")


def import_attr(module: str, name: str):
    """Unpickling side of :class:`_Pickler`: the named global of an importable module."""
    return getattr(importlib.import_module(module), name)


def _make_pickler():
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        """cloudpickle, plus Flask's context proxies (``flask.request`` ...) sent by name.

        They are module-level stand-ins for per-request state, not data, and pickling one
        by value fails; the child looks the same proxy up in its own Flask.
        """

        def reducer_override(self, obj):
            if type(obj).__name__ == "LocalProxy" and "flask" in sys.modules:
                flask = sys.modules["flask"]
                for name in FLASK_PROXIES:
                    if obj is getattr(flask, name, None):
                        return import_attr, ("flask", name)
            return super().reducer_override(obj)

    return Pickler


def dump_payload(obj, path: Path, what: str) -> None:
    import cloudpickle

    _Pickler = _make_pickler()
    values = obj.values() if isinstance(obj, dict) else [obj[0], *obj[1]] if isinstance(obj, tuple) else [obj]
    _by_value(values)
    try:
        buffer = io.BytesIO()
        _Pickler(buffer).dump(obj)
        data = buffer.getvalue()
    except Exception as exc:  # noqa: BLE001 - any failure here is the student's object
        raise CheckFailed(
            f"could not hand {what} to a separate process for testing: {type(exc).__name__}: {exc}. "
            "Keep your code at the top level of the cell, without open files, sockets or threads in globals."
        ) from None
    path.write_bytes(data)


def run_isolated(fn, *args, timeout: float = DEFAULT_TIMEOUT, what: str = "your code"):
    """Call ``fn(*args)`` in a fresh process and return its JSON-decoded result.

    Raises :class:`Timeout` when it runs longer than ``timeout`` seconds, and
    :class:`CheckFailed` when the child dies or its result is not JSON. An exception raised
    by ``fn`` comes back as ``{"raised": {"type", "message", "status"}}`` so the caller can
    judge it.
    """
    workdir = Path(tempfile.mkdtemp(prefix="servelab-iso-"))
    try:
        dump_payload((fn, args), workdir / "payload.pkl", what)
        proc = spawn(["-m", "autograder.isolate", "payload.pkl", "result.json"], workdir, workdir / "log.txt")
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Timeout(f"{what} did not finish within {timeout:g} s (an endless loop, or waiting on something?)") from None
        finally:
            stop_process(proc)
        result_path = workdir / "result.json"
        if not result_path.exists():
            tail = log_tail(workdir / "log.txt")
            raise CheckFailed(
                f"{what} ended the test process (exit code {proc.returncode}) before it could report."
                + (f"\nLast output:\n{tail}" if tail else "")
            )
        result = json.loads(result_path.read_text())
        if "error" in result:
            raise CheckFailed(f"{what} returned something the grader cannot read: {result['error']}")
        return result["ok"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _child(payload: str, out: str) -> None:
    import cloudpickle

    with open(payload, "rb") as f:
        fn, args = cloudpickle.load(f)
    try:
        value = fn(*args)
        try:
            text = json.dumps({"ok": value}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            text = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
    except BaseException as exc:  # noqa: BLE001 - report whatever the student's code raised
        text = json.dumps({"ok": {"raised": describe_exception(exc)}})
    tmp = out + ".tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, out)


def judge_raised(obs: dict, case: dict, call: str, name: str) -> bool:
    """Judge the exception side of one observed call ``{"value"} | {"raised"}``.

    Raises NotAnswered for NotImplementedError and CheckFailed for an unexpected exception or
    a missing expected one (``case["raises"]``, matched against the ``"classes"`` of the
    exception); returns True when the case expected a raise and got it, False when the
    returned value is still to be judged.
    """
    from autograder.errors import NotAnswered

    if "raised" in obs and obs["raised"]["type"] == "NotImplementedError":
        raise NotAnswered(f"{name} raised NotImplementedError: write it, then run its cell again.")
    if "raises" in case:
        if "raised" not in obs:
            raise CheckFailed(f"{call} should raise {case['raises']}; it returned {obs['value']!r}.")
        if case["raises"] not in obs["raised"]["classes"]:
            raise CheckFailed(f"{call} raised {obs['raised']['type']}: {obs['raised']['message']}; expected {case['raises']}.")
        return True
    if "raised" in obs:
        raise CheckFailed(f"{call} raised {obs['raised']['type']}: {obs['raised']['message']}")
    return False


def describe_exception(exc: BaseException) -> dict:
    status = getattr(exc, "status", None)
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:500],
        "status": status if isinstance(status, int) and not isinstance(status, bool) else None,
    }


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
