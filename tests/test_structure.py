"""The grader's structure: no import cycles inside ``autograder`` (module- or function-level)."""
from __future__ import annotations

import ast

from autograder import REPO

PACKAGE = REPO / "autograder"


def _module(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name and target != "autograder":
                    graph[name].add(target)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_autograder_has_no_import_cycle():
    assert cycle(import_graph()) is None, " -> ".join(cycle(import_graph()))


def test_every_package_is_installed_by_a_plain_pip_install():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("autograder", "server_stub")
             for p in (REPO / top).rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml misses {sorted(found - listed)}"


def test_every_test_runs_under_a_timeout(pytestconfig):
    import tomllib

    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed"
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 0 < float(options["timeout"]) <= 3600


def test_every_exit_code_of_the_command_line_is_in_the_readme():
    import re

    code = (PACKAGE / "cli.py").read_text() + (PACKAGE / "demo.py").read_text()
    returned = {int(n) for n in re.findall(r"return (\d+)\b", code)} | {int(n) for n in re.findall(r"return 0 if ok else (\d+)", code)}
    readme = (REPO / "README.md").read_text()
    listed = {int(n) for n in re.findall(r"^\| (\d+) \| ", readme.split("Exit codes of `python -m autograder`")[1], re.M)}
    assert returned and returned <= listed, f"README's exit-code table misses {sorted(returned - listed)}"


def test_nbgrader_waits_for_a_cells_output_as_long_as_for_the_cell():
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    assert config.Execute.iopub_timeout >= config.Execute.timeout, "a busy machine would fail cells nbgrader's 4 s default cuts off"
