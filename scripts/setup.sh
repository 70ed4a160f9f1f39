#!/usr/bin/env bash
# Install everything sddr-pipeline needs into .venv/ in this checkout (idempotent).
#   - system libraries (Debian/Ubuntu, when run as root or with sudo): libgl1 libegl1
#     libgomp1 libusb-1.0-0 (Open3D's runtime needs) and libvulkan1 mesa-vulkan-drivers
#     (Open3D's offscreen rendering), via apt-get
#   - the CPU build of torch (torch==2.13.0) unless SDDR_TORCH is set to another pip spec
#     (e.g. SDDR_TORCH=skip on a GPU machine that brings its own torch)
#   - the package itself (editable) with its test, ONNX, Ray and S3 extras, and
#     open3d-cpu + pycolmap for the 3D integrations
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES="libgl1 libegl1 libgomp1 libusb-1.0-0 libvulkan1 mesa-vulkan-drivers"
if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $SYSTEM_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: installing system packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip

TORCH_SPEC=${SDDR_TORCH:-torch==2.13.0}
if [ "$TORCH_SPEC" != "skip" ]; then
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
.venv/bin/python -m pip install -q -e ".[test,onnx,ray,s3]"
# geometry: the CPU build of Open3D (the `geometry` extra names the full `open3d`)
.venv/bin/python -m pip install -q "open3d-cpu==0.20.0" "pycolmap==4.2.1"
.venv/bin/python -c "import torch, sddr_pipeline; print(f'setup: sddr-pipeline {sddr_pipeline.__version__}, torch {torch.__version__} in .venv')"
