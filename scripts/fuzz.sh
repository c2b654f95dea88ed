#!/usr/bin/env bash
# Fuzz every reader with atheris (coverage-guided): 100,000 inputs each by default, an input that
# takes over 2 s or grows the process past 1.5 GB (1 GB above the ~0.3 GB readers need) is a finding.
# Usage: bash scripts/fuzz.sh [RUNS] [TARGET ...]     e.g. bash scripts/fuzz.sh 2000 dicom png
# Findings land in fuzz-out/TARGET/ (crash-*, timeout-*, oom-*); not run by CI (CI runs a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
venv="${MEDSIGHT_VENV:-.venv}"
"$venv/bin/python" -c "import atheris" 2>/dev/null || "$venv/bin/python" -m pip install --quiet atheris
runs="${1:-100000}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("$venv/bin/python" -c "from tests.fuzz.targets import TARGETS; print('\n'.join(TARGETS))")
fi
status=0
for target in "${targets[@]}"; do
  echo "==> fuzzing $target ($runs inputs)"
  start=$(date +%s)
  if ! "$venv/bin/python" -m tests.fuzz.run "$target" -runs="$runs" -timeout=2 -rss_limit_mb=1536 \
      -max_len=262144 -print_final_stats=1 2> "fuzz-out-$target.log"; then
    echo "    finding kept in fuzz-out/$target/ (log: fuzz-out-$target.log)"
    status=1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "fuzz-out-$target.log" | sed 's/^/    /' || true
  echo "    $(( $(date +%s) - start )) s"
done
exit $status
