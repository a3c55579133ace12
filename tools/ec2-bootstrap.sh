#!/usr/bin/env bash
# servelab on a fresh Ubuntu instance (EC2 or any other): the pinned environment, a Jupyter
# kernel for it, then JupyterLab on loopback only, reached from your computer through an SSH tunnel.
#
# Run it from the repository checkout, as the user who will work there (e.g. ubuntu):
#
#   tools/ec2-bootstrap.sh
#
# Settings, all optional, as environment variables:
#   SERVELAB_METHOD=auto|conda|pip   how to build the environment (default auto):
#                                    auto  - conda (or mamba) if one is on PATH, else the pip path
#                                            with python3.11, else Miniforge (as for conda)
#                                    conda - `conda env create -f environment.yml`; installs Miniforge
#                                            into ~/miniforge3 first when there is no conda
#                                    pip   - `python3.11 -m venv`, `pip install -r requirements.txt`
#   SERVELAB_VENV=dir                the pip path's virtual environment (default: .venv in the checkout)
#   SERVELAB_PYTHON=python3.11       the interpreter the pip path builds the venv with
#   SERVELAB_PORT=8888               JupyterLab's port on 127.0.0.1
#   SERVELAB_TOKEN=...               JupyterLab's token (default: a new random one)
#   SERVELAB_NO_LAB=1                stop once the environment and kernel are ready
#   SERVELAB_PUBLIC_DNS=...          the instance's public DNS name for the printed ssh line
#                                    (from the EC2 console; the script never asks the metadata service)
#
# Running it again is safe: an existing environment is updated, not rebuilt, and the kernel is
# registered again. JupyterLab never listens on 0.0.0.0: open only port 22 in the security group.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
METHOD="${SERVELAB_METHOD:-auto}"
VENV="${SERVELAB_VENV:-$REPO/.venv}"
PYTHON311="${SERVELAB_PYTHON:-python3.11}"
PORT="${SERVELAB_PORT:-8888}"
ENV_NAME=servelab  # the name in environment.yml
KERNEL_NAME=servelab
KERNEL_DISPLAY="Python 3 (servelab)"
MINIFORGE_URL="https://github.com/conda-forge/miniforge/releases/latest/download/Miniforge3-$(uname)-$(uname -m).sh"
MINIFORGE_DIR="$HOME/miniforge3"

say() { printf '[servelab] %s\n' "$*"; }
die() { printf '[servelab] error: %s\n' "$1" >&2; exit "${2:-1}"; }  # die MESSAGE [EXIT_CODE]

cd "$REPO"
if [ ! -f requirements.txt ] || [ ! -f environment.yml ] || [ ! -f pyproject.toml ]; then
  die "run this from a servelab checkout: $REPO lacks requirements.txt, environment.yml or pyproject.toml"
fi
case "$METHOD" in auto|conda|pip) ;; *) die "SERVELAB_METHOD must be auto, conda or pip, not '$METHOD'" 2 ;; esac
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
  die "SERVELAB_PORT must be a port number (1-65535), not '$PORT'" 2
fi

# conda itself first: with its libmamba solver (the default since conda 23.10) mamba adds little.
find_conda() {
  if command -v conda >/dev/null 2>&1; then command -v conda
  elif command -v mamba >/dev/null 2>&1; then command -v mamba
  elif [ -x "$MINIFORGE_DIR/bin/conda" ]; then echo "$MINIFORGE_DIR/bin/conda"
  fi
}

install_miniforge() {
  say "no conda here; installing Miniforge into $MINIFORGE_DIR from $MINIFORGE_URL"
  local installer
  installer="$(mktemp "${TMPDIR:-/tmp}/miniforge.XXXXXX")"
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$installer" "$MINIFORGE_URL" || { rm -f "$installer"; die "could not download $MINIFORGE_URL"; }
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$installer" "$MINIFORGE_URL" || { rm -f "$installer"; die "could not download $MINIFORGE_URL"; }
  else
    die "neither curl nor wget is installed: sudo apt-get install -y curl"
  fi
  bash "$installer" -b -u -p "$MINIFORGE_DIR" || die "the Miniforge installer failed"
  rm -f "$installer"
}

# --- step 1: the environment; sets PY to its python -------------------------------------

