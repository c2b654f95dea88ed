"""The service tests' model package and DICOM studies, made once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.service.common import TOKEN


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> dict[str, Path]:
    """A segmentation package, and two of its test cases as DICOM series: an MR one and a CT one."""
    pytest.importorskip("onnxruntime", reason="the serve extra is not installed (pip install 'medsight[serve]')")
    from medsight.core import Volume, VolumeMetadata
    from medsight.export import export_package
    from medsight.io import read, write_dicom_series
    from tests.export.runs import trained

    root = tmp_path_factory.mktemp("service")
    run, data, _ = trained(root, "segmentation")
    export_package(run, root / "package", format="onnx")
    series = {}
    for modality, case in (("MR", 8), ("CT", 9)):
        image = read(data / f"case{case}.nii.gz")
        volume = Volume(image.array.astype(np.int16), image.geometry, VolumeMetadata(modality=modality))
        write_dicom_series(volume, root / modality)
        series[modality] = root / modality
    return {"package": root / "package", **series}


@pytest.fixture
def tokens(monkeypatch):
    """Two API tokens in the environment: alice's and bob's."""
    monkeypatch.setenv("MEDSIGHT_API_TOKENS", f"alice={TOKEN},bob=bob-token-0123456789")
