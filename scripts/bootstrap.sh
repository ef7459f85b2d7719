#!/usr/bin/env bash
# Installs what the gateway needs on a Debian machine: Python 3.11+, uv (pinned), and the locked
# Python dependencies in .venv. Safe to run again; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never   # use the machine's Python, never a download
export UV_LINK_MODE=copy

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The report PDFs' Unicode font (relaypacs/reports/pdf.py).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || need_apt+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || need_apt+=(fonts-droid-fallback)
[ -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || need_apt+=(fonts-nanum)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "relaypacs: please install ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"relaypacs needs Python 3.11 or newer; this machine has {sys.version.split()[0]}")
PY

UV=.tools/bin/uv
if [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "relaypacs: installing uv $UV_VERSION into .tools/" >&2
  python3 -m venv .tools
  .tools/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

# Bytecode compiled once at install: every process start (gateway, CLI, workers) is faster.
"$UV" sync --frozen --python python3 --compile-bytecode -q
