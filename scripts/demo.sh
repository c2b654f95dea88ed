#!/usr/bin/env bash
# Set up .venv and run `medsight demo`: phantoms for DR grading, chest X-ray findings,
# screening mammography, brain tumour segmentation, cardiac function, cardiac and mammography
# risk, and lung nodules in CT (left out and named where it would overrun the budget), each
# trained on the CPU, evaluated with 95 % CIs and summarised.
# Arguments go to `medsight demo` (e.g. --out my-demo, or --quick for a one-minute check).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
venv="${MEDSIGHT_VENV:-.venv}"
"$venv/bin/medsight" demo "$@"
