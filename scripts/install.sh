#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian/Ubuntu machine:
# the mosquitto broker (Debian package) and a Python 3.11 virtualenv in .venv with the project,
# all its extras and CPU-only torch (constraints/cpu.txt). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (Debian package)"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto
fi

python=""
for candidate in "${PYTHON:-}" python3.11 python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints/cpu.txt -e ".[edge,trainer,export,dev]"
echo "installed: $(.venv/bin/python --version), $(.venv/bin/edge-runtime --version) ($(command -v mosquitto || echo /usr/sbin/mosquitto))"
