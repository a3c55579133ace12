"""Checks for notebook 02, Linux commands.

The answers are shell command strings (``CMD_WRITE = "echo hello > out.txt"``). A check runs
each one with ``bash -c`` in a fresh temporary folder, with a clean environment, a time limit
and a file-size limit. Its stdout and stderr go to files, never to the notebook (nbgrader
scores a test cell that writes to stderr as 0), and the check judges the files the command
left behind and what it printed.

The curl exercises run against :func:`echo_app`, a small Flask app served on 127.0.0.1 by
:func:`autograder.harness.live_server`. Every answer it gives echoes what it received
(method, path, Content-Type, body), and it logs each request and its answer to a file, so
a check knows what curl really sent. A command writes ``{url}`` where the server's address
goes; the check fills it in.

A case for :func:`check_runs` is a dict::

    {"why": "out.txt already holds old lines",      # said in failure messages
     "given": {"out.txt": "old\\n"},                # files in the folder before the first run
     "run": ["CMD_WRITE", "CMD_WRITE"],             # commands to run, in order, in that folder
     "files": {"out.txt": "hello\\n"},              # exact contents afterwards (None: must not exist)
     "file_has": {"errors.txt": ["missing.txt"]},   # text a file must contain ...
     "file_lacks": {"errors.txt": ["notes.txt"]},   # ... or must not
     "stdout": "3",                                 # the last run's stdout, stripped (exact)
     "stdout_has": [...], "stdout_lacks": [...],
     "stderr_empty": True,                          # the last run printed nothing on stderr
     "hint": "..."}                                 # added to any failure message
"""
from __future__ import annotations

import atexit
import json
import re
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered, Timeout
from autograder.isolate import stop_process

RUN_TIMEOUT = 10.0
KEEP_BYTES = 64 * 1024  # of each output stream and file, for judging and showing
FILE_LIMIT_BLOCKS = 16 * 1024  # `ulimit -f` in 1024-byte blocks: no command writes more than 16 MiB
# Anything but loopback is sent to a proxy address where nothing listens, so a mistyped
# command fails at once instead of reaching (or even looking up) another host.
DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK = "127.0.0.1,localhost,::1"
# curl reads ~/.curlrc, so this one, in the temporary HOME, bounds every curl a learner writes.
CURLRC = f'max-time = 5\nconnect-timeout = 3\nproxy = "{DEAD_PROXY}"\nnoproxy = "{LOOPBACK}"\n'
PATH = "/usr/local/bin:/usr/bin:/bin"
PREDICT_BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


# --- running a command -------------------------------------------------------------------

@dataclass
class RunResult:
    """What one ``bash -c`` run did. Text is decoded as UTF-8 and cut at ``KEEP_BYTES``."""

    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    files: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(KEEP_BYTES).decode("utf-8", errors="replace")


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): _read(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _prepare_home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".curlrc").write_text(CURLRC)


def clean_env(home: Path) -> dict[str, str]:
    """The whole environment a command sees: nothing of the caller's, and only loopback reachable."""
    env = {"PATH": PATH, "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb"}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = DEAD_PROXY
    env["no_proxy"] = env["NO_PROXY"] = LOOPBACK
    return env


def run_in(folder: Path, home: Path, command: str, *, stdin: str | None = None,
           timeout: float = RUN_TIMEOUT, history: bool = False) -> RunResult:
    """Run ``command`` with ``bash -c`` in ``folder`` (HOME is ``home``) and wait at most ``timeout`` s.

    The command and everything it starts are stopped when it ends or times out. With
    ``history``, bash keeps a history (in ``home/.bash_history``) and expands ``!N`` as an
    interactive shell does.
    """
    folder, home = Path(folder), Path(home)
    _prepare_home(home)
    streams = Path(tempfile.mkdtemp(prefix="servelab-run-"))
    env = clean_env(home)
    script = command
    if history:
        env["HISTFILE"] = str(home / ".bash_history")
        script = "set -o history -o histexpand\n" + command
    # The outer bash only sets the file-size limit, then becomes the learner's `bash -c`.
    argv = ["/bin/bash", "-c", f'ulimit -f {FILE_LIMIT_BLOCKS}; exec /bin/bash -c "$1"', "servelab", script]
    timed_out = False
    try:
        if stdin is not None:
            (streams / "stdin").write_text(stdin)
        source = streams / "stdin" if stdin is not None else Path("/dev/null")
        with open(streams / "stdout", "wb") as out, open(streams / "stderr", "wb") as err, open(source, "rb") as inp:
            proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=inp, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                stop_process(proc, grace=0.5)
        return RunResult(command, None if timed_out else proc.returncode, _read(streams / "stdout"),
                         _read(streams / "stderr"), _snapshot(folder), timed_out)
    finally:
        shutil.rmtree(streams, ignore_errors=True)


