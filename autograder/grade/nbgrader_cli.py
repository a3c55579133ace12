"""``python -m autograder.grade.nbgrader_cli ARGS``: nbgrader's command line, started with the
grading package's import settings (see :mod:`autograder.grade`)."""
from nbgrader.apps.nbgraderapp import main

if __name__ == "__main__":
    main()
