"""tools/ec2-bootstrap.sh: builds the environment, registers its kernel, serves JupyterLab on loopback only.

The pip path runs for real (a fresh venv from requirements.txt, with pip's cache) under a
throw-away HOME. The conda path runs against a stand-in ``conda`` that records what it is
asked, since there is no conda here; so does the Miniforge download, against a stand-in ``curl``.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from autograder import REPO
from autograder.checks.serving import free_port
from autograder.isolate import log_tail, stop_process

SCRIPT = REPO / "tools" / "ec2-bootstrap.sh"
INSTALL_TIMEOUT = 900  # s: a fresh venv from requirements.txt, downloading what pip's cache lacks
LAB_TIMEOUT = 180  # s: the script checks the installed pins again, then starts JupyterLab


def user_pip_settings() -> dict[str, str]:
    """The user's pip configuration and cache, which a throw-away HOME would otherwise hide."""
    home = Path.home()
    settings = {"PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR")
                or str(Path(os.environ.get("XDG_CACHE_HOME", home / ".cache")) / "pip")}
    if "PIP_CONFIG_FILE" not in os.environ:
        xdg = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
        for conf in (xdg / "pip" / "pip.conf", home / ".pip" / "pip.conf"):
            if conf.is_file():
                settings["PIP_CONFIG_FILE"] = str(conf)
                break
    return settings


# Variables that would point the script, pip or Jupyter at the caller's environment instead.
FOREIGN = {"VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "JUPYTER_PATH", "JUPYTER_DATA_DIR",
           "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_CONFIG_HOME"}


def script_env(home: Path, path: str | None = None, **settings: str) -> dict[str, str]:
    """The environment for one run of the script: a throw-away HOME and only the given SERVELAB_*."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith("SERVELAB_")}
    env.update(user_pip_settings())
    env.update(HOME=str(home), PATH=path or os.environ["PATH"], **settings)
    return env


def run_script(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def base_python311() -> str:
    """The Python 3.11 this venv was made from (a pyenv shim would look for pyenv under HOME)."""
    exe = Path(sys.base_prefix) / "bin" / "python3.11"
    return str(exe if exe.exists() else Path(sys.base_prefix) / "bin" / "python3")


def path_without_conda() -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not any((Path(d) / exe).exists() for exe in ("conda", "mamba")))


# --- stand-ins for the conda path -------------------------------------------------------------

FAKE_CONDA = r"""#!/usr/bin/env bash
# A stand-in for conda: records its arguments and "creates" the environment as a folder.
echo "conda $*" >> "$FAKE_LOG"
if [ "$1 $2" = "env list" ]; then
  echo "# conda environments:"
  echo "base                     $FAKE_STATE"
  if [ -d "$FAKE_STATE/envs/servelab" ]; then echo "servelab                 $FAKE_STATE/envs/servelab"; fi
elif [ "$1 $2" = "env create" ]; then
  mkdir -p "$FAKE_STATE/envs/servelab/bin"
  printf '#!/usr/bin/env bash\necho "python $*" >> "$FAKE_LOG"\n' > "$FAKE_STATE/envs/servelab/bin/python"
  chmod +x "$FAKE_STATE/envs/servelab/bin/python"
