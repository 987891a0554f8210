#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian/Ubuntu machine: the mosquitto
# broker, systemd-analyze and headless Chromium with its WebDriver (Debian packages) and a
# Python 3.11 virtualenv in .venv with the project, all its extras and CPU-only torch
# (constraints/cpu.txt). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# mosquitto: the broker; systemd's systemd-analyze: the tests verify the services' units;
packages=""
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  packages="mosquitto"
fi
command -v systemd-analyze >/dev/null 2>&1 || packages="$packages systemd"
# chromium and its WebDriver: the dashboard's browser tests drive them (headless).
command -v chromium >/dev/null 2>&1 || packages="$packages chromium"
command -v chromedriver >/dev/null 2>&1 || packages="$packages chromium-driver"
if [ -n "$packages" ]; then
  echo "installing$packages (Debian packages)"
  $sudo apt-get update -q
  # shellcheck disable=SC2086 # one word per package
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages
fi

python="$(bash scripts/find_python.sh)"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints/cpu.txt -e ".[edge,trainer,export,dev]"
# onnx2tf pins its own tensorflow/numpy/onnx: it lives in .export-venv, driven by subprocess.
bash scripts/export_env.sh
echo "installed: $(.venv/bin/python --version), $(.venv/bin/edge-runtime --version) ($(command -v mosquitto || echo /usr/sbin/mosquitto))"
