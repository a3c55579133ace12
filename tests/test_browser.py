"""JupyterLab in a real browser: notebook 00 runs, its self-checks pass, and nbgrader's Validate says so.

A JupyterLab server from this venv serves a temporary copy of ``solutions/00_orientation.ipynb``
on 127.0.0.1 (a free port, a random token, a throw-away HOME and runtime dir), and Debian's
chromium, driven headless by Playwright, opens it, runs every cell from the Run menu, types the
students' one-liner ``check(...)`` into a new cell, and clicks nbgrader's Validate button.
Screenshots go to ``build/browser/``.

The browser is the system's ``/usr/bin/chromium`` (``make browser`` installs it with apt-get);
no browser is ever downloaded. Without it the browser tests skip and say why.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from autograder import REPO
from autograder.checks.serving import free_port
from autograder.isolate import log_tail, stop_process

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless in a container as root, and nothing that phones home: the only traffic is to 127.0.0.1.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-proxy-server",
]
NOTEBOOK = "00_orientation.ipynb"
SCREENSHOTS = REPO / "build" / "browser"
ONE_LINER = 'from autograder.selfcheck import check; check("q00_pinned_version")'
VALIDATE_SUCCESS = "Success! Your notebook passes all the tests."

START_TIMEOUT = 60  # s for JupyterLab to answer /api/status
RUN_TIMEOUT = 90_000  # ms for Run All Cells to reach the last self-check
VALIDATE_TIMEOUT = 120_000  # ms: validation re-runs the whole notebook in the server


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path


# --- the JupyterLab server ---------------------------------------------------------------


def _lab_env(home: Path) -> dict[str, str]:
    """This venv's environment with a throw-away HOME, so nothing of the user's is read or written."""
    config = home / ".jupyter"
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(config / "lab" / "workspaces"),
        "IPYTHONDIR": str(home / ".ipython"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("JUPYTER_PATH", None)
    return env


def _write_settings(env: dict[str, str]) -> None:
    """Lab settings for a test: every cell in the DOM, and no news or update checks (no network)."""
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab"
    for path, values in {
        # 'none' attaches every cell, so outputs below the fold can be read and scrolled to.
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        (settings / path).parent.mkdir(parents=True, exist_ok=True)
        (settings / path).write_text(json.dumps(values))
    config = Path(env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"},
    }))


def _wait_for_status(url: str, token: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.trust_env = False  # loopback only, never through a proxy
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before it answered:\n{log_tail(log, 30)}")
            try:
                if session.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer {url}/api/status within {timeout:g} s:\n{log_tail(log, 30)}")


def _stop_lab(proc: subprocess.Popen) -> None:
    """Stop the server's process group, then any kernel it started (kernels get their own session)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    stop_process(proc)
    alive = [p for p in descendants if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a copy of notebook 00's solution; stopped whatever happens."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "work"
    root.mkdir()
    shutil.copy(REPO / "solutions" / NOTEBOOK, root / NOTEBOOK)
    # Validate loads nbgrader's config from the server's working directory: the course's settings.
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    env = _lab_env(tmp / "home")
    _write_settings(env)
    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = tmp / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_status(url, token, proc, log, START_TIMEOUT)
        yield Lab(url, token, root, log)
    finally:
        _stop_lab(proc)


# --- the browser -------------------------------------------------------------------------


def chromium_or_skip() -> Path:
    """``/usr/bin/chromium``, or a skip that says why ``make browser`` could not install it."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        why = "this user is not root, so `make browser` cannot apt-get it"
    elif shutil.which("apt-get") is None:
        why = "this machine has no apt-get, so `make browser` cannot install it"
    else:
        why = ("`make browser` has not installed it here (run `make browser` and read its apt-get output: "
               "the package registry may be unreachable)")
    pytest.skip(f"Debian's chromium is not at {CHROMIUM}: {why}. No browser is downloaded instead.")


def shoot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path


def code_cell(page, text: str):
    """The code cell whose source contains ``text``."""
    return page.locator(".jp-NotebookPanel .jp-CodeCell", has_text=text).first


def output_text(cell) -> str:
    outputs = cell.locator(".jp-OutputArea-output")
    return "\n".join(outputs.nth(i).inner_text() for i in range(outputs.count()))


@pytest.fixture(scope="module")
def notebook(lab, tmp_path_factory):
    """A headless chromium tab with notebook 00 open in JupyterLab, after Run → Run All Cells."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(executable), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000}, timeout=60_000,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}", timeout=60_000)
            page.locator(".jp-NotebookPanel-toolbar", has_text="Python 3 (servelab)").wait_for(timeout=60_000)
            wait_for_idle_kernel(lab, START_TIMEOUT)
            run_all_cells(page, lab)
            wait_for_idle_kernel(lab, START_TIMEOUT)
            yield page
        finally:
            context.close()


