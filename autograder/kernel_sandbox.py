"""The student's kernel, as the submission's unprivileged user: ``python -m autograder.kernel_sandbox -f CONN``.

nbgrader must read the gradebook (which holds the hidden tests) and write the results, so it
runs as the grader; the kernel it starts runs the student's code and must do neither. The
class grader registers this module as the kernel ``servelab-sandbox`` and points nbgrader's
``Execute.kernel_name`` at it. Started as root by nbgrader, it:

1. gives the notebook's folder (the kernel's working directory) to the user named by
   ``SERVELAB_SANDBOX_USER=uid:gid`` and lets that user pass through (not list) its parents,
   up to the throw-away course folder;
2. copies the connection file where that user can read it;
3. drops to that user for good and becomes ``ipykernel``.

The student's code then cannot read the gradebook (mode 0600) or anything the grader's
mount namespace hides, and cannot signal or trace the grader's processes.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

COURSE_PREFIX = "servelab-grade-"
KERNEL_NAME = "servelab-sandbox"


def write_kernelspec(dest: Path) -> Path:
    """Write the ``servelab-sandbox`` kernelspec under ``dest/kernels``; return ``dest`` for JUPYTER_PATH."""
    import json

    spec = Path(dest) / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "autograder.kernel_sandbox", "-f", "{connection_file}"],
        "display_name": "Python 3 (servelab grading sandbox)",
        "language": "python",
        "metadata": {"debugger": False},
    }))
    return Path(dest)


def _give(folder: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(folder):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            try:
                os.lchown(name, uid, gid)
            except OSError:
                pass
    # Let the user reach its folder: execute (not read) permission on the parents up to the course.
    parent = folder.parent
    while parent != parent.parent:
        os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | stat.S_IXOTH)
        if parent.name.startswith(COURSE_PREFIX):
            break
        parent = parent.parent


def main(argv: list[str]) -> None:
    conn = Path(argv[argv.index("-f") + 1])
    value = os.environ.get("SERVELAB_SANDBOX_USER", "")
    args = [sys.executable, "-m", "ipykernel_launcher", "-f", str(conn)]
    if value and os.geteuid() == 0:
        uid, _, gid = value.partition(":")
        uid, gid = int(uid), int(gid or uid)
        here = Path.cwd()
        _give(here, uid, gid)
        home = here / ".home"
        home.mkdir(exist_ok=True)
        own = home / conn.name
        shutil.copyfile(conn, own)
        for p in (home, own):
            os.chown(p, uid, gid)
        os.chmod(own, 0o600)
        from autograder.zygote import drop_privileges

        drop_privileges(uid, gid, str(home))
        os.environ["JUPYTER_RUNTIME_DIR"] = str(home)
        (home / "tmp").mkdir(exist_ok=True)
        os.environ["TMPDIR"] = str(home / "tmp")  # temporary files of its own, not a shared /tmp
        os.environ["MPLCONFIGDIR"] = str(home / ".matplotlib")
        args[-1] = str(own)
    os.execv(sys.executable, args)


if __name__ == "__main__":
    main(sys.argv[1:])
