"""What `medsight predict` reads: folders expanded to files, and the DICOM facts view fusion needs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsight.core import Geometry, InputError, Volume, VolumeMetadata
from medsight.inference import expand_inputs, image_facts
from medsight.io import read
from medsight.io.dicom_write import write_dicom_image


def test_folders_become_their_files(tmp_path):
    (tmp_path / "exam" / "sub").mkdir(parents=True)
    for name in ("exam/b.dcm", "exam/a.png", "exam/sub/c.dicom", "exam/.hidden", "exam/DICOMDIR", "single.jpg"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([tmp_path / "exam", tmp_path / "single.jpg"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["exam/a.png", "exam/b.dcm", "exam/sub/c.dicom", "single.jpg"]
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        expand_inputs([tmp_path / "empty"])


def test_dicom_facts_for_view_fusion(tmp_path):
    volume = Volume(
        np.zeros((1, 1, 16, 12), np.uint16),
        Geometry(spacing=(1.0, 0.1, 0.1)),
        VolumeMetadata(modality="MG", patient_id="P7"),
    )
    write_dicom_image(volume, tmp_path / "mg.dcm", modality="MG", laterality="R", view="MLO")
    facts = image_facts(read(tmp_path / "mg.dcm"))
    assert facts["patient_id"] == "P7" and facts["laterality"] == "R" and facts["view"] == "MLO"
    assert facts["study_id"].startswith(("1.", "2."))  # a UID
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "photo.png")
    assert image_facts(read(tmp_path / "photo.png")) == {}
