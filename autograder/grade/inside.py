"""The grading sandbox's entry: the zygote (``--serve``) and each notebook's first process.

``python -P -s -m autograder.grade.inside --serve`` is the zygote of :mod:`autograder.grade.sandbox`:
it imports every library the checks and nbgrader use, once, from read-only mounts, then forks
a child per notebook, which :func:`autograder.grade.sandbox.enter` turns into that notebook's
sandbox. There, as an unprivileged user and never as root, :func:`main` makes itself
undumpable (student code of the same user cannot trace it or read its descriptors), reads the
whole job from stdin, reports what isolation it sees, and then, in order:

1. **judge**: a child forked from here runs :func:`autograder.grade.judge.verify`: the
   submission's answer cells in fork-server children, the instructor's tests (hidden ones
   included) against them. Its verdict is sent at once, so nothing later can change it.
2. Every other process of the sandbox is killed.
3. **kernel**: a child forked from here runs real ``nbgrader autograde`` on a copy of the
   course in the private ``/tmp``, with a fork server for the kernel's checks. Its scores are
   evidence for the tampering flag, never the grade.

Frames: ``KIND LENGTH\\n`` and LENGTH bytes of JSON, for ``isolation``, ``verdict`` and ``kernel``.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

MAX_JOB = 64 * 2**20
MAX_PHASE_OUTPUT = 24 * 2**20
ASSIGNMENT = "servelab"


def send(fd: int, kind: str, payload: dict) -> None:
    data = json.dumps(payload, ensure_ascii=True).encode()
    os.write(fd, f"{kind} {len(data)}\n".encode())
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def observe() -> dict:
    """What isolation this process sees from the inside."""
    from autograder import REPO

    try:
        interfaces = {name for _, name in socket.if_nameindex()}
    except OSError:
        interfaces = set()
    lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]

    def grouped(controller: str) -> bool:
        return any("servelab-" in path and (controller in names.split(",") or not names) for _, names, path in lines)

    try:
        caps = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    except (OSError, StopIteration, IndexError):
        caps = "unknown"
    return {
        "pid": os.getpid() == 1,
        "net": interfaces <= {"lo"},
        "mount": not any((REPO / "solutions").iterdir()) if (REPO / "solutions").is_dir() else True,
        "uid": os.getuid() != 0 and caps.strip("0") == "",
        "memory": grouped("memory"), "pids": grouped("pids"), "cpu": grouped("cpu"),
    }


def kill_others() -> None:
    """Kill every process of the sandbox but this one (the pid namespace's init excepted)."""
    for _ in range(50):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
        if not others:
            return
        time.sleep(0.05)


def phase(fn, seconds: float, pidns: bool) -> dict:
    """Run ``fn()`` in a forked child for at most ``seconds``; the dict it returns, or why there is none."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            result = fn()
            send(write_fd, "result", result)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the grader as this phase's error
            try:
                send(write_fd, "result", {"error": f"{type(exc).__name__}: {str(exc)[:400]}"})
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + seconds
    data, timed_out = b"", False
    os.set_blocking(read_fd, False)
    import select

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            if len(data) < MAX_PHASE_OUTPUT:
                data += chunk
    os.close(read_fd)
    if timed_out:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    if pidns:
        kill_others()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if timed_out:
        return {"error": f"timeout after {seconds:.0f} s"}
    from autograder.grade.sandbox import _json, read_frames

    result = _json(read_frames(data).get("result"))
    return result if isinstance(result, dict) else {"error": "the process ended without a result"}


def judge(job: dict) -> dict:
    import base64

    from autograder.grade.judge import verify

    work = Path(tempfile.mkdtemp(prefix="judge-"))
    submission = work / f"{job['notebook']}.ipynb"
    submission.write_bytes(base64.b64decode(job["submission"]))
    return verify(submission, job["tests"], work / "run", job["cell_seconds"])


def kernel(job: dict) -> dict:
    import base64

    from autograder import procs
    from autograder.grade.course import Course

    server = procs.Server()
    if server.ready:
        os.environ[procs.SOCKET_ENV] = server.path
    root = Path(tempfile.mkdtemp(prefix="course-"))
    course = Course(root, [])
    (root / "gradebook.db").write_bytes(base64.b64decode(job["gradebook"]))
    name, student = job["notebook"], job["student"]
    dest = root / "submitted" / student / ASSIGNMENT
    dest.mkdir(parents=True)
    (dest / f"{name}.ipynb").write_bytes(base64.b64decode(job["submission"]))
    os.chdir(root)
    log = os.open(root / "nbgrader.log", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.argv = ["nbgrader", "autograde", ASSIGNMENT, "--force", f"--student={student}", f"--notebook={name}"]
    from nbgrader.apps.nbgraderapp import main

    try:
        main()
    except SystemExit:
        pass
    autograded = root / "autograded" / student / ASSIGNMENT / f"{name}.ipynb"
    tail = "\n".join((root / "nbgrader.log").read_text(errors="replace").splitlines()[-8:])
    if not autograded.exists():
        return {"error": "nbgrader could not grade this notebook (its log is in the class report)", "log": tail[-1500:]}
    results = course.results(student, [name])
    if not results:
        return {"error": "nbgrader recorded no grades (its log is in the class report)", "log": tail[-1500:]}
    r = results[0]
    return {"score": r.score, "max_score": r.max_score, "questions": [q.__dict__ for q in r.questions],
            "autograded": autograded.read_text(errors="replace")[: MAX_PHASE_OUTPUT // 2]}


def serve() -> int:
    """The zygote (:class:`autograder.grade.sandbox.Zygote`): import everything once, then fork a sandbox per notebook."""
    import pkgutil

    from autograder import checks, procs
    from autograder.grade import sandbox

    procs.undumpable()
    control = socket.socket(fileno=int(os.environ.pop("SERVELAB_CONTROL_FD")))
    procs.preload()
    import nbgrader.api  # noqa: F401
    import nbgrader.apps.nbgraderapp  # noqa: F401

    for module in pkgutil.iter_modules(checks.__path__):
        __import__(f"autograder.checks.{module.name}")
    from autograder.checks import handler

    handler.reference()  # the course model's reference, trained in memory
    procs._serve(control, os.getppid(), prepare=sandbox.enter)
    return 0


def main() -> int:
    """One notebook, in the first process of its sandbox (forked from the zygote, see :func:`sandbox.enter`)."""
    from autograder.procs import undumpable

    undumpable()
    out = int(os.environ.pop("SERVELAB_RESULT_FD"))
    os.set_inheritable(out, False)
    data = b""
    while len(data) <= MAX_JOB:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        data += chunk
    job = json.loads(data)
    seen = observe()
    send(out, "isolation", seen)
    if "judge" in job["phases"]:
        send(out, "verdict", phase(lambda: judge(job), job["seconds"], seen["pid"]))
    if "kernel" in job["phases"]:
        send(out, "kernel", phase(lambda: kernel(job), job["seconds"], seen["pid"]))
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
