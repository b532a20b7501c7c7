#!/usr/bin/env bash
# One-time (idempotent) setup on a fresh Debian machine: Chromium + Fashion-MNIST from Debian, a Python venv in
# .venv with the pinned packages, and the browser runtimes from npm (package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v emcc >/dev/null || need_apt+=(emscripten)  # builds the TVM web runtime from the wheel's sources
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.setup-$(cat pyproject.toml requirements-nodeps.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade "pip<27"
  # torch first and alone: the CPU wheel of this exact version; nothing below may pull another torch.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e .
  .venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
  # onnx2tf 2.6.9 declares Python >= 3.12 but runs on 3.11 (measured here).
  .venv/bin/pip install -q --no-deps --ignore-requires-python onnx2tf==2.6.9
  rm -f .venv/.setup-*; touch "$stamp"
fi

if [ ! -f browser_validate/node_modules/.package-lock.json ] || \
   [ browser_validate/package-lock.json -nt browser_validate/node_modules/.package-lock.json ]; then
  (cd browser_validate && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: ok ($(.venv/bin/python --version), $(chromium --version 2>/dev/null | head -1))"
