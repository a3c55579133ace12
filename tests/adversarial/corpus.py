"""Hostile and broken submissions: each one attacks or breaks grading in one way.

A case builds a submission from the solution or blank notebook 00 (fast, no servers) or 05
(the Flask API, for the server attacks) and says what an honest grader must record:

- ``score``: the exact total it must get, or None when the attack makes any total possible
  (a flood or a kill can take answers down with it) but the run must still record a grade;
- ``tampering``: True when the attack fakes a pass inside the kernel, so the kernel and the
  outside verdict must disagree and be flagged; False when nothing may be flagged;
- ``status``: the notebook statuses that are acceptable.

Attack code is put at the top of an answer cell (it runs in the student's kernel, and again
in the outside grader's replay, both as the submission's unprivileged user). Nothing here
sends traffic beyond loopback: the network case only checks that a connect is refused.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autograder import REPO

SOL00 = REPO / "solutions" / "00_orientation.ipynb"
BLANK00 = REPO / "notebooks" / "00_orientation.ipynb"
SOL04 = REPO / "solutions" / "04_model_handler.ipynb"
BLANK04 = REPO / "notebooks" / "04_model_handler.ipynb"
SOL05 = REPO / "solutions" / "05_flask_api.ipynb"
BLANK05 = REPO / "notebooks" / "05_flask_api.ipynb"
OK = {"ok"}
ANY = {"ok", "error", "timeout"}


@dataclass
class Case:
    name: str
    why: str
    notebook: str  # the file name it is submitted as
    build: Callable[[], bytes]
    score: float | None
    tampering: bool | None = False
    status: set[str] = field(default_factory=lambda: set(OK))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def dump(nb: dict) -> bytes:
    return json.dumps(nb).encode()


def answers(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution")]


def tests(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")]


def src(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def inject(base: Path, code: str, which: int = 0) -> Callable[[], bytes]:
    """The notebook ``base`` with ``code`` put at the top of its ``which``-th answer cell."""
    def build():
        nb = load(base)
        cell = answers(nb)[which]
        cell["source"] = code.strip("\n") + "\n\n" + src(cell)
        return dump(nb)
    return build


def mutate(base: Path, change: Callable[[dict], None]) -> Callable[[], bytes]:
    def build():
        nb = load(base)
        change(nb)
        return dump(nb)
    return build


# --- cell surgery ----------------------------------------------------------------------------

def _delete_tests(nb):
    nb["cells"] = [c for c in nb["cells"] if c not in tests(nb)]


def _duplicate_answer(nb):
    cell = answers(nb)[0]
    nb["cells"].insert(nb["cells"].index(cell) + 1, copy.deepcopy(cell))


def _retype_answer(nb):
    cell = answers(nb)[0]
    cell["cell_type"] = "markdown"
    cell.pop("outputs", None)
    cell.pop("execution_count", None)


def _duplicate_grade_id(nb):
    a, b = answers(nb)[:2]
    b["metadata"]["nbgrader"]["grade_id"] = a["metadata"]["nbgrader"]["grade_id"]


def _edit_tests(nb):
    for cell in tests(nb):
        cell["source"] = 'print("passed")'


def _other_assignment(nb):
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta and meta.get("grade_id"):
            meta["grade_id"] = "other_" + meta["grade_id"]


# --- attack code (runs in the kernel and in the outside replay) -------------------------------

PATCH_CHECKS = """
import autograder.checks.orientation as _o
for _n in dir(_o):
    if _n.startswith("check_"):
        setattr(_o, _n, lambda *a, **k: None)
"""

PATCH_REQUESTS = """
import requests as _rq
class _Fake:
    status_code = 200
    headers = {"Content-Type": "application/json"}
    text = '{"status": "ok"}'
    content = text.encode()
    def json(self):
        return {"status": "ok", "predictions": []}
_rq.Session.request = lambda self, *a, **k: _Fake()
_rq.request = lambda *a, **k: _Fake()
"""

PATCH_HARNESS = """
import contextlib as _cl
import autograder.harness as _h
import autograder.checks.api as _api
@_cl.contextmanager
def _fake(*a, **k):
    yield None
