"""The conda path and the pip path pin the same packages, and every direct dependency is pinned."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from autograder import REPO
from tools.sync_env import pins


def requirement_pins() -> list[str]:
    return pins((REPO / "requirements.txt").read_text())


def environment_pins() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    pip = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip section"
    return pip[0]


def name(pin: str) -> str:
    return re.split(r"[=<>\[ ]", pin, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_pins_exactly_what_requirements_txt_pins():
    assert environment_pins() == requirement_pins()


def test_every_requirement_is_pinned_to_one_version():
    loose = [p for p in requirement_pins() if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", p)]
    assert loose == []


def test_conda_provides_only_python_311_and_pip():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert conda == ["python=3.11", "pip"]


def test_every_direct_dependency_is_in_the_lock():
    direct = {name(line) for line in pins((REPO / "requirements.in").read_text())}
    locked = {name(p) for p in requirement_pins()}
    assert direct - locked == set()


def test_installed_versions_match_the_pins():
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for pin in requirement_pins():
        pkg, want = pin.split("==")
        try:
            have = version(pkg)
        except PackageNotFoundError:
            have = None
        if have != want:
            wrong.append(f"{pkg}: pinned {want}, installed {have}")
    assert wrong == []


def test_the_kernel_runs_this_environment():
    import json
    import sys

    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    argv = json.loads(spec.read_text())["argv"]
    assert Path(argv[0]).resolve() == Path(sys.executable).resolve()
