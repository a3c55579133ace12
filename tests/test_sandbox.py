"""autograder.grade.sandbox and the pipeline's parsing: cgroups v1/v2, leftovers, uids, frames, hostile bytes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.grade import sandbox
from autograder.grade.pipeline import _kernel_result, _verdict, clean, merge_outside
from autograder.grade.sandbox import Cgroup, Limits, full, planned_isolation, read_frames, remove_stale


def _fake_v2(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_cgroup_v2_is_used_where_v1_is_not_mounted(tmp_path):
    root = _fake_v2(tmp_path)
    group = Cgroup(Limits(memory_bytes=123456789, processes=77), root=root)
    assert group.applied == {"pids": "cgroup v2", "memory": "cgroup v2", "cpu": "cgroup v2"}
    (leaf,) = group.dirs
    assert leaf.parent == root / "servelab" and leaf.name.startswith(f"servelab-{os.getpid()}-")
    assert (leaf / "memory.max").read_text() == "123456789"
    assert (leaf / "pids.max").read_text() == "77"
    assert (leaf / "cpu.max").read_text() == "100000 100000"
    assert "+memory" in (root / "servelab" / "cgroup.subtree_control").read_text()


def test_cgroup_v1_controllers_are_used_where_mounted(tmp_path):
    root = tmp_path / "cgroup"
    for controller in ("pids", "memory", "cpu"):
        (root / controller).mkdir(parents=True)
    group = Cgroup(Limits(processes=9), root=root)
    assert group.applied == {"pids": "cgroup v1", "memory": "cgroup v1", "cpu": "cgroup v1"}
    assert (root / "pids" / group.name / "pids.max").read_text() == "9"


def test_a_killed_graders_cgroups_are_removed_by_the_next_run(tmp_path):
    root = _fake_v2(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / "servelab" / f"servelab-{dead.pid}-0123456789"
    live = root / "servelab" / f"servelab-{os.getpid()}-0123456789"
    stale.mkdir(parents=True)
    live.mkdir()
    remove_stale(root)
    assert not stale.exists() and live.exists()


def test_isolation_is_full_only_with_every_protection():
    record = planned_isolation({"memory": "cgroup v1", "pids": "cgroup v1", "cpu": "cgroup v2"}, True, 1_800_000_001)
    assert full(record)
    assert not full({**record, "memory": "rlimit (address space)"})
    assert not full({**record, "pid": "not applied (pid namespace was set up)"})
    assert not full(planned_isolation({}, False, None))


@pytest.mark.skipif(os.geteuid() != 0, reason="uid reservations are made as root")
def test_reserved_uids_are_distinct_and_locked():
    a, b = sandbox.Uid(), sandbox.Uid()
    try:
        assert a.uid != b.uid and a.uid >= sandbox.UID_BASE
        assert (sandbox.UID_LOCKS.stat().st_mode & 0o777) == 0o700
    finally:
        a.close()
        b.close()


def test_frames_are_read_defensively():
    good = b"isolation 2\n{}verdict 4\nnull"
    assert read_frames(good) == {"isolation": b"{}", "verdict": b"null"}
    assert read_frames(b"verdict 999999\n{}") == {}  # a length past the end
    assert read_frames(b"no frame here") == {}
    assert read_frames(b"v\xff 2\n{}") == {}
    assert read_frames(b"kernel 2\n{}kernel 2\n[]") == {"kernel": b"{}"}  # the first of a kind counts


def test_hostile_payloads_become_reasons_not_crashes():
    expected = {"q1": 3.0, "q2": 2.0}
    deep = b"[" * 100_000 + b"]" * 100_000
    assert "error" in _verdict(sandbox._json(deep), list(expected), "why")
    verdict = _verdict({"questions": {"q1": {"status": "passed", "message": "\ud800 x"},
                                      "q2": {"status": "pwned", "message": 5}}}, list(expected), "why")
    assert verdict["questions"]["q2"]["status"] == "error"
    kernel = _kernel_result("nb", {"questions": [{"id": "q1", "score": 1e9, "status": "passed", "message": "\udfff"},
                                                 {"id": "zz", "score": 5}], "autograded": "{\ud800"}, expected, "why")
    assert [q["score"] for q in kernel["questions"]] == [3.0]  # clamped to the question's points; unknown ids dropped
    merged = merge_outside(kernel, verdict, expected)
    text = json.dumps(merged, ensure_ascii=False)
    text.encode("utf-8")  # no unpaired surrogate survives
    assert merged["score"] == 3.0


def test_clean_escapes_surrogates_and_control_characters():
    assert clean("a\ud800b\x00c") == "a\\ud800bc"
    clean("x" * 10_000).encode("utf-8")
    assert len(clean("x" * 10_000)) == 1000


# --- one real sandbox: what student code sees from the inside ------------------------------------

PROBE = r'''
import os as _os, socket as _s
_marker = "servelab-probe-" + str(_os.getpid())
for _d in ("/tmp", "/dev/shm", _os.path.expanduser("~")):
    open(_os.path.join(_d, _marker), "w").close()
_seen = {
    "solutions": sorted(_os.listdir(%(solutions)r)),
    "git": _os.path.isdir(%(git)r) and sorted(_os.listdir(%(git)r)),
    "pid1": open("/proc/1/cmdline").read(),
    "others": sorted(int(_p) for _p in _os.listdir("/proc") if _p.isdigit()),
    "uid": _os.getuid(),
    "writable": [_d for _d in (%(repo)r, %(autograder)r) if _os.access(_d, _os.W_OK)],
    "interfaces": sorted(_n for _, _n in _s.if_nameindex()),
}
if _seen["solutions"] or _seen["git"] or "autograder.grade.inside" not in _seen["pid1"] or len(_seen["others"]) > 40 or _seen["uid"] == 0 or _seen["interfaces"] != ["lo"] or _seen["writable"]:
    raise SystemExit("the sandbox let me see: %%r" %% (_seen,))
'''


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """The notebook-00 solution with a probe in its first answer cell, graded once in a real sandbox."""
    from autograder import REPO
    from autograder.grade.classgrade import expected_questions, template_gradebook
    from autograder.grade.judge import trusted_tests
    from autograder.grade.pipeline import grade_submission

    if not sandbox.bwrap_works():
        pytest.skip("needs Linux with bubblewrap usable (root or user namespaces)")
    source = REPO / "solutions" / "00_orientation.ipynb"
    nb = json.loads(source.read_text())
    cell = next(c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution"))
    code = PROBE % {"solutions": str(REPO / "solutions"), "git": str(REPO / ".git"), "repo": str(REPO),
                    "autograder": str(REPO / "autograder")}
    cell["source"] = code + "\n" + "".join(cell["source"])
    before = {str(p) for d in ("/tmp", "/dev/shm") for p in Path(d).iterdir()}
    result = grade_submission("probe", {source.stem: json.dumps(nb).encode()}, template_gradebook([source]),
                              expected_questions([source]), Limits().to_dict(), {source.stem: trusted_tests(source)})
    after = {str(p) for d in ("/tmp", "/dev/shm") for p in Path(d).iterdir()}
    return result["notebooks"][0], after - before


def test_student_code_sees_no_grader_folder_no_network_no_other_process_and_is_not_root(probed):
    nb, _ = probed
    # The probe raises (and its answer scores 0) if it sees anything it should not.
    assert nb["score"] == nb["max_score"] == 7.0, [(q["id"], q["message"][:300]) for q in nb["questions"]]
    assert full(nb["isolation"]) or os.geteuid() != 0, nb["isolation"]


def test_student_files_in_tmp_and_dev_shm_vanish_with_the_sandbox(probed):
    _, new = probed
    assert not [p for p in new if "servelab-probe-" in p], new


def test_a_repository_under_tmp_is_bound_on_top_of_the_private_tmp(monkeypatch):
    """A clean clone in /tmp (as CI's checks make) must stay visible: the private /tmp is mounted before the binds."""
    monkeypatch.setattr(sandbox, "REPO", Path("/tmp/clone"))
    args = sandbox._mounts([], Path("/tmp/model"), Limits())
    tmpfs = args.index("/tmp")
    bind = next(i for i in range(len(args) - 2) if args[i:i + 3] == ["--ro-bind", "/tmp/clone", "/tmp/clone"])
    assert args[tmpfs - 1] == "--tmpfs" and tmpfs < bind
    assert ["--perms", "0755", "--dir", "/tmp"] not in [args[i:i + 4] for i in range(len(args) - 3)]


def test_a_folder_inside_a_hidden_one_is_not_hidden_twice(tmp_path, monkeypatch):
    """make demo grades a class in build/ into build/grades: both lie in the hidden build/ (a second tmpfs there fails)."""
    repo = tmp_path / "repo"
    for d in ("build/demo-class", "build/grades", "solutions"):
        (repo / d).mkdir(parents=True)
    monkeypatch.setattr(sandbox, "REPO", repo)
    args = sandbox._mounts([str(repo / "build" / "demo-class"), str(repo / "build" / "grades")], tmp_path, Limits())
    hidden = [args[i + 1] for i, a in enumerate(args) if a == "--remount-ro" and args[i - 2] == "--tmpfs"]
    assert hidden == [args[i + 1] for i, a in enumerate(args) if a == "--remount-ro"]
    assert sorted(hidden) == [str(repo / "build"), str(repo / "solutions")]


def test_the_sandbox_imports_the_checkout_it_was_started_from():
    # A clean clone graded with a venv whose editable install points elsewhere: without this,
    # every sandbox failed "No module named autograder" before grading anything.
    assert sandbox._environment()["PYTHONPATH"] == str(sandbox.REPO)
    assert sandbox._environment()["SERVELAB_RESULT_FD"] == "3"


def test_the_address_space_fallback_leaves_room_for_reserved_memory(monkeypatch):
    # RLIMIT_AS counts reserved address space; at memory_bytes it failed a correct notebook 05 (non-root, 1.5 GiB).
    calls = {}
    monkeypatch.setattr(sandbox.resource, "setrlimit", lambda which, value: calls.__setitem__(which, value))
    sandbox.rlimits(Limits(memory_bytes=2**30).to_dict(), {})
    assert calls[sandbox.resource.RLIMIT_AS] == (sandbox.AS_FACTOR * 2**30,) * 2 and sandbox.AS_FACTOR >= 4
    calls.clear()
    sandbox.rlimits(Limits(memory_bytes=2**30).to_dict(), {"memory": "cgroup v1", "pids": "cgroup v1"})
    assert sandbox.resource.RLIMIT_AS not in calls and calls[sandbox.resource.RLIMIT_CPU] == (1800, 1800)
