"""Write environment.yml's pip section from requirements.txt, so the two paths pin the same.

Run by `make lock`; tests/test_environment.py fails if the files drift apart.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# The conda path. Its pip section pins exactly what requirements.txt pins
# (`make lock` writes both; tests/test_environment.py fails if they drift apart).
name: servelab
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def pins(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def main() -> None:
    lines = pins((ROOT / "requirements.txt").read_text())
    (ROOT / "environment.yml").write_text(HEADER + "".join(f"      - {line}\n" for line in lines))


if __name__ == "__main__":
    main()
