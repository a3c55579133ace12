"""Grade one submission, or one notebook: the one path behind ``check``, ``grade``, ``make demo`` and the benchmark.

collect (the caller) -> sandbox -> run -> judge -> store (the caller) -> report (the caller).

:func:`grade_submission` takes plain data (the student id, each notebook's bytes, the gradebook
template's bytes, the trusted tests) and returns plain data, so the same call runs in a local
thread or on a Dask worker. Each notebook runs in a sandbox of its own
(:mod:`autograder.grade.sandbox`), whose entry (:mod:`autograder.grade.inside`) sends back the
judge's verdict (the grade) and the kernel's scores (evidence). Everything that comes back is
parsed here as untrusted bytes; nothing the submission contains or prints stops the class.
"""
from __future__ import annotations

import base64
import json
import re
import time

from autograder.grade.sandbox import Limits, full, run
from autograder.grade.sandbox import _json as parse_json

STATUSES = {"passed", "failed", "unanswered", "error", "timeout", "missing"}
MAX_MESSAGE = 1000


def clean(text, limit: int = MAX_MESSAGE) -> str:
    """``text`` as a string every writer can encode: unpaired surrogates escaped, control characters dropped, cut."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text[: limit * 4].encode("utf-8", "backslashreplace").decode("utf-8")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)[:limit]


def grade_submission(student: str, notebooks: dict[str, bytes], template_db: bytes, expected: dict[str, dict], limits: dict,
                     tests: dict[str, dict], hide: list[str] | None = None, require_full: bool = False) -> dict:
    """Grade ``notebooks`` (``{"04_model_handler": file bytes}``) of ``student``.

    ``expected`` maps each notebook of the assignment to ``{grade_id: max_score}``, so a
    notebook that is missing or cannot run still gets a row for every question; ``tests`` maps
    notebooks to :func:`autograder.grade.judge.trusted_tests`. ``hide`` adds folders that the
    sandbox must not show. With ``require_full``, a notebook whose sandbox lacked a protection
    is not graded. Never raises for anything in the submission.
    """
    limits = Limits(**limits)
    started = time.monotonic()
    deadline = started + limits.submission_seconds
    results = []
    for name in sorted(expected):
        t0 = time.monotonic()
        data = notebooks.get(name)
        remaining = deadline - time.monotonic()
        if data is None:
            graded = _zero(name, expected[name], "missing", "the submission has no such notebook")
        elif problem := _unreadable(data):
            graded = _zero(name, expected[name], "invalid", problem)
        elif remaining <= 1:
            graded = _zero(name, expected[name], "timeout", "the submission's time limit ran out before this notebook")
        else:
            graded = grade_notebook(student, name, data, template_db, expected[name], tests[name], limits, remaining,
                                    hide or [], require_full)
        graded["seconds"] = time.monotonic() - t0
        results.append(graded)
    status = next((r["status"] for r in results if r["status"] != "ok"), "ok")
    return {
        "student": clean(student, 200),
        "status": status,
        "seconds": time.monotonic() - started,
        "score": sum(r["score"] for r in results),
        "max_score": sum(r["max_score"] for r in results),
        "notebooks": results,
    }


def grade_notebook(student: str, name: str, data: bytes, template_db: bytes, expected: dict[str, float], trusted: dict,
                   limits: Limits, remaining: float, hide: list[str], require_full: bool = False) -> dict:
    """One notebook in one sandbox: the judge's verdict merged with the kernel's scores."""
    seconds = min(limits.notebook_seconds, remaining / 2)
    job = json.dumps({
        "student": student, "notebook": name, "submission": base64.b64encode(data).decode(),
        "gradebook": base64.b64encode(template_db).decode(), "tests": trusted, "cell_seconds": limits.cell_seconds,
        "seconds": seconds, "phases": ["judge", "kernel"],
    }).encode()
    outcome = run(job, limits, wall_seconds=min(2 * seconds + 60, remaining), hide=hide)
    kernel = parse_json(outcome.frames.get("kernel"))
    verdict = parse_json(outcome.frames.get("verdict"))
    # Logs stay out of what the student sees (reasons and messages): code in the sandbox can print anything
    # there, hidden tests included. The instructor reads them in the class report.
    why = "the sandbox stopped at the time limit" if outcome.timed_out else f"the sandbox ended early (exit code {outcome.returncode})"
    graded = _kernel_result(name, kernel, expected, why)
    outside = _verdict(verdict, [*expected], why)
    merged = merge_outside(graded, outside, expected)
    merged["isolation"] = outcome.isolation
    kernel_log = kernel.get("log") if isinstance(kernel, dict) else None
    merged["sandbox_log"] = clean("\n".join(filter(None, [outcome.log_tail[-1500:], kernel_log if isinstance(kernel_log, str) else ""])), 3000)
    if require_full and not full(outcome.isolation):
        merged = _zero(name, expected, "error", "not graded: the sandbox lacked a protection that --isolation require "
                                                f"asks for ({outcome.isolation})")
        merged["isolation"] = outcome.isolation
    return merged


def _kernel_result(name: str, kernel, expected: dict[str, float], why: str) -> dict:
    if not isinstance(kernel, dict) or "error" in kernel or not isinstance(kernel.get("questions"), list):
        reason = clean(kernel.get("error")) if isinstance(kernel, dict) and "error" in kernel else why
        status = "timeout" if reason.startswith("timeout") else "error"
        return _zero(name, expected, status, f"the kernel run: {reason}")
    questions = []
    for q in kernel["questions"][:200]:
        if isinstance(q, dict) and q.get("id") in expected:
            status = q.get("status") if q.get("status") in STATUSES else "error"
            questions.append({"id": q["id"], "score": _number(q.get("score"), expected[q["id"]]),
                              "max_score": expected[q["id"]], "status": status, "message": clean(q.get("message"))})
    autograded = kernel.get("autograded")
    return {"notebook": name, "status": "ok", "reason": "", "score": sum(q["score"] for q in questions),
            "max_score": float(sum(expected.values())), "questions": questions,
            "autograded": _capped(autograded).encode("utf-8", "backslashreplace").decode("utf-8")
            if isinstance(autograded, str) else None}


def _number(value, top: float) -> float:
    return min(max(float(value), 0.0), top) if isinstance(value, (int, float)) and value == value else 0.0


def _verdict(verdict, ids: list[str], why: str) -> dict:
    if not isinstance(verdict, dict):
        return {"error": f"the judge sent no verdict: {why}"}
    if "error" in verdict and not isinstance(verdict.get("questions"), dict):
        return {"error": clean(verdict["error"])}
    got = verdict.get("questions") if isinstance(verdict.get("questions"), dict) else {}
    questions = {}
    for gid in ids:
        v = got.get(gid)
        if isinstance(v, dict):
            status = v.get("status") if v.get("status") in STATUSES else "error"
            questions[gid] = {"status": status, "message": clean(v.get("message"))}
    errors = verdict.get("errors") if isinstance(verdict.get("errors"), list) else []
    return {"questions": questions, "errors": [clean(e, 300) for e in errors[:10]]}


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


def _unreadable(data: bytes) -> str | None:
    """Why ``data`` is not a notebook nbgrader can run, or None."""
    if not data.strip():
        return "the notebook file is empty"
    try:
        nb = json.loads(data)
    except RecursionError:
        return "the notebook's JSON is nested too deeply to read"
    except (UnicodeDecodeError, ValueError) as exc:
        return f"the notebook is not valid JSON ({exc})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return "the file is JSON but not a Jupyter notebook (no list of cells)"
    if not isinstance(nb.get("nbformat"), int) or nb["nbformat"] < 4:
        return "the notebook format is missing or older than version 4"
    return None


def _zero(name: str, expected: dict[str, float], status: str, reason: str, seconds: float = 0.0) -> dict:
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
    except (ValueError, AttributeError, TypeError, RecursionError):
        return text[:MAX_OUTPUT_CHARS]