def run_command(command: str, files: dict[str, str] | None = None, **kwargs) -> RunResult:
    """Run ``command`` in a fresh temporary folder holding ``files``; remove the folder after."""
    root = Path(tempfile.mkdtemp(prefix="servelab-sh-"))
    try:
        work = root / "work"
        work.mkdir()
        for name, text in (files or {}).items():
            (work / name).write_text(text)
        return run_in(work, root / "home", command, **kwargs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Sandbox:
    """A scratch folder for trying commands in a notebook.

    Every :meth:`run` is a fresh ``bash -c`` in the same folder, so files stay between runs
    but shell variables do not. The folder is removed when Python exits.
    """

    def __init__(self, timeout: float = RUN_TIMEOUT):
        self.root = Path(tempfile.mkdtemp(prefix="servelab-shell-"))
        self.folder = self.root / "work"
        self.home = self.root / "home"
        self.folder.mkdir()
        self.timeout = timeout
        atexit.register(shutil.rmtree, self.root, True)

    def write(self, name: str, text: str) -> None:
        """Put a file in the sandbox."""
        (self.folder / name).write_text(text)

    def files(self) -> dict[str, str]:
        return _snapshot(self.folder)

    def run(self, command: str, *, stdin: str | None = None, url: str | None = None, history: bool = False) -> None:
        """Run ``command`` and print what it wrote to each stream and its exit code (see :func:`show`)."""
        show(self.capture(command, stdin=stdin, url=url, history=history))

    def capture(self, command: str, *, stdin: str | None = None, url: str | None = None,
                history: bool = False) -> RunResult:
        """Run ``command`` quietly and return what it did.

        ``stdin`` is text for its standard input; ``url`` fills the ``{url}`` placeholder, as
        the self-checks do; ``history`` turns on bash's history and ``!N`` expansion.
        """
        if url is not None:
            command = command.replace("{url}", url)
        return run_in(self.folder, self.home, command, stdin=stdin, timeout=self.timeout, history=history)


def show(result: RunResult) -> None:
    """Print a run: ``$ command``, stdout as is, stderr lines marked ``[stderr]``, the exit code."""
    for line in result.command.strip("\n").splitlines():
        print(f"$ {line}")
    if result.stdout:
        print(result.stdout, end="" if result.stdout.endswith("\n") else "\n")
    for line in result.stderr.splitlines():
        print(f"[stderr] {line}")
    print("[timed out: stopped]" if result.timed_out else f"[exit code {result.exit_code}]")


# --- judging -----------------------------------------------------------------------------

def answers(namespace: dict, *names: str) -> dict[str, str]:
    """The learner's command strings ``names`` from ``namespace`` (pass ``globals()``).

    Raises :class:`NotAnswered` if one is not set yet, :class:`CheckFailed` if one is not a
    non-empty string.
    """
    missing = [name for name in names if namespace.get(name) is None or namespace[name] is ...]
    if missing:
        raise NotAnswered(f"{', '.join(missing)} not set yet: write the command(s) in the answer cell and run it.")
    for name in names:
        value = namespace[name]
        if not isinstance(value, str) or not value.strip():
            raise CheckFailed(f"{name} should be a shell command in a string, e.g. \"echo hello\"; it is {value!r}.")
    return {name: namespace[name] for name in names}


def _lines(text: str) -> str:
    n = len(text.splitlines())
    return f"{n} line" + ("" if n == 1 else "s")


def _context(name: str, result: RunResult) -> str:
    """The part of a failure message that shows how the last command ended."""
    bits = []
    if result.exit_code not in (0, None):
        bits.append(f"{name} exited with code {result.exit_code}")
    if result.stderr.strip():
        bits.append(f"it printed on stderr: {result.stderr.strip()[:300]!r}")
    return (" (" + "; ".join(bits) + ")") if bits else ""


def check_runs(commands: dict[str, str], cases: list[dict], timeout: float = RUN_TIMEOUT) -> None:
    """Run each case's commands in a fresh folder and compare the outcome (see the module doc)."""
    for case in cases:
        root = Path(tempfile.mkdtemp(prefix="servelab-sh-"))
        try:
            work = root / "work"
            work.mkdir()
            for name, text in case.get("given", {}).items():
                (work / name).write_text(text)
            result = None
            for name in case["run"]:
                result = run_in(work, root / "home", commands[name], stdin=case.get("stdin"), timeout=timeout)
                if result.timed_out:
                    raise Timeout(
                        f"{name} did not finish within {timeout:g} s; does it wait for input or loop forever?"
                    )
            _judge(case, case["run"][-1], result)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _judge(case: dict, last: str, result: RunResult) -> None:
    steps = " then ".join(case["run"])
    given = case.get("given") or {}
    where = f"in a folder with {', '.join(given)}" if given else "in an empty folder"
    after = f"after running {steps} {where} ({case['why']})"
    hint = f" Hint: {case['hint']}." if case.get("hint") else ""

    def fail(message: str) -> CheckFailed:
        return CheckFailed(f"{after}, {message}{_context(last, result)}.{hint}")

    for fname, want in case.get("files", {}).items():
        got = result.files.get(fname)
        if want is None and got is not None:
            raise fail(f"{fname} should not exist; it does")
        if want is not None and got is None:
            raise fail(f"{fname} should exist; it does not")
        if want is not None and got != want:
            raise fail(f"{fname} should hold {want!r} ({_lines(want)}); it held {got!r} ({_lines(got)})")
    for fname, needles in case.get("file_has", {}).items():
        got = result.files.get(fname)
        if got is None:
            raise fail(f"{fname} should exist; it does not")
        for needle in needles:
            if needle not in got:
                raise fail(f"{fname} should contain {needle!r}; it held {got!r}")
    for fname, needles in case.get("file_lacks", {}).items():
        got = result.files.get(fname) or ""
        for needle in needles:
            if needle in got:
                raise fail(f"{fname} should not contain {needle!r}; it held {got!r}")
    out = result.stdout
    if "stdout" in case and out.strip() != case["stdout"]:
        want = case["stdout"]
        raise fail(f"{last} should print {want!r} on stdout" + (" (nothing)" if not want else "")
                   + f"; it printed {out.strip()[:300]!r}")
    for needle in case.get("stdout_has", []):
        if needle not in out:
            raise fail(f"{last} should print {needle!r} on stdout; it printed {out.strip()[:300]!r}")
    for needle in case.get("stdout_lacks", []):
        if needle in out:
            raise fail(f"{last} should not print {needle!r} on stdout; it printed {out.strip()[:300]!r}")
    if case.get("stderr_empty") and result.stderr:
        # Said here, not by _context, so the message does not repeat the stderr text.
        raise CheckFailed(f"{after}, {last} should print nothing on stderr; it printed {result.stderr.strip()[:300]!r}.{hint}")


def _syntax(commands: dict[str, str], name: str, pattern: str, what: str) -> None:
    if not re.search(pattern, commands[name]):
        raise CheckFailed(f"{name} should use {what}; {commands[name]!r} does not.")


PIPE = r"(?<!\|)\|(?![|&])"
STDIN_REDIRECT = r"(?<![<0-9])0?<(?![<(&])"


def check_write_append(commands: dict[str, str]) -> None:
    """``CMD_WRITE`` replaces out.txt with ``hello``; ``CMD_APPEND`` adds a line ``world``."""
    check_runs(commands, [
        {"why": "CMD_WRITE creates the file", "run": ["CMD_WRITE"], "files": {"out.txt": "hello\n"}, "stdout": ""},
        {"why": "CMD_WRITE replaces what was there", "given": {"out.txt": "old line 1\nold line 2\n"},
         "run": ["CMD_WRITE", "CMD_WRITE"], "files": {"out.txt": "hello\n"}, "hint": "> replaces a file; >> appends"},
        {"why": "CMD_APPEND keeps what is there", "run": ["CMD_WRITE", "CMD_APPEND", "CMD_APPEND"],
         "files": {"out.txt": "hello\nworld\nworld\n"}, "stdout": "", "hint": ">> appends; > would replace"},
    ])


def check_join(commands: dict[str, str]) -> None:
    """``CMD_JOIN`` writes part1.txt followed by part2.txt into whole.txt and leaves the parts alone."""
    parts = {"part1.txt": "first part\n", "part2.txt": "second part\nmore of it\n"}
    check_runs(commands, [
        {"why": "CMD_JOIN concatenates", "given": parts, "run": ["CMD_JOIN"],
         "files": {"whole.txt": "first part\nsecond part\nmore of it\n", **parts}, "stdout": ""},
    ])


NOTES = "alpha\nbeta\ngamma\n"


def check_streams(commands: dict[str, str]) -> None:
    """``CMD_ERRORS`` (``2>``), ``CMD_BOTH`` (``> file 2>&1``) and ``CMD_STDIN`` (``<``)."""
    check_runs(commands, [
        {"why": "CMD_ERRORS sends only the error to errors.txt", "given": {"notes.txt": NOTES}, "run": ["CMD_ERRORS"],
         "file_has": {"errors.txt": ["missing.txt"]}, "file_lacks": {"errors.txt": ["notes.txt"]},
         "stdout_has": ["notes.txt"], "stdout_lacks": ["missing.txt"], "stderr_empty": True,
         "hint": "2> file redirects stream 2 (stderr) only; stdout (1) stays on the screen"},
        {"why": "CMD_BOTH sends both streams to all.txt", "given": {"notes.txt": NOTES}, "run": ["CMD_BOTH"],
         "file_has": {"all.txt": ["notes.txt", "missing.txt"]}, "stdout": "", "stderr_empty": True,
         "hint": "order matters: > all.txt 2>&1 points stdout at the file, then stderr where stdout now points"},
    ])
    _syntax(commands, "CMD_STDIN", STDIN_REDIRECT, "< to give notes.txt to wc on its standard input")
    check_runs(commands, [
        {"why": "CMD_STDIN counts lines from stdin", "given": {"notes.txt": NOTES}, "run": ["CMD_STDIN"],
         "stdout": "3", "hint": "with < the shell opens the file and wc reads stdin, so wc never learns the file's name and prints only the number"},
    ])


APP_LOG = (
    "2024-05-01 10:00:01 INFO server started\n"
    "2024-05-01 10:00:05 ERROR model file not found\n"
    "2024-05-01 10:00:09 INFO retrying\n"
    "2024-05-01 10:00:10 ERROR model file not found\n"
    "2024-05-01 10:01:00 INFO model loaded\n"
    "2024-05-01 10:02:13 WARNING slow request: 2.3 s\n"
    "2024-05-01 10:03:27 ERROR predict failed: bad input\n"
    "2024-05-01 10:05:00 INFO health check: 0 errors in 5 minutes\n"
)


def count_matching(text: str, word: str = "ERROR") -> int:
    return sum(word in line for line in text.splitlines())


def check_pipe(commands: dict[str, str], log: str = APP_LOG) -> None:
    """``CMD_COUNT`` prints how many lines of app.log contain ``ERROR``, using pipes."""
    _syntax(commands, "CMD_COUNT", PIPE, "a pipe (|) to pass one command's output to the next")
    check_runs(commands, [
        {"why": "CMD_COUNT counts ERROR lines", "given": {"app.log": log}, "run": ["CMD_COUNT"],
         "stdout": str(count_matching(log)),
         "hint": "grep ERROR keeps the lines that contain ERROR (capitals: grep is case-sensitive); wc -l counts lines"},
    ])


# --- the live server and curl ------------------------------------------------------------

def echo_app(handler, config=None):
    """A Flask app for trying curl: every answer is JSON and says what the server received.

    Routes: ``GET /health`` → ``{"status": "ok"}``; ``POST /predict`` with a JSON body
    ``{"instances": [...]}`` → ``{"predictions": [...]}`` from ``handler`` (415 if the
    Content-Type is not JSON, 400 for a bad body); ``/echo`` with any method. Every answer
    also has ``"received": {"method", "path", "query", "content_type", "body"}``. If
    ``config["log"]`` names a file, each request and its answer are appended to it as a
    JSON line.
    """
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException

    from server_stub.handler import HandlerError

    config = dict(config or {})
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False  # the answer first, then what was received
    lock = threading.Lock()

    def received() -> dict:
        try:
            body = request.get_data(as_text=True)[:2000]
        except HTTPException:  # e.g. 413: the body is not read at all
            body = None
        return {
            "method": request.method,
            "path": request.path,
            "query": request.args.to_dict(),
            "content_type": request.content_type,
            "body": body,
        }

    def answer(code: int, **body):
        return jsonify({**body, "received": received()}), code

    @app.get("/health")
    def health():
        return answer(200, status="ok")

    @app.post("/predict")
    def predict():
        if not request.is_json:
            return answer(415, error=f"expected Content-Type: application/json, got {request.content_type!r}")
        payload = request.get_json(silent=True)
        if payload is None:
            return answer(400, error="the body is not valid JSON")
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            return answer(400, error="the body should be an object with a non-empty list 'instances'")
        try:
            predictions = handler.handle([{"body": x} for x in instances], handler.context)
        except HandlerError as exc:
            return answer(exc.status, error=exc.message)
        return answer(200, predictions=predictions)

    @app.route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def echo():
        return answer(200)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return answer(exc.code, error=exc.description)

    @app.after_request
    def log(response):
        if config.get("log"):
            try:
                sent = request.get_json(force=True, silent=True)
            except HTTPException:
                sent = None
            entry = {**received(), "json": sent,
                     "status": response.status_code, "response": response.get_json(silent=True)}
            with lock, open(config["log"], "a") as f:
                f.write(json.dumps(entry) + "\n")
        return response

    return app


class EchoServer:
    """A running :func:`echo_app` (see :func:`echo_server`) and the requests it has logged."""

    def __init__(self, live, log: Path):
        self.live = live
        self.base_url = live.base_url
        self.log = log

    def requests(self) -> list[dict]:
        """Every request so far, oldest first: method, path, content_type, body, json, status, response."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@contextmanager
def echo_server():
    """Serve :func:`echo_app` on 127.0.0.1 in its own process; yield an :class:`EchoServer`."""
    from autograder.harness import live_server

    folder = Path(tempfile.mkdtemp(prefix="servelab-echo-"))
    log = folder / "requests.jsonl"
    try:
        with live_server(echo_app, config={"log": str(log)}) as live:
            yield EchoServer(live, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _curl_command(name: str, command: str) -> None:
    if "curl" not in command:
        raise CheckFailed(f"{name} should be a curl command; it is {command!r}.")
    if "{url}" not in command:
        raise CheckFailed(
            f"{name} should write {{url}} where the server's address goes (the check fills in the real one, "
            f"e.g. http://127.0.0.1:54321); {command!r} has no {{url}}."
        )
    if re.search(r"\bhttps?://|\blocalhost\b|127\.0\.0\.1", command):
        raise CheckFailed(f"{name} should use {{url}} for the address, not a fixed one; {command!r} has one.")


def _curl_run(name: str, command: str, server: EchoServer, files: dict[str, str] | None = None):
    """Run a curl answer against ``server``; return the run and the requests it made."""
    _curl_command(name, command)
    seen = len(server.requests())
    result = run_command(command.replace("{url}", server.base_url), files)
    if result.timed_out:
        raise Timeout(f"{name} did not finish within {RUN_TIMEOUT:g} s.")
    made = server.requests()[seen:]
    if not made:
        raise CheckFailed(
            f"{name} sent no request to the server (curl exit code {result.exit_code}"
            + (f", stderr {result.stderr.strip()[:200]!r}" if result.stderr.strip() else "")
            + "). Is the address {url}/...?"
        )
    return result, made


def _printed_the_answer(name: str, result: RunResult, request: dict) -> None:
    """stdout must be exactly the JSON body the server answered."""
    if not result.stdout.strip():
        raise CheckFailed(
            f"{name} printed nothing; it should print the server's answer, {json.dumps(request['response'])[:200]}. "
            "(-o sends the answer to a file, and -f hides answers with an error status.)"
        )
    try:
        printed = json.loads(result.stdout)
    except ValueError:
        raise CheckFailed(
            f"{name} should print just the server's JSON answer, {json.dumps(request['response'])[:200]}; "
            f"it printed {result.stdout[:200]!r}. (-i and -v add the status line and headers; leave them out here.)"
        ) from None
    if printed != request["response"]:
        raise CheckFailed(f"{name} printed {printed!r}; the server answered {request['response']!r}.")
    if result.exit_code != 0:
        raise CheckFailed(f"{name} printed the answer but exited with code {result.exit_code}.")


def _maybe_server(server):
    @contextmanager
    def given():
        yield server

    return given() if server is not None else echo_server()


def check_curl_get(command: str, server: EchoServer | None = None) -> None:
    """``command`` GETs ``{url}/health`` and prints the JSON answer."""
    with _maybe_server(server) as srv:
        result, made = _curl_run("CURL_GET", command, srv)
        last = made[-1]
        if (last["method"], last["path"]) != ("GET", "/health"):
            raise CheckFailed(f"CURL_GET sent {last['method']} {last['path']}; expected GET /health.")
        _printed_the_answer("CURL_GET", result, last)


def _posted(name: str, made: list, expected_body) -> dict:
    last = made[-1]
    if (last["method"], last["path"]) != ("POST", "/predict"):
        raise CheckFailed(f"{name} sent {last['method']} {last['path']}; expected POST /predict.")
    content_type = last["content_type"] or ""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise CheckFailed(
            f"{name} sent Content-Type {last['content_type']!r}; expected 'application/json'. "
            "curl -d sends application/x-www-form-urlencoded unless you add -H \"Content-Type: application/json\"."
        )
    if last["json"] != expected_body:
        raise CheckFailed(
            f"{name} sent the body {last['body'][:200]!r}; expected the JSON {json.dumps(expected_body)[:200]}. "
            "Put the JSON in single quotes so the shell passes it to curl unchanged."
        )
    return last


def check_curl_post(command: str, server: EchoServer | None = None, body=None) -> None:
    """``command`` POSTs ``body`` as JSON to ``{url}/predict`` and prints the JSON answer."""
    body = PREDICT_BODY if body is None else body
    with _maybe_server(server) as srv:
        result, made = _curl_run("CURL_POST", command, srv)
        last = _posted("CURL_POST", made, body)
        if last["status"] != 200:
            raise CheckFailed(f"the server answered CURL_POST with {last['status']}: {last['response']!r}.")
        _printed_the_answer("CURL_POST", result, last)


def check_curl_post_file(command: str, bodies: list, server: EchoServer | None = None) -> None:
    """``command`` POSTs the file request.json as JSON to ``{url}/predict`` and prints the answer.

    ``bodies`` are written to request.json one at a time: a JSON value, or text as it is.
    The answer must be printed whatever its status (a 400 for a bad body, too).
    """
    with _maybe_server(server) as srv:
        for body in bodies:
            text = body if isinstance(body, str) else json.dumps(body)
            result, made = _curl_run("CURL_POST_FILE", command, srv, files={"request.json": text})
            last = _posted("CURL_POST_FILE", made, json.loads(text))
            _printed_the_answer("CURL_POST_FILE", result, last)
