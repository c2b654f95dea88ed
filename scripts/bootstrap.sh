#!/usr/bin/env bash
# Create .venv (once) and install medsight into it with the given extras.
# Usage: bash scripts/bootstrap.sh [EXTRAS]     e.g. bash scripts/bootstrap.sh dev
#
# PyTorch is installed first and pinned (MEDSIGHT_TORCH, default torch==2.13.0): on the
# project's CPU machines that release is a CPU build on local disk, while an unpinned
# `torch` would pull a multi-GB CUDA build. Set MEDSIGHT_TORCH to your own spec elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
venv="${MEDSIGHT_VENV:-.venv}"
torch_spec="${MEDSIGHT_TORCH:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
py="$venv/bin/python"

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "==> installing $torch_spec"
  "$py" -m pip install --quiet "$torch_spec"
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
echo "==> installing medsight $target"
"$py" -m pip install --quiet --editable "$target"
