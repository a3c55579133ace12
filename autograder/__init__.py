"""servelab's autograder: the live-server harness, the checks and the grading CLI.

Notebooks call the checks (``autograder.checks.api``, ``autograder.checks.handler``);
instructors use ``python -m autograder``.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