conda_env() {
  local conda prefix
  conda="$(find_conda)"
  if [ -z "$conda" ]; then
    install_miniforge
    conda="$MINIFORGE_DIR/bin/conda"
  fi
  prefix="$("$conda" env list | awk -v name="$ENV_NAME" '$1 == name { print $NF }')"
  if [ -n "$prefix" ]; then
    say "updating the conda environment '$ENV_NAME' from environment.yml ($conda)"
    "$conda" env update -n "$ENV_NAME" -f environment.yml
  else
    say "creating the conda environment '$ENV_NAME' from environment.yml ($conda); a few minutes"
    "$conda" env create -f environment.yml
    prefix="$("$conda" env list | awk -v name="$ENV_NAME" '$1 == name { print $NF }')"
  fi
  if [ -z "$prefix" ] || [ ! -x "$prefix/bin/python" ]; then
    die "conda did not create '$ENV_NAME' (it is not in \`$conda env list\`)"
  fi
  PY="$prefix/bin/python"
  say "installing servelab itself into it (pip install --no-deps -e .)"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
}

pip_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON311" >/dev/null 2>&1 \
      || die "$PYTHON311 not found. Install it (Ubuntu 22.04: sudo apt-get install -y python3.11 python3.11-venv) or use SERVELAB_METHOD=conda, which brings its own Python 3.11"
    say "creating the virtual environment $VENV with $PYTHON311"
    "$PYTHON311" -m venv "$VENV" \
      || die "$PYTHON311 -m venv failed; on Ubuntu: sudo apt-get install -y python3.11-venv"
  else
    say "reusing the virtual environment $VENV"
  fi
  PY="$VENV/bin/python"
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "$VENV has Python $("$PY" -c 'import sys; print(sys.version.split()[0])'), not 3.11: remove it or set SERVELAB_VENV"
  say "installing the pinned packages (pip install -r requirements.txt); a few minutes the first time"
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
}

if [ "$METHOD" = auto ]; then
  if [ -n "$(find_conda)" ]; then METHOD=conda
  elif [ -x "$VENV/bin/python" ] || command -v "$PYTHON311" >/dev/null 2>&1; then METHOD=pip
  else
    say "neither conda nor $PYTHON311 is installed; using Miniforge (conda), which brings Python 3.11"
    METHOD=conda
  fi
fi
say "step 1/3: the environment ($METHOD)"
if [ "$METHOD" = conda ]; then conda_env; else pip_env; fi

# --- step 2: the kernel -------------------------------------------------------------------

say "step 2/3: registering the Jupyter kernel '$KERNEL_NAME' ($KERNEL_DISPLAY) for $PY"
"$PY" -m ipykernel install --user --name "$KERNEL_NAME" --display-name "$KERNEL_DISPLAY"

if [ "${SERVELAB_NO_LAB:-0}" = 1 ]; then
  say "ready. Start JupyterLab later with: $PY -m jupyter lab --ip=127.0.0.1 --port=$PORT --no-browser $REPO/notebooks"
  exit 0
fi

# --- step 3: JupyterLab on loopback -------------------------------------------------------

say "step 3/3: JupyterLab on 127.0.0.1:$PORT"
if "$PY" -c "import socket, sys; s = socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', $PORT)) != 0)"; then
  die "something already listens on 127.0.0.1:$PORT (a JupyterLab from an earlier run? see: $PY -m jupyter server list). Stop it or set SERVELAB_PORT."
fi
TOKEN="${SERVELAB_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(24))')}"

public_dns() {
  # Never asked of the instance metadata service: servelab contacts no address but loopback.
  # The name is on the instance's page in the EC2 console, or from
  # `aws ec2 describe-instances --query 'Reservations[].Instances[].PublicDnsName'` on your computer.
  if [ -n "${SERVELAB_PUBLIC_DNS:-}" ]; then echo "$SERVELAB_PUBLIC_DNS"; else echo "<public-dns>"; fi
}

ROOT_FLAG=()
if [ "$(id -u)" = 0 ]; then
  say "warning: running as root; better run this as the instance's ordinary user (ubuntu)"
  ROOT_FLAG=(--allow-root)
fi

cat <<EOF
[servelab] JupyterLab listens on 127.0.0.1 only. On YOUR computer, open the tunnel with

    ssh -i key.pem -L $PORT:127.0.0.1:$PORT ubuntu@$(public_dns)

[servelab] then browse to

    http://127.0.0.1:$PORT/lab?token=$TOKEN

[servelab] Stop JupyterLab with Ctrl-C.
EOF
exec "$PY" -m jupyter lab --ip=127.0.0.1 --port="$PORT" --ServerApp.port_retries=0 --no-browser \
  --IdentityProvider.token="$TOKEN" --ServerApp.root_dir="$REPO/notebooks" ${ROOT_FLAG[@]+"${ROOT_FLAG[@]}"}