_h.live_server = _fake
for _n in dir(_api):
    if _n.startswith("check_"):
        setattr(_api, _n, lambda *a, **k: None)
"""

PATCH_SHOWTRACEBACK = """
_ip = get_ipython()
_ip.showtraceback = lambda *a, **k: None
_ip.showsyntaxerror = lambda *a, **k: None
"""

PATCH_SYS_EXIT = """
import sys as _sys
_sys.exit = lambda *a, **k: None
import builtins as _b
_b.exit = _b.quit = lambda *a, **k: None
"""

# Breaks the answers (so the score drops below full marks) if any secret can be read.
READ_SECRETS = f"""
import glob as _g, os as _os
_leaks = []
for _p in [{str(REPO / 'solutions' / '00_orientation.ipynb')!r}, {str(REPO / '.git' / 'HEAD')!r},
           "../../../gradebook.db", "../../../gradebook.db-journal"] + _g.glob("/dev/shm/servelab-grade-*/*.tests.json") \\
          + _g.glob("/dev/shm/servelab-grade-*/gradebook.db") + _g.glob("/tmp/pytest-*/**/gradebook.db", recursive=True):
    try:
        with open(_p, "rb") as _f:
            _f.read(1)
        if _os.stat(_p).st_uid != _os.getuid():  # not a decoy another submission planted
            _leaks.append(_p)
    except OSError:
        pass
if _leaks:
    raise SystemExit("read " + ", ".join(_leaks))
"""

WRITE_GRADER = f"""
import glob as _g, sqlite3 as _sq
_wrote = []
for _p in ["../../../gradebook.db", *_g.glob("/dev/shm/servelab-grade-*/gradebook.db"), *_g.glob("/tmp/pytest-*/**/gradebook.db", recursive=True)]:
    try:
        _c = _sq.connect(f"file:{{_p}}?mode=rw", uri=True)  # never creates a file
        _c.execute("UPDATE grade SET manual_score = 999")
        _c.commit()
        _wrote.append(_p)
    except Exception:
        pass
for _p in [{str(REPO / 'autograder' / 'checks' / 'orientation.py')!r}, {str(REPO / 'server_stub' / 'model.py')!r}]:
    try:
        with open(_p, "a") as _f:
            _f.write("# student was here\\n")
        _wrote.append(_p)
    except OSError:
        pass
if _wrote:
    raise SystemExit("wrote " + ", ".join(_wrote))
"""

# Only checks that a non-loopback connect fails at once (no route): no packet leaves.
NETWORK = """
import errno as _e, socket as _s
_sock = _s.socket(_s.AF_INET, _s.SOCK_STREAM)
_sock.settimeout(2)
_code = _sock.connect_ex(("10.255.255.1", 80))
_sock.close()
if _code not in (_e.ENETUNREACH, _e.EHOSTUNREACH):
    raise SystemExit(f"a non-loopback connect was not refused at once (errno {_code})")
"""

KILL_EVERYONE = """
import os as _os, signal as _sig
for _pid in _os.listdir("/proc"):
    if _pid.isdigit() and int(_pid) != _os.getpid():
        try:
            _os.kill(int(_pid), _sig.SIGKILL)
        except OSError:
            pass
"""

DAEMON = """
import subprocess as _sp
_sp.Popen(["sleep", "3600"], start_new_session=True, stdin=_sp.DEVNULL, stdout=_sp.DEVNULL, stderr=_sp.DEVNULL)
"""

SQUAT = """
import socket as _s, threading as _t
def _squat():
    for _port in (5000, 8000, 8080, 8888):
        try:
            _k = _s.socket(); _k.bind(("127.0.0.1", _port)); _k.listen()
            globals().setdefault("_held", []).append(_k)
        except OSError:
            pass
