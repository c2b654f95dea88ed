"""BraTS 2023 glioma: ``BraTS-GLI-NNNNN-TTT/…-{t1n,t1c,t2w,t2f,seg}.nii.gz``; ET is label 3."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medsight.data.adapters.brats2021 import CHANNELS, brats_cases, brats_schema
from medsight.data.manifest import Manifest
from medsight.data.registry import Adapter, register

_PATTERN = r"BraTS-[A-Z]+-\d+-\d+"
# the same four contrasts under the 2023 names, in medsight's channel order
_FILES = dict(zip(CHANNELS, ("t1n", "t1c", "t2w", "t2f"), strict=True))


@register
class Brats2023(Adapter):
    name = "brats2023"
    title = "BraTS 2023 (GLI and related)"
    task = "brain-tumor-seg"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(re.fullmatch(_PATTERN, p.name) for p in [*root.glob("*"), *root.glob("*/*")])

    @classmethod
    def build(cls, root: Path, options: Any) -> Manifest:
        # BraTS-GLI-00000-000: the last part is the time point, the rest the patient
        records = brats_cases(root, _PATTERN, _FILES, patient=lambda case: case.rsplit("-", 1)[0])
        return Manifest.from_records(records, root, label_schema=brats_schema(3).to_dict(), channels=list(CHANNELS))
