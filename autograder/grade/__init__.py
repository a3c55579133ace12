"""The grading engine: collect -> sandbox -> run -> judge -> store -> report (docs/grading.md).

Every grading process imports this package first. jsonschema, which nbformat and nbgrader
load, imports ``rfc3987_syntax`` when it is installed (jupyter-events pulls it in), and that
module builds an Earley parser for the IRI grammar at import: 2.2 s of every grading
process's start on a 2-core machine, most of nbgrader's import. No notebook schema checks an
IRI format, so grading processes go without it and jsonschema skips that one format check.
"""
import sys

sys.modules.setdefault("rfc3987_syntax", None)