_squat()
"""

# A pickle that, if the judge ever loaded it, would pass every question. Planted wherever a
# model, a module or a start-up file could be looked for: the default model folder, the
# working folder, HOME's user site, /tmp and /dev/shm.
PLANT = """
import os as _os, pickle as _pk, sys as _sys
class _Forge:
    def __reduce__(self):
        return (exec, ("import autograder.grade.judge as _j\\n_j.run_test = lambda *a, **k: {'status': 'passed', 'message': '', 'seconds': 0}",))
_code = "import autograder.grade.judge as _j\\n_j.run_test = lambda *a, **k: {'status': 'passed', 'message': '', 'seconds': 0}\\n"
for _d in ["/tmp/servelab-model", "/opt/servelab-model", _os.getcwd(), _os.path.expanduser("~"), "/tmp", "/dev/shm",
           _os.path.expanduser("~/.local/lib/python%d.%d/site-packages" % _sys.version_info[:2])]:
    try:
        _os.makedirs(_d, exist_ok=True)
        with open(_os.path.join(_d, "model.joblib"), "wb") as _f:
            _pk.dump(_Forge(), _f)
        with open(_os.path.join(_d, "meta.json"), "w") as _f:
            _f.write('{"features": ["a"], "classes": ["x", "y", "z"]}')
        for _name in ("sitecustomize.py", "usercustomize.py", "numpy.py", "requests.py", "flask.py"):
            with open(_os.path.join(_d, _name), "w") as _f:
                _f.write(_code)
    except OSError:
        pass
"""

# Symlinks, named like what a trusted process writes or reads, in every folder student code can write,
# pointing at the grader's code and at a canary: a trusted process that followed one would change it.
SYMLINKS = f"""
import os as _os
_targets = [{str(REPO / 'autograder' / 'checks' / 'orientation.py')!r}, "/run/servelab-canary", "/etc/passwd"]
_names = ["gradebook.db", "nbgrader.log", "00_orientation.ipynb", "index.html", "questions.csv", ".home", "tmp",
          "socket", "result.json", "payload.pkl", "log.txt", "replay.json", "kernel.json", "model.joblib"]
for _root in [_os.getcwd(), _os.path.expanduser("~"), "/tmp", "/dev/shm"]:
    for _folder, _dirs, _files in _os.walk(_root):
        for _i, _name in enumerate(_names):
            try:
                _os.symlink(_targets[_i % len(_targets)], _os.path.join(_folder, "x-" + _name))
                if not _os.path.lexists(_os.path.join(_folder, _name)):
                    _os.symlink(_targets[_i % len(_targets)], _os.path.join(_folder, _name))
            except OSError:
                pass
"""

# Guessable names taken before the grader could: folders and files where earlier designs put shared state.
SQUAT_PATHS = """
import os as _os
for _p in ["/tmp/servelab-model", "/tmp/servelab-fork-0", *(f"/dev/shm/servelab-stash-{_i}" for _i in range(1, 400)),
           *(f"/dev/shm/servelab-grade-{_i}" for _i in range(10)), "/tmp/servelab-iso-0", "/run/servelab-uids"]:
    try:
        _os.makedirs(_p, exist_ok=True)
        _os.chmod(_p, 0o777)
    except OSError:
        pass
"""

# Unpaired surrogates in what the checks report back and in the cell source itself.
SURROGATES = "_odd = '\\ud800 and \\udfff'\nprint(_odd)\n"


def _surrogate_answer(nb):
    cell = answers(nb)[0]
    cell["source"] = ("def pinned_version(requirements_text, package):\n    raise ValueError('\\ud800 broken \\udfff')\n\n"
                      "# a comment with a lone surrogate: \ud800\n")


def _deep(nb_bytes: bytes, depth: int) -> bytes:
    nb = json.loads(nb_bytes)
    text = json.dumps(nb)
    return (text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}").encode()


# Detached processes started in the judge's replay that keep trying to interfere: they must be gone before the kernel runs.
LINGER = """
import os as _os, time as _time
if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        _end = _time.time() + 120
        while _time.time() < _end:
            for _pid in _os.listdir("/proc"):
                if _pid.isdigit() and int(_pid) > 2 and int(_pid) != _os.getpid():
                    try:
                        _os.kill(int(_pid), 19)  # SIGSTOP
                    except OSError:
                        pass
            _time.sleep(0.2)
    _os._exit(0)
