"""The instructor CI workflow runs the Makefile's own targets and keeps what they produce."""
from __future__ import annotations

import inspect
import re
import shlex
import yaml

from autograder import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
ARTIFACTS = {"build/executed", "build/grades/report", "build/browser"}


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps() -> list[dict]:
    return [step for job in workflow()["jobs"].values() for step in job["steps"]]


def makefile_targets() -> set[str]:
    """Every explicit target of the Makefile (not special ones like .PHONY, nor $(VAR) targets)."""
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_][A-Za-z0-9_.-]*(?:\s+[A-Za-z0-9_][A-Za-z0-9_.-]*)*)\s*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def make_goals(script: str) -> list[str]:
    """The goals of every ``make`` command in a shell script: ``sudo make browser`` gives ``browser``."""
    goals = []
    for line in script.splitlines():
        line = line.split("#", 1)[0]
        for command in re.split(r"&&|\|\||[;|]", line):
            words = shlex.split(command)
            if "make" not in words:
                continue
            for word in words[words.index("make") + 1:]:
                if not word.startswith("-") and "=" not in word:
                    goals.append(word)
    return goals


def workflow_goals() -> list[str]:
    return [goal for step in steps() if "run" in step for goal in make_goals(step["run"])]


def uploads() -> dict[str, dict]:
    """``{uploaded path without trailing /: its step}`` for every actions/upload-artifact step."""
    found = {}
    for step in steps():
        if step.get("uses", "").startswith("actions/upload-artifact@"):
            for path in str(step["with"]["path"]).split():
                found[path.rstrip("/")] = step
    return found


def test_the_makefile_parser_sees_the_documented_targets():
    assert {"setup", "browser", "demo", "test", "lab", "release", "check", "grade", "lock", "clean"} <= makefile_targets()
    assert make_goals("sudo make browser && make -j2 test OUT=x  # make never") == ["browser", "test"]


def test_every_make_goal_of_the_workflow_is_a_makefile_target():
    goals = workflow_goals()
    assert goals, "the workflow runs no make target"
    assert set(goals) <= makefile_targets(), set(goals) - makefile_targets()


def test_the_workflow_installs_chromium_then_runs_make_test_and_make_demo():
    goals = workflow_goals()
    assert "test" in goals and "demo" in goals
    assert goals.index("browser") < goals.index("test")
    assert not any("playwright install" in step.get("run", "") for step in steps()), "browsers come from apt only"


def test_the_workflow_uses_ubuntu_and_python_311():
    jobs = workflow()["jobs"].values()
    assert all(job["runs-on"] == "ubuntu-latest" for job in jobs)
    setup = [s for s in steps() if s.get("uses", "").startswith("actions/setup-python@")]
    assert [str(s["with"]["python-version"]) for s in setup] == ["3.11"]


def test_ci_entry_point_runs_make_test():
    assert "test" in make_goals((REPO / ".ci" / "run").read_text())


def test_the_artifacts_are_uploaded_even_when_a_step_fails():
    found = uploads()
    assert set(found) == ARTIFACTS
    assert all(step.get("if") == "always()" for step in found.values())


def test_the_uploaded_paths_are_what_the_make_targets_write():
    from autograder import demo
    from autograder.grade import report

    recipes = (REPO / "Makefile").read_text()
    # make demo -> python -m autograder demo: papermill into build/executed, grades (and report/) into build/grades
    assert re.search(r"^demo:.*\n\t.*-m autograder demo$", recipes, re.M)
    assert inspect.signature(demo.execute_all).parameters["out_dir"].default == REPO / "build" / "executed"
    assert inspect.signature(demo.grade_invariants).parameters["out"].default == REPO / "build" / "grades"
    assert 'out / "report"' in inspect.getsource(report.write_outputs)
    # make test -> pytest, whose browser test saves its screenshots in build/browser
    assert re.search(r"^test:.*\n\t.*-m pytest$", recipes, re.M)
    assert 'SCREENSHOTS = REPO / "build" / "browser"' in (REPO / "tests" / "test_browser.py").read_text()
