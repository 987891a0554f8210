#!/usr/bin/env bash
# Creates .export-venv/: an isolated Python 3.11 virtualenv with onnx2tf, which converts the
# trainer's ONNX exports to TFLite (cloud_trainer.export drives it by subprocess).
#
# onnx2tf pins exact versions of its dependencies (tensorflow 2.19, numpy 1.26, onnx 1.19,
# onnxruntime 1.23, ...) that conflict with the trainer's own (numpy 2, onnx 1.23, torch), so it
# never goes into .venv. About 2.6 GB on disk. Safe to run again; cloud_trainer finds the
# environment at .export-venv/ beside .venv, or wherever $AMS_EXPORT_VENV points.
set -euo pipefail
cd "$(dirname "$0")/.."

# onnx2tf's own requirements are exact pins; pinning onnx2tf pins the whole environment.
ONNX2TF_VERSION=1.29.24
venv="${AMS_EXPORT_VENV:-.export-venv}"

if [ -x "$venv/bin/onnx2tf" ] && [ "$("$venv/bin/onnx2tf" -V 2>/dev/null | tail -n 1)" = "$ONNX2TF_VERSION" ]; then
  echo "export environment: onnx2tf $ONNX2TF_VERSION already in $venv"
  exit 0
fi

python="$(bash scripts/find_python.sh)"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "onnx2tf==$ONNX2TF_VERSION"
echo "export environment: onnx2tf $("$venv/bin/onnx2tf" -V 2>/dev/null | tail -n 1) in $venv ($(du -sh "$venv" | cut -f1))"
