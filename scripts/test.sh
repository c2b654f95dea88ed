#!/usr/bin/env bash
# Set up .venv with the dev, export, serve and dist extras, then run what CI runs: lint, then the whole test suite.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k dicom).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev,export,serve,dist   # the export tests run ONNX on onnxruntime; the service tests its
                                                 # API; predict --ray is tested on a Ray of this machine
venv="${MEDSIGHT_VENV:-.venv}"
echo "==> ruff"
"$venv/bin/ruff" check src tests benchmarks
echo "==> pytest"
"$venv/bin/python" -m pytest "$@"
