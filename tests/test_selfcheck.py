"""The student's one-liner: `check("q00_pinned_version")` runs only public tests and says what to fix."""
from __future__ import annotations

import json
import re

from autograder import REPO
from autograder.selfcheck import check, public_tests


def good(requirements_text, package):
    norm = lambda n: re.sub(r"[-_.]+", "-", n).strip().lower()  # noqa: E731
    for line in requirements_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            if norm(name.split("[", 1)[0]) == norm(package):
                return version.strip()
    return None


def case_sensitive(requirements_text, package):
    for line in requirements_text.splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name == package:
            return version.strip()
    return None


def unanswered(requirements_text, package):
    raise NotImplementedError()


def test_a_correct_answer_passes_with_a_friendly_message(capsys):
    assert check("q00_pinned_version", {"pinned_version": good}) is True
    out = capsys.readouterr().out
    assert out.startswith("✅ q00_pinned_version") and "hidden tests" in out


def test_a_wrong_answer_says_what_was_expected(capsys):
    assert check("q00_pinned_version", {"pinned_version": case_sensitive}) is False
    out = capsys.readouterr().out
    assert out.startswith("❌ q00_pinned_version") and "Traceback" not in out


def test_an_unanswered_or_unrun_exercise_says_so(capsys):
    assert check("q00_pinned_version", {"pinned_version": unanswered}) is False
    assert "not answered yet" in capsys.readouterr().out
    assert check("q00_pinned_version", {}) is False
    assert "Run your answer cell" in capsys.readouterr().out


def test_an_unknown_exercise_lists_the_real_ones(capsys):
    assert check("q00_pinned", {}) is False
    assert "q00_pinned_version" in capsys.readouterr().out


def test_self_checks_hold_only_public_tests_and_hidden_tests_reach_no_student_file():
    import subprocess

    tests = public_tests()
    assert len(tests) >= 30 and all("HIDDEN" not in src for src in tests.values())
    hidden, public = set(), set()
    for nb in sorted((REPO / "solutions").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            text = "".join(cell["source"])
            if "### BEGIN HIDDEN TESTS" in text:
                before, rest = text.split("### BEGIN HIDDEN TESTS", 1)
                inner, after = rest.split("### END HIDDEN TESTS", 1)
                hidden |= {line.strip() for line in inner.splitlines()}
                public |= {line.strip() for line in (before + after).splitlines()}
            else:
                public |= {line.strip() for line in text.splitlines()}
    # Lines that only the hidden tests have (a shared call like `check.check_rejects(...` is public).
    hidden = sorted(line for line in hidden - public if len(line) > 40)
    assert len(hidden) > 50
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    received = [p for p in tracked if not p.startswith(("solutions/", "tests/", "bench/", ".git"))]
    leaks = []
    for path in received:
        try:
            text = (REPO / path).read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if path.endswith(".ipynb"):
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        lines = {line.strip() for line in text.splitlines()}
        leaks += [(path, line) for line in hidden if line in lines]
    assert leaks == []
