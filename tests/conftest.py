"""Shared fixtures: the reference app built from the solution notebook, and graded classes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from autograder import REPO
from autograder.extract import extract_to

SOLUTIONS = REPO / "solutions"


def load_solution_module(notebook: str, tmp_dir: Path):
    """Import the answer cells of ``solutions/<notebook>`` as a module."""
    path = extract_to(SOLUTIONS / notebook, tmp_dir / (Path(notebook).stem.replace("-", "_") + ".py"))
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def api_solution(tmp_path_factory):
    """The answer cells of notebook 05 (``create_app``), as an importable module."""
    return load_solution_module("05_flask_api.ipynb", tmp_path_factory.mktemp("sol05"))


@pytest.fixture(scope="session")
def handler_solution(tmp_path_factory):
    """The answer cells of notebook 04 (``ModelHandler``), as an importable module."""
    return load_solution_module("04_model_handler.ipynb", tmp_path_factory.mktemp("sol04"))