def wait_for_idle_kernel(lab: Lab, timeout: float) -> None:
    """Wait until the server's session for the notebook has a kernel that is idle."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.trust_env = False
        while time.monotonic() < deadline:
            sessions = session.get(f"{lab.url}/api/sessions", headers={"Authorization": f"token {lab.token}"},
                                   timeout=5).json()
            states = [s["kernel"]["execution_state"] for s in sessions if s.get("path") == NOTEBOOK and s.get("kernel")]
            if states == ["idle"]:
                return
            time.sleep(0.5)
    raise AssertionError(f"the notebook's kernel was not idle within {timeout:g} s:\n{log_tail(lab.log, 20)}")


def run_all_cells(page, lab: Lab) -> None:
    """Run → Run All Cells, then wait for the last self-check's pass line (or the first traceback)."""
    page.get_by_role("menuitem", name="Run", exact=True).first.click()
    page.locator('#jp-mainmenu-run .lm-Menu-item[data-command="runmenu:run-all"]').click()
    passed = code_cell(page, "orientation.check_tunnel_command").locator(
        ".jp-OutputArea-output", has_text="tunnel_command: passed")
    # Run All stops at the first cell that raises; a traceback ends the wait at once.
    traceback = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                             has_text="Traceback")
    try:
        passed.or_(traceback).first.wait_for(timeout=RUN_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - playwright's TimeoutError; say what the page shows instead
        shoot(page, "notebook-failed.png")
        raise AssertionError(f"Run All Cells did not finish within {RUN_TIMEOUT / 1000:g} s ({exc}).\n"
                             f"Server log:\n{log_tail(lab.log, 20)}") from None
    if traceback.count():
        shoot(page, "notebook-failed.png")
        raise AssertionError("a cell raised during Run All Cells:\n" + traceback.first.inner_text())


def test_nbgrader_labextension_is_enabled(tmp_path):
    env = _lab_env(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, listing
    assert re.search(r"@jupyter/nbgrader\s+v\S+\s+enabled\s+OK", listing), listing


def test_run_all_cells_prints_every_self_check_pass_line(notebook):
    page = notebook
    first = code_cell(page, "orientation.check_pinned_version")
    assert "pinned_version: passed" in output_text(first)
    assert "version_mismatches: passed" in output_text(code_cell(page, "orientation.check_version_mismatches"))
    assert "tunnel_command: passed" in output_text(code_cell(page, "orientation.check_tunnel_command"))
    assert "offline guard refuses non-loopback connections: True" in output_text(code_cell(page, "check_offline()"))

    first.locator(".jp-OutputArea-output").first.scroll_into_view_if_needed()
    shoot(page, "notebook.png")


def test_the_one_liner_check_passes_in_a_new_cell(notebook):
    page = notebook
    # A new code cell below the last one, from command mode (Escape, then B), like a learner would.
    page.locator(".jp-NotebookPanel .jp-Cell").last.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    editor = page.locator(".jp-NotebookPanel .jp-Cell.jp-mod-active .cm-content")
    editor.click()
    page.keyboard.insert_text(ONE_LINER)
    page.keyboard.press("Shift+Enter")

    cell = code_cell(page, 'check("q00_pinned_version")')
    verdict = cell.locator(".jp-OutputArea-output", has_text="q00_pinned_version")
    verdict.wait_for(timeout=60_000)
    verdict.scroll_into_view_if_needed()
    shoot(page, "oneliner.png")
    assert "✅ q00_pinned_version: the public self-check passes" in output_text(cell)


def test_validate_button_reports_that_the_notebook_passes(notebook):
    page = notebook
    button = page.locator(".jp-NotebookPanel-toolbar .validate-button")
    button.wait_for(state="visible")
    assert "Validate" in button.inner_text()
    button.click()

    dialog = page.locator(".jp-Dialog", has_text="Validation Results")
    dialog.wait_for(timeout=VALIDATE_TIMEOUT)
    shoot(page, "validate.png")
    body = dialog.locator(".jp-Dialog-body").inner_text()
    assert VALIDATE_SUCCESS in body, body
    dialog.locator(".jp-Dialog-button", has_text="OK").click()
    dialog.wait_for(state="detached")