"""

CASES: list[Case] = [
    Case("infinite_loop", "an endless loop in an answer cell", "00_orientation.ipynb",
         inject(SOL00, "while True:\n    pass"), None, None, ANY),
    Case("fork_bomb", "a fork bomb", "00_orientation.ipynb",
         inject(SOL00, "import os as _os\nwhile True:\n    try:\n        _os.fork()\n    except OSError:\n        pass"), None, None, ANY),
    Case("memory_hog", "allocates far past the memory limit", "00_orientation.ipynb",
         inject(SOL00, "_hog = []\nwhile True:\n    _hog.append(b'x' * 2**26)"), None, None, ANY),
    Case("os_exit", "os._exit in an answer cell", "00_orientation.ipynb",
         inject(SOL00, "import os as _os\n_os._exit(3)"), None, None, ANY),
    Case("kernel_kill", "the kernel kills itself with SIGKILL", "00_orientation.ipynb",
         inject(SOL00, "import os as _os, signal as _sig\n_os.kill(_os.getpid(), _sig.SIGKILL)"), None, None, ANY),
    Case("kill_everyone", "SIGKILL to every process it can see", "00_orientation.ipynb",
         inject(SOL00, KILL_EVERYONE), None, None, ANY),
    Case("daemon", "leaves a detached process running", "00_orientation.ipynb",
         inject(SOL00, DAEMON), 7.0),
    Case("server_never_starts", "create_app raises", "05_flask_api.ipynb",
         inject(SOL05, "raise RuntimeError('no server today')"), 0.0),
    Case("server_hangs", "every request hangs", "05_flask_api.ipynb",
         mutate(SOL05, lambda nb: answers(nb)[0].__setitem__("source", src(answers(nb)[0]) + "\n\n_orig_create_app = create_app\n\ndef create_app(*a, **k):\n    import time\n    app = _orig_create_app(*a, **k)\n    app.before_request(lambda: time.sleep(30))\n    return app\n")), 0.0),
    Case("port_squatter", "binds the usual ports in the kernel", "05_flask_api.ipynb",
         inject(SOL05, SQUAT), 10.0),
    Case("stdout_flood", "writes 64 MiB to stdout", "00_orientation.ipynb",
         inject(SOL00, "import sys as _sys\nfor _ in range(64):\n    _sys.stdout.write('x' * 2**20)"), None, None, ANY),
    Case("stderr_flood", "writes 64 MiB to stderr", "00_orientation.ipynb",
         inject(SOL00, "import sys as _sys\nfor _ in range(64):\n    _sys.stderr.write('x' * 2**20)"), None, None, ANY),
    Case("huge_file", "writes a file past the size limit", "00_orientation.ipynb",
         inject(SOL00, "with open('big.bin', 'wb') as _f:\n    for _ in range(1024):\n        _f.write(b'x' * 2**20)"), None, None, ANY),
    Case("deleted_tests", "deletes every test cell", "00_orientation.ipynb", mutate(SOL00, _delete_tests), 7.0),
    Case("duplicated_answer", "duplicates an answer cell", "00_orientation.ipynb", mutate(SOL00, _duplicate_answer), None, None, ANY),
    # nbgrader turns it back into a code cell (OverwriteCells), and so does the outside replay.
    Case("retyped_answer", "turns an answer cell into Markdown", "00_orientation.ipynb", mutate(SOL00, _retype_answer), 7.0),
    Case("duplicate_grade_id", "two answer cells share a grade id", "00_orientation.ipynb", mutate(SOL00, _duplicate_grade_id), None, None, ANY),
    Case("edited_tests", "replaces every test with print('passed')", "00_orientation.ipynb", mutate(BLANK00, _edit_tests), 0.0),
    Case("patch_checks", "replaces the checks with no-ops", "00_orientation.ipynb", inject(BLANK00, PATCH_CHECKS), 0.0, True),
    Case("patch_requests", "fakes every HTTP response", "05_flask_api.ipynb", inject(BLANK05, PATCH_REQUESTS), 0.0, None),
    Case("patch_harness", "replaces the live-server harness and the API checks", "05_flask_api.ipynb",
         inject(BLANK05, PATCH_HARNESS), 0.0, True),
    Case("patch_sys_exit", "disables sys.exit and exit()", "00_orientation.ipynb", inject(BLANK00, PATCH_SYS_EXIT), 0.0),
    # nbgrader reads the error from the execute reply, not the displayed traceback: no fake pass to flag.
    Case("patch_showtraceback", "hides every error from nbgrader", "00_orientation.ipynb",
         inject(BLANK00, PATCH_SHOWTRACEBACK), 0.0, None),
    Case("read_secrets", "reads solutions, git history, gradebooks and hidden tests", "00_orientation.ipynb",
         inject(SOL00, READ_SECRETS), 7.0),
    Case("write_grader", "writes the gradebook and the grader's code", "00_orientation.ipynb",
         inject(SOL00, WRITE_GRADER), 7.0),
    Case("network", "connects to a non-loopback address", "00_orientation.ipynb", inject(SOL00, NETWORK), 7.0),
    Case("invalid_json", "not JSON", "00_orientation.ipynb", lambda: b"{ this is not json", 0.0, None, {"invalid"}),
    Case("empty_file", "an empty file", "00_orientation.ipynb", lambda: b"", 0.0, None, {"invalid"}),
    Case("wrong_assignment", "a notebook whose grade ids belong to another assignment", "00_orientation.ipynb",
         mutate(SOL00, _other_assignment), 0.0, None, ANY),
    Case("forged_eq", "answers with an object equal to everything", "00_orientation.ipynb",
         mutate(SOL00, lambda nb: answers(nb)[0].__setitem__("source", "class _Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n\n\ndef pinned_version(requirements_text, package):\n    return _Any()\n")), 4.0),
    Case("planted_model_and_modules", "plants a forging pickle, meta.json and start-up modules wherever the judge might load from",
         "04_model_handler.ipynb", inject(BLANK04, PLANT), 0.0, None, ANY),
    Case("planted_in_00", "the same plants in the fastest notebook, answered", "00_orientation.ipynb", inject(SOL00, PLANT), 7.0),
    # nbgrader runs inside the sandbox now: its set_permissions follows the planted links and fails, which breaks
    # only the submission's own kernel run (evidence, not the grade). The judge's verdict stands at full marks,
    # and test_the_gradebook_and_the_grader_are_intact checks that nothing outside the sandbox changed.
    Case("symlinks_everywhere", "symlinks to the grader's code and a canary in every writable folder", "00_orientation.ipynb",
         inject(SOL00, SYMLINKS), 7.0, False, ANY),
    Case("squatted_paths", "takes guessable shared paths first", "00_orientation.ipynb", inject(SOL00, SQUAT_PATHS), 7.0),
    Case("deep_nesting", "a notebook of 100,000 nested lists", "00_orientation.ipynb",
         lambda: _deep(SOL00.read_bytes(), 100_000), 0.0, None, {"invalid"}),
    Case("deep_output", "an answer whose value is nested 100,000 deep", "00_orientation.ipynb",
         inject(SOL00, "_deep = []\nfor _ in range(100000):\n    _deep = [_deep]\nREQUIREMENTS_DEEP = _deep"), 7.0),
    Case("surrogates_in_messages", "a check message and a cell source with unpaired surrogates", "00_orientation.ipynb",
         mutate(SOL00, _surrogate_answer), 4.0, None, ANY),
    Case("surrogate_prints", "prints unpaired surrogates", "00_orientation.ipynb", inject(SOL00, SURROGATES), 7.0),
    Case("lingering_stopper", "a detached process from the replay that stops every process it sees", "00_orientation.ipynb",
         inject(SOL00, LINGER), None, None, ANY),
]