fi
exit 0
"""

FAKE_CURL = r"""#!/usr/bin/env bash
# A stand-in for curl that records the request and fails as an unreachable host does.
echo "curl $*" >> "$FAKE_LOG"
exit 6
"""


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_an_unknown_method_is_refused(tmp_path):
    proc = run_script(script_env(tmp_path / "home", SERVELAB_METHOD="docker"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "[servelab] error: SERVELAB_METHOD must be auto, conda or pip, not 'docker'"


def test_the_pip_path_without_python311_says_what_to_install(tmp_path):
    proc = run_script(script_env(tmp_path / "home", path_without_conda(), SERVELAB_METHOD="pip",
                                 SERVELAB_VENV=str(tmp_path / "venv"), SERVELAB_PYTHON="python3.11-absent"))
    assert proc.returncode == 1
    assert "python3.11-absent not found" in proc.stderr and "SERVELAB_METHOD=conda" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_auto_uses_conda_when_present_creates_the_environment_then_updates_it(tmp_path):
    log, state = tmp_path / "calls.log", tmp_path / "conda"
    bin_dir = fake_bin(tmp_path, conda=FAKE_CONDA)
    env = script_env(tmp_path / "home", f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                     FAKE_LOG=str(log), FAKE_STATE=str(state), SERVELAB_NO_LAB="1")

    first = run_script(env)
    assert first.returncode == 0, first.stdout + first.stderr
    calls = log.read_text().splitlines()
    assert "conda env create -f environment.yml" in calls
    assert "python -m pip install --quiet --disable-pip-version-check --no-deps -e ." in calls
    assert "python -m ipykernel install --user --name servelab --display-name Python 3 (servelab)" in calls
    assert "step 1/3: the environment (conda)" in first.stdout

    log.unlink()
    again = run_script(env)
    assert again.returncode == 0, again.stdout + again.stderr
    calls = log.read_text().splitlines()
    assert "conda env update -n servelab -f environment.yml" in calls
    assert not any(c.startswith("conda env create") for c in calls)


def test_conda_without_conda_fetches_miniforge_from_its_release_url(tmp_path):
    log = tmp_path / "calls.log"
    bin_dir = fake_bin(tmp_path, curl=FAKE_CURL)
    env = script_env(tmp_path / "home", f"{bin_dir}{os.pathsep}{path_without_conda()}",
                     FAKE_LOG=str(log), SERVELAB_METHOD="conda", SERVELAB_NO_LAB="1")
    proc = run_script(env)
    url = ("https://github.com/conda-forge/miniforge/releases/latest/download/"
           f"Miniforge3-{platform.system()}-{platform.machine()}.sh")
    assert proc.returncode == 1
    assert url in log.read_text()
    assert f"could not download {url}" in proc.stderr
    assert not (tmp_path / "home" / "miniforge3").exists()


# --- the pip path, for real -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pip_install(tmp_path_factory):
    """The script's pip path up to the kernel (SERVELAB_NO_LAB=1): ``(home, venv, output)``."""
    tmp = tmp_path_factory.mktemp("bootstrap")
    home, venv = tmp / "home", tmp / "venv"
    env = script_env(home, SERVELAB_METHOD="pip", SERVELAB_VENV=str(venv), SERVELAB_PYTHON=base_python311(),
                     SERVELAB_NO_LAB="1")
    try:
        proc = run_script(env, timeout=INSTALL_TIMEOUT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield home, venv, proc.stdout
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 1.6 GB; pytest keeps its last three temp dirs


@pytest.mark.slow
def test_pip_path_builds_a_venv_with_servelab_and_registers_its_kernel_for_the_user(pip_install):
    home, venv, output = pip_install
    assert "step 1/3: the environment (pip)" in output and "step 2/3" in output and "step 3/3" not in output

    spec = json.loads((home / ".local" / "share" / "jupyter" / "kernels" / "servelab" / "kernel.json").read_text())
    assert spec["argv"][0] == str(venv / "bin" / "python")
    assert spec["display_name"] == "Python 3 (servelab)"

    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import autograder, jupyterlab, nbgrader, sys; "
         "print(autograder.REPO); print(sys.version_info[:2] == (3, 11))"],
        capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(REPO), "True"]


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


def local_non_loopback_ipv4() -> list[str]:
    """This machine's own interface addresses other than loopback (connecting to them stays here)."""
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


@pytest.mark.slow
def test_lab_step_serves_jupyterlab_on_loopback_only_and_prints_the_tunnel(pip_install, tmp_path):
    home, venv, _ = pip_install
    port, token, dns = free_port(), secrets.token_hex(16), "ec2-198-51-100-7.ap-northeast-2.compute.amazonaws.com"
    env = script_env(home, SERVELAB_METHOD="pip", SERVELAB_VENV=str(venv), SERVELAB_PORT=str(port),
                     SERVELAB_TOKEN=token, SERVELAB_PUBLIC_DNS=dns, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = tmp_path / "bootstrap.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, status = time.monotonic() + LAB_TIMEOUT, None
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = session.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=2)
                    break
                except requests.RequestException:
                    time.sleep(0.5)
            assert status is not None and status.ok, f"JupyterLab did not answer on {url}:\n{log_tail(log, 30)}"
        with requests.Session() as anonymous:  # no token, and not the cookie the first session got
            anonymous.trust_env = False
            assert anonymous.get(f"{url}/api/status", timeout=2).status_code in (401, 403)

        assert listening_addresses(port) == {"127.0.0.1"}
        for address in local_non_loopback_ipv4():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                assert s.connect_ex((address, port)) != 0, f"JupyterLab answers on {address}:{port}"

        printed = log.read_text()
        assert f"ssh -i key.pem -L {port}:127.0.0.1:{port} ubuntu@{dns}" in printed
        assert f"http://127.0.0.1:{port}/lab?token={token}" in printed
        assert "reusing the virtual environment" in printed
    finally:
        stop_process(proc)
