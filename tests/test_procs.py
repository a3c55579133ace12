"""autograder.procs: children forked from a preloaded server behave like ``python -m`` children."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from autograder import procs
from autograder.errors import CheckFailed, Timeout
from autograder.isolate import run_isolated, spawn, stop_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux-only")


@pytest.fixture
def with_server():
    server = procs.Server()
    assert server.ready
    procs._state["server"] = server
    yield server
    procs._state.pop("server", None)
    server.close()


def _square(x):
    import sys

    return {"square": x * x, "cwd": os.getcwd(), "forked": "autograder.procs" in sys.modules and "pytest" in sys.modules}


def test_run_isolated_goes_through_the_server_and_returns_the_same_data(with_server):
    got = run_isolated(_square, 7)
    assert got["square"] == 49 and got["forked"] is True
    assert with_server.poll() is None
    assert run_isolated(_square, 3)["square"] == 9  # the same server, again


def test_a_child_gets_its_own_session_cwd_log_and_exit_code(with_server, tmp_path):
    (tmp_path / "probe_mod.py").write_text(textwrap.dedent("""
        import os, sys
        print("argv", sys.argv[1:], "cwd", os.getcwd(), "sid", os.getsid(0) == os.getpid())
        print("to stderr", file=sys.stderr)
        sys.exit(int(sys.argv[1]))
    """))
    proc = spawn(["-m", "probe_mod", "5"], tmp_path, tmp_path / "log.txt")
    assert isinstance(proc, procs.Child)
    assert proc.wait(30) == 5
    log = (tmp_path / "log.txt").read_text()
    assert f"argv ['5'] cwd {tmp_path} sid True" in log and "to stderr" in log


def test_hangs_and_crashes_are_still_bounded_and_reported(with_server):
    with pytest.raises(Timeout):
        run_isolated(_sleep, 60, timeout=2)
    with pytest.raises(CheckFailed, match="exit code 9"):
        run_isolated(os._exit, 9)


def _sleep(seconds):
    import time

    time.sleep(seconds)


def test_stop_process_kills_a_forked_child(with_server, tmp_path):
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(600)\n")
    proc = spawn(["-m", "sleeper"], tmp_path, tmp_path / "log.txt")
    assert proc.poll() is None
    stop_process(proc, grace=1)
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


def test_without_a_server_spawning_falls_back_to_a_plain_process(monkeypatch, tmp_path):
    monkeypatch.delenv(procs.SOCKET_ENV, raising=False)
    (tmp_path / "plain.py").write_text("print('plain')\n")
    proc = spawn(["-m", "plain"], tmp_path, tmp_path / "log.txt")
    assert isinstance(proc, subprocess.Popen)
    assert proc.wait(30) == 0


def test_the_server_ends_with_the_process_that_forked_it(tmp_path):
    code = textwrap.dedent("""
        from autograder import procs
        server = procs.Server()
        print(server.pid, flush=True)
        import os
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    pid = int(out.stdout.split()[-1])
    import time

    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"fork server {pid} outlived its parent")


KERNEL_CODE = r'''
import os, time
from pathlib import Path
import autograder.checks  # starts the kernel's warm server
from autograder import procs
from autograder.isolate import run_isolated
server = procs._state["server"]
deadline = time.monotonic() + 120
while not os.path.exists(server.path) and time.monotonic() < deadline:
    time.sleep(0.1)
import tempfile
work = Path(tempfile.mkdtemp())
child = procs.spawn(["-m", "json.tool", "--help"], work, work / "log.txt")
child.wait(60)
print("SPAWNED", type(child).__name__, child.returncode, server.proc.pid, os.getpid(), server.folder)
import shutil
shutil.rmtree(work)
'''


def test_a_students_kernel_forks_check_children_from_its_warm_server():
    """Students get the fast path too: after the first check, children are forks of a preloaded server."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    outputs = []
    try:
        kc.execute_interactive(KERNEL_CODE, timeout=180,
                               output_hook=lambda msg: outputs.append(msg["content"].get("text", "")))
        kc.execute_interactive("procs._state['server'].close()", timeout=30)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    line = next((line for line in "".join(outputs).splitlines() if line.startswith("SPAWNED")), "")
    kind, code, server_pid, kernel_pid, folder = line.split()[1:]
    assert kind == "Child" and code == "0" and server_pid != kernel_pid, outputs
    assert not os.path.exists(folder), "the closed server left its folder"
