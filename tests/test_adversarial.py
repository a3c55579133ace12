"""The hostile corpus (tests/adversarial/corpus.py) graded in one class with honest students.

Each hostile submission must be graded with a reason, the honest students exactly as without
them, no process, cgroup or course folder may be left behind, and the gradebook and the
grader's own files must be intact.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import sqlite3
from pathlib import Path

import psutil
import pytest

from autograder import REPO
from autograder.grade.sandbox import UID_BASE, Limits, bwrap_works

from adversarial.corpus import CASES, SOL00, SOL05

pytestmark = pytest.mark.slow

LIMITS = Limits(memory_bytes=1536 * 2**20, notebook_seconds=150, submission_seconds=420, cell_seconds=60)
HONEST = {"honest_a": [SOL00, SOL05], "honest_b": [SOL00]}


def _tree_hash(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for p in sorted(folder.rglob("*.py")):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _temp_entries() -> set[str]:
    """Everything directly in the shared temporary folders."""
    return {str(p) for d in ("/tmp", "/var/tmp", "/dev/shm") if Path(d).is_dir() for p in Path(d).iterdir()}


def _canary(path: Path):
    try:
        st = path.lstat()
        return (path.read_bytes(), st.st_mode, st.st_uid)
    except OSError:
        return None


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN}


def _cgroups() -> set[Path]:
    root = Path("/sys/fs/cgroup")
    return {*root.glob("*/servelab-*"), *root.glob("*/servelab/servelab-*"), *root.glob("servelab/servelab-*")}


def _sandbox_processes() -> list[str]:
    found = []
    for p in psutil.process_iter(["uids", "cmdline"]):
        try:
            uid = p.info["uids"].real if p.info["uids"] else 0
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, AttributeError):
            continue
        if uid >= UID_BASE or "autograder.grade.inside" in cmd or "bwrap" in cmd or cmd.startswith("sleep 3600"):
            found.append(f"{p.pid} uid={uid} {cmd[:120]}")
    return found


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    from autograder.grade.classgrade import grade_class, stored_results

    base = tmp_path_factory.mktemp("adversarial")
    submitted = base / "class" / "submitted"
    for student, sources in HONEST.items():
        for src in sources:
            dest = submitted / student / "servelab" / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
    for case in CASES:
        dest = submitted / case.name / "servelab" / case.notebook
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(case.build())
    canary = Path("/run/servelab-canary")
    if os.geteuid() == 0:
        canary.write_text("canary\n")
        os.chmod(canary, 0o600)
    before = {"code": _tree_hash(REPO / "autograder", REPO / "server_stub"), "listening": _listening(),
              "temp": _temp_entries(), "cgroups": _cgroups(), "canary": _canary(canary)}
    out = base / "out"
    grade_class(base / "class", out, limits=LIMITS, progress=False)
    results = {r["student"]: r for r in stored_results(out)}
    return results, out, before


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_hostile_submission_is_graded_with_a_reason(hostile_run, case):
    results, _, _ = hostile_run
    r = results[case.name]
    nb = next(n for n in r["notebooks"] if n["notebook"] == Path(case.notebook).stem)
    why = (nb["status"], nb.get("reason", "")[:300], [(q["id"], q["score"], q.get("kernel_score"), q["status"], q["message"][:160]) for q in nb["questions"]])
    assert nb["status"] in case.status, why
    if nb["status"] != "ok":
        assert nb["reason"].strip(), why
    if case.score is not None:
        assert nb["score"] == case.score, why
    for q in nb["questions"]:
        if q["score"] < q["max_score"]:
            assert q["message"].strip(), (q, why)
            assert "Traceback (most recent call last)" not in q["message"], q
    if case.tampering is True:
        assert nb.get("suspected_tampering"), why
    elif case.tampering is False:
        assert not nb.get("suspected_tampering"), why


def test_honest_students_are_graded_as_without_the_attackers(hostile_run):
    results, _, _ = hostile_run
    for student, sources in HONEST.items():
        for src in sources:
            nb = next(n for n in results[student]["notebooks"] if n["notebook"] == src.stem)
            assert nb["status"] == "ok", (student, nb.get("reason"))
            assert nb["score"] == nb["max_score"] > 0, (student, [(q["id"], q["message"][:200]) for q in nb["questions"]])
            assert not nb.get("suspected_tampering")


def test_nothing_is_left_behind(hostile_run):
    _, _, before = hostile_run
    assert _sandbox_processes() == []
    assert _listening() <= before["listening"]
    ours = {str(p) for p in Path(tempfile.gettempdir()).glob(f"servelab-grader-{os.getpid()}-*")}  # the course model
    assert _temp_entries() - ours <= before["temp"]
    assert _cgroups() <= before["cgroups"]


def test_the_gradebook_and_the_grader_are_intact(hostile_run):
    from autograder.grade.classgrade import gradebook_scores

    results, out, before = hostile_run
    db = out / "gradebook.db"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM grade WHERE manual_score IS NOT NULL").fetchone()[0] == 0
        assert {row[0] for row in con.execute("SELECT student FROM servelab_grading")} == set(results)
    scores = gradebook_scores(db)
    for student, r in results.items():
        assert sum(v for (s, _, _), v in scores.items() if s == student) == pytest.approx(r["score"]), student
    assert _tree_hash(REPO / "autograder", REPO / "server_stub") == before["code"]
    assert _canary(Path("/run/servelab-canary")) == before["canary"]
    assert Path("/etc/passwd").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not bwrap_works(), reason="needs Linux with bubblewrap usable (root or user namespaces)")
def test_secrets_and_the_network_were_really_out_of_reach(hostile_run):
    """The attacks that would lower their own score on success kept full marks, in the kernel and outside."""
    results, _, _ = hostile_run
    for name in ("read_secrets", "write_grader", "network", "planted_in_00", "squatted_paths"):
        nb = next(n for n in results[name]["notebooks"] if n["notebook"] == "00_orientation")
        assert nb["score"] == 7.0 and all(q["kernel_score"] == q["max_score"] for q in nb["questions"]), (name, nb["questions"])
