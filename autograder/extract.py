"""Turn a submitted notebook into a Python module, without running its kernel.

The grader uses this to serve a student's app as its own process built from the submitted
file (``python -m server_stub.runner --source``). The module holds every answer cell
(nbgrader ``solution: true``) in notebook order, preceded by the top-level imports of the
notebook's other code cells, which the answers rely on. Test cells, prints, demos and
IPython magics are left out.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path


class ExtractError(ValueError):
    """The notebook cannot be turned into a module; the message says which cell and why."""


def _nbgrader(cell: dict) -> dict:
    meta = cell.get("metadata")
    return meta.get("nbgrader", {}) if isinstance(meta, dict) and isinstance(meta.get("nbgrader"), dict) else {}


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    text = "".join(src) if isinstance(src, list) else str(src)
    from IPython.core.inputtransformer2 import TransformerManager

    # %magics and !shell lines become get_ipython() calls; drop those lines below.
    return TransformerManager().transform_cell(text)


def _imports(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    return [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]


def _without_ipython(text: str) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    keep = [
        node for node in tree.body
        if not (isinstance(node, ast.Expr) and "get_ipython()" in ast.unparse(node))
    ]
    return "\n\n".join(ast.unparse(node) for node in keep)


def extract_source(notebook: Path) -> str:
    """The module text for ``notebook``. Raises :class:`ExtractError`."""
    try:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ExtractError(f"{notebook}: not a readable notebook ({exc})") from None
    imports: list[str] = []
    answers: list[str] = []
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        meta = _nbgrader(cell)
        text = _source(cell)
        if meta.get("solution"):
            try:
                ast.parse(text)
            except SyntaxError as exc:
                raise ExtractError(f"answer cell {meta.get('grade_id', index)!r} has a syntax error: {exc}") from None
            answers.append(f"# --- answer cell {meta.get('grade_id', index)}\n{_without_ipython(text)}")
        elif not meta.get("grade"):
            imports.extend(i for i in _imports(text) if i not in imports)
    if not answers:
        raise ExtractError(f"{notebook}: no answer cells (nbgrader solution cells) found")
    header = f"# Extracted from {Path(notebook).name} by autograder.extract; do not edit.\n"
    return header + "\n".join(imports) + "\n\n\n" + "\n\n\n".join(answers) + "\n"


def extract_to(notebook: Path, dest: Path) -> Path:
    """Write the module for ``notebook`` to ``dest`` and return ``dest``."""
    dest = Path(dest)
    dest.write_text(extract_source(notebook))
    return dest
