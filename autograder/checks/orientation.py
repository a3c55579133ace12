"""Checks for notebook 00, orientation: the environment check and its exercises.

Two kinds of thing live here:

- the environment check a learner runs first (:func:`environment_report`, :func:`check_offline`):
  are the installed packages the pinned ones, and does the course work without a network?
- the checks for the graded exercises (:func:`check_pinned_version`,
  :func:`check_version_mismatches`, :func:`check_tunnel_command`). Each runs the learner's
  function in a child process (:func:`autograder.isolate.run_isolated`) and compares the plain
  JSON it returns here, in the judging process.
"""
from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered
from autograder.isolate import describe_exception, run_isolated

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
PYTHON = (3, 11)


# --- the environment check -------------------------------------------------------------

def normalize(name: str) -> str:
    """A distribution name as pip compares it (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).strip().lower()


def read_pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` for every ``name==version`` line of a requirements file.

    Comments, blank lines, pip options (lines starting with ``-``), extras (``moto[server]``)
    and environment markers (after ``;``) are handled; requirements that are not exact
    pins are left out.
    """
    pins = {}
    for line in text.splitlines():
        line = re.split(r"(^|\s)#", line, maxsplit=1)[0].split(";", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([^=\s]+)", line)
        if match:
            pins[normalize(match.group(1))] = match.group(3)
    return pins


def installed_versions(names) -> dict[str, str | None]:
    """``{name: installed version or None}``, read from the installed packages' metadata."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def environment_report(requirements: str | Path | None = None) -> dict:
    """Compare the installed packages with the pins in ``requirements`` (the repo's by default).

    Returns ``{"python", "python_ok", "requirements", "checked", "mismatches"}``, where
    ``mismatches`` is a sorted list of ``{"package", "pinned", "installed"}`` (``installed``
    is ``None`` for a package that is not installed). Reads files and package metadata only.
    """
    from autograder import REPO

    path = Path(requirements) if requirements else REPO / "requirements.txt"
    pins = read_pins(path.read_text())
    installed = installed_versions(pins)
    mismatches = [
        {"package": name, "pinned": pins[name], "installed": installed[name]}
        for name in sorted(pins)
        if installed[name] != pins[name]
    ]
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python_ok": tuple(sys.version_info[:2]) == PYTHON,
        "requirements": str(path),
        "checked": len(pins),
        "mismatches": mismatches,
    }


def print_report(report: dict) -> None:
    """Print an :func:`environment_report` for a person."""
    want = ".".join(map(str, PYTHON))
    print(f"Python {report['python']} ({'ok' if report['python_ok'] else f'expected {want}.x'})")
    print(f"{report['checked']} pinned packages checked against {report['requirements']}")
    if not report["mismatches"]:
        print("every installed version matches its pin")
    for m in report["mismatches"]:
        have = m["installed"] or "not installed"
        print(f"  MISMATCH {m['package']}: pinned {m['pinned']}, installed {have}")
    if report["mismatches"] or not report["python_ok"]:
        print("Fix the environment before you go on: `make setup` (or pip install -r requirements.txt in the venv).")


def is_loopback(host) -> bool:
    """True for an address that never leaves this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _offline_probe(workdir: str) -> dict:
    """Child side of :func:`check_offline`: forbid the network, then load data and train.

    An audit hook refuses every connection, datagram and name lookup that is not loopback,
    before the operating system sees it, and records the attempt. The hook is tested first
    with a synthetic audit event, so no real socket is ever aimed outside.
    """
    import importlib.resources
    import sys

    attempts = []

    def guard(event, args):
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            address = args[1] if len(args) > 1 else None
            if isinstance(address, tuple) and address and not is_loopback(address[0]):
                attempts.append(f"{event} {address[0]}")
                raise PermissionError(f"offline guard: {event} to {address[0]} refused")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
            host = args[0] if args else None
            if host is not None and not is_loopback(host):
                attempts.append(f"{event} {host}")
                raise PermissionError(f"offline guard: looking up {host} refused")

    sys.addaudithook(guard)
    try:
        sys.audit("socket.connect", None, ("192.0.2.1", 80))  # TEST-NET-1: never routed
        guard_works = False
    except PermissionError:
        guard_works = True
    attempts.clear()

    from sklearn.datasets import load_iris

    from server_stub.model import save_model, train

    iris = load_iris()
    data_file = importlib.resources.files("sklearn.datasets.data") / iris.filename
    model, classes = train()
    model_dir = save_model(Path(workdir) / "model")
    return {
        "guard_works": guard_works,
        "iris_file": str(data_file),
        "iris_file_exists": data_file.is_file(),
        "iris_rows": int(iris.data.shape[0]),
        "classes": classes,
        "train_accuracy": float(model.score(iris.data, iris.target)),
        "model_files": sorted(p.name for p in model_dir.iterdir()),
        "blocked": attempts,
    }


def check_offline(timeout: float = 30.0) -> dict:
    """Load the iris data and train the course model in a process that cannot reach any network.

    Returns what the probe saw; raises :class:`CheckFailed` if anything tried to leave the
    machine or the data did not come from a local file.
    """
    import shutil

    workdir = tempfile.mkdtemp(prefix="servelab-offline-")
    try:
        report = run_isolated(_offline_probe, workdir, timeout=timeout, what="the offline check")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "raised" in report:
        r = report["raised"]
        raise CheckFailed(f"loading iris and training the model failed without a network: {r['type']}: {r['message']}")
    if not report["guard_works"]:
        raise CheckFailed("the offline guard did not refuse a test connection; the check cannot vouch for anything.")
    if report["blocked"]:
        raise CheckFailed(f"something tried to use the network: {report['blocked']}")
    if not report["iris_file_exists"]:
        raise CheckFailed(f"the iris data should come from a file inside scikit-learn; {report['iris_file']} is missing.")
    return report


# --- running the learner's function ------------------------------------------------------

def _observe(fn, calls: list) -> list:
    """Child side: call ``fn(*args, **kwargs)`` for each ``[args, kwargs]``; describe each outcome."""
    out = []
    for args, kwargs in calls:
        before = json.dumps([args, kwargs], sort_keys=True)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the judge
            out.append({"raised": describe_exception(exc)})
            continue
        obs = {"type": type(value).__name__, "mutated": json.dumps([args, kwargs], sort_keys=True) != before}
        try:
            json.dumps(value, allow_nan=False)
            obs["value"] = value
        except (TypeError, ValueError):
            obs["repr"] = repr(value)[:300]
        out.append(obs)
    return out


def _call_each(fn, name: str, calls: list) -> list:
    observations = run_isolated(_observe, fn, calls, what=f"your {name}")
    for obs in observations:
        if "raised" in obs and obs["raised"]["type"] == "NotImplementedError":
            raise NotAnswered(f"{name} raised NotImplementedError: write it, then run its cell again.")
    return observations


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _got(obs: dict) -> str:
    if "raised" in obs:
        return f"raised {obs['raised']['type']}: {obs['raised']['message']}"
    if "repr" in obs:
        return f"returned {obs['repr']} (a {obs['type']}, not plain data)"
    return f"returned {obs['value']!r}"


# --- exercise 1: pinned_version ----------------------------------------------------------

def check_pinned_version(fn, cases: list) -> None:
    """``cases``: ``(requirements_text, package, expected version or None)``."""
    observations = _call_each(fn, "pinned_version", [[[text, package], {}] for text, package, _ in cases])
    for (text, package, expected), obs in zip(cases, observations):
        call = f"pinned_version({_short(text)}, {package!r})"
        ok = "value" in obs and obs["type"] in ("str", "NoneType") and obs["value"] == expected
        if not ok:
            raise CheckFailed(f"{call} should return {expected!r}; it {_got(obs)}.")


# --- exercise 2: version_mismatches ------------------------------------------------------

def check_version_mismatches(fn, cases: list) -> None:
    """``cases``: ``(pins, installed, expected list)``; the inputs must come back unchanged."""
    observations = _call_each(fn, "version_mismatches", [[[pins, installed], {}] for pins, installed, _ in cases])
    for (pins, installed, expected), obs in zip(cases, observations):
        call = f"version_mismatches({_short(pins, 120)}, {_short(installed, 120)})"
        if "value" not in obs:
            raise CheckFailed(f"{call} should return a list; it {_got(obs)}.")
        if obs["type"] != "list":
            raise CheckFailed(f"{call} should return a list; it returned a {obs['type']}: {obs['value']!r}.")
        if obs["value"] != expected:
            raise CheckFailed(f"{call} should return {expected!r}; it returned {obs['value']!r}.")
        if obs["mutated"]:
            raise CheckFailed(f"{call} changed the dicts it was given; leave its inputs as they were.")


# --- exercise 3: tunnel_command ----------------------------------------------------------

def tunnel_problem(command, key_file: str, host: str, port: int = 8888, user: str = "ubuntu") -> str | None:
    """Why ``command`` is not the SSH tunnel the exercise asks for, or ``None`` if it is."""
    if not isinstance(command, str):
        return f"it should be a string; it is a {type(command).__name__}"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"the shell cannot split it into words ({exc})"
    if not argv or argv[0] != "ssh":
        return "it should start with ssh"
    keys, forwards, no_command = [], [], False
    words = iter(enumerate(argv[1:], 1))
    for i, word in words:
        if word in ("-i", "-L"):
            value = argv[i + 1] if i + 1 < len(argv) else None
            next(words, None)
            (keys if word == "-i" else forwards).append(value)
        elif word.startswith(("-i", "-L")) and len(word) > 2:
            (keys if word[1] == "i" else forwards).append(word[2:])
        elif re.fullmatch(r"-[46ACTfgqv]*N[46ACTfgqv]*", word):
            no_command = True
    if keys != [key_file]:
        return (f"it should pass the key file once, as -i {shlex.quote(key_file)}; the shell reads the key file(s) "
                f"as {keys!r}" + (" (quote a path that has spaces: shlex.quote)" if " " in key_file else ""))
    if len(forwards) != 1 or forwards[0] is None:
        return f"it should forward exactly one port with -L; it has {len(forwards)}"
    parts = forwards[0].split(":")
    loop = {"127.0.0.1", "localhost"}
    if len(parts) == 4:
        bind, parts = parts[0], parts[1:]
        if bind not in loop:
            return (f"-L {forwards[0]} binds the local end to {bind or 'every address'!r}, so anyone on your network "
                    "could reach JupyterLab; leave the bind address out, or use 127.0.0.1")
    if len(parts) != 3:
        return f"-L {forwards[0]} should have the form LOCAL_PORT:127.0.0.1:REMOTE_PORT"
    local, target, remote = parts
    if target not in loop:
        return (f"-L {forwards[0]} forwards to {target!r}; JupyterLab on the instance listens on 127.0.0.1 only, "
                "so forward to 127.0.0.1")
    if local != str(port) or remote != str(port):
        return f"-L {forwards[0]} should forward local port {port} to port {port} on the instance"
    if not no_command:
        return "it should include -N (forward ports only, run no remote command)"
    if argv[-1] != f"{user}@{host}":
        return f"it should end with the login {user}@{host}; it ends with {argv[-1]!r}"
    return None


def check_tunnel_command(fn, cases: list) -> None:
    """``cases``: keyword arguments for ``tunnel_command`` (``key_file``, ``host``, optional ``port``, ``user``)."""
    observations = _call_each(fn, "tunnel_command", [[[], dict(kw)] for kw in cases])
    for kw, obs in zip(cases, observations):
        call = "tunnel_command(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"
        if "value" not in obs:
            raise CheckFailed(f"{call} should return a command string; it {_got(obs)}.")
        problem = tunnel_problem(obs["value"], **kw)
        if problem:
            raise CheckFailed(f"{call} returned {obs['value']!r}: {problem}.")
