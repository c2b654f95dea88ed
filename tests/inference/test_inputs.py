"""What `medsight predict` reads: folders expanded to files, and the DICOM facts view fusion needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.core import Geometry, InputError, Volume, VolumeMetadata
from medsight.inference import expand_inputs, image_facts
from medsight.io import read
from medsight.io.dicom_write import write_dicom_image


def test_folders_become_their_files(tmp_path, testdata):
    (tmp_path / "exam" / "sub").mkdir(parents=True)
    dicom = Path(testdata("CT_small.dcm")).read_bytes()
    for name in ("exam/b.dcm", "exam/sub/c.dicom", "exam/.hidden", "exam/DICOMDIR"):
        (tmp_path / name).write_bytes(dicom)
    Image.new("L", (8, 8)).save(tmp_path / "exam" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "single.jpg")
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


def test_a_folder_with_notes_skips_them_with_one_warning(tmp_path, caplog):
    from PIL import Image

    from medsight.inference import expand_inputs

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "README.txt").write_text("scanned on Tuesday")
    (tmp_path / "notes.csv").write_text("a,b\n")
    assert expand_inputs([tmp_path]) == [tmp_path / "a.png"]
    assert "skipped 2 file(s) that are not images (README.txt, notes.csv)" in caplog.text
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no image files"):
        expand_inputs([tmp_path / "text"])
    (tmp_path / "broken.png").write_bytes(b"not a png")  # named like an image: corrupt, not skipped
    with pytest.raises(InputError, match=r"broken\.png"):
        expand_inputs([tmp_path])


def test_3d_input_to_a_2d_model_needs_a_slice_and_nan_is_refused_or_filled():
    from medsight.transforms.image2d import Preprocess2D, prepare_image

    volume = Volume(np.random.default_rng(0).random((1, 5, 16, 16)).astype(np.float32))
    with pytest.raises(InputError, match=r"3D volume of 5 slices.*--slice N \(0..4\)"):
        prepare_image(volume, Preprocess2D(size=8))
    assert prepare_image(volume, Preprocess2D(size=8), slice_index=2).shape == (3, 8, 8)
    with pytest.raises(InputError, match=r"slice 7 is outside"):
        prepare_image(volume, Preprocess2D(size=8), slice_index=7)
    plane = volume.array[:, 2:3].copy()
    plane[0, 0, :4, :4] = np.nan
    with pytest.raises(InputError, match=r"16 of 256 pixel values are NaN.*preprocess.nonfinite=fill"):
        prepare_image(Volume(plane), Preprocess2D(size=16))
    filled = prepare_image(Volume(plane), Preprocess2D(size=16, nonfinite="fill", channels=1))
    assert filled[0, :4, :4].max() == 0 and filled.max() == 255


def test_a_metaimage_data_file_goes_with_its_header(tmp_path, caplog):
    """LUNA16 folders hold <uid>.mhd with <uid>.raw: one input each, and no warning about the .raw."""
    import SimpleITK as sitk

    from medsight.inference import expand_inputs

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 4), np.int16)), str(tmp_path / "1.2.3.mhd"))
    (tmp_path / "orphan.raw").write_bytes(b"\0" * 8)  # no header: not an image
    assert (tmp_path / "1.2.3.raw").is_file()
    assert expand_inputs([tmp_path], volumes=True) == [tmp_path / "1.2.3.mhd"]
    assert "skipped 1 file(s) that are not images (orphan.raw)" in caplog.text
