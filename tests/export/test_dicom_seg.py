"""DICOM SEG of predicted label maps: read back equal (pixels per source image, coded segments,
references, the model as contributing equipment), valid for dciodvfy, none for an empty prediction,
and every bad request refused with the fix."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from medsight.core.errors import InputError
from medsight.io import read, write
from tests.conftest import oblique_direction

hd = pytest.importorskip("highdicom", reason="the export extra is not installed (pip install 'medsight[export]')")
from medsight.export.dicom_seg import Algorithm, segment_concepts, write_segmentation  # noqa: E402

BRATS = [(1, "NCR"), (2, "ED"), (4, "ET")]


@pytest.fixture
def algorithm(tmp_path) -> Algorithm:
    (tmp_path / "weights.pt").write_bytes(b"some weights")
    return Algorithm.of_weights("brain-tumor-seg", tmp_path / "weights.pt")


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 3:9, 4:10] = 1
    labels[2, 5:7, 5:8] = 4  # ET inside NCR; no ED anywhere
    return labels


def _read_back(path: Path, sop_uids) -> tuple[object, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(path)
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(sop_uids), combine_segments=True)
    return seg, pixels


def _dciodvfy(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    found = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (found.stdout + found.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("oblique", [False, True])
def test_a_seg_reads_back_as_the_label_map_it_was_written_from(make_series, tmp_path, algorithm, oblique):
    folder, _ = make_series(shape=(6, 16, 14), direction=oblique_direction(25.0) if oblique else None)
    image = read(folder)
    labels = _labels(image.spatial_shape)
    path = write_segmentation(image, labels, folder, BRATS, tmp_path / "seg.dcm", algorithm=algorithm)
    seg, pixels = _read_back(path, image.metadata.sop_uids)
    # segments are the classes present, numbered in order: NCR 1, ET 2 (ED has no voxel)
    np.testing.assert_array_equal(pixels, np.select([labels == 1, labels == 4], [1, 2], 0))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["NCR", "ET"]
    types = [s.SegmentedPropertyTypeCodeSequence[0] for s in seg.SegmentSequence]
    assert [(t.CodeValue, t.CodingSchemeDesignator) for t in types] == [("6574001", "SCT"), ("108369006", "SCT")]
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" for s in seg.SegmentSequence)
    from medsight.core.labels import class_color

    shown = [
        hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb() for s in seg.SegmentSequence
    ]
    assert shown == [class_color(0), class_color(2)]  # NCR and ET: the colours of their classes (and overlays)
    source = __import__("pydicom").dcmread(next(p for p in folder.iterdir()), stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID and seg.PatientID == source.PatientID
    ours = [e for e in seg.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "brain-tumor-seg"]
    assert len(ours) == 1 and ours[0].DeviceUID == algorithm.device_uid
    frames = sum(int((labels == code).any(axis=(1, 2)).sum()) for code in (1, 4))  # empty frames left out
    assert int(seg.NumberOfFrames) == frames == 4
    assert _dciodvfy(path) == []


def test_nothing_predicted_writes_no_seg(make_series, tmp_path, algorithm):
    folder, _ = make_series(shape=(4, 8, 8))
    image = read(folder)
    empty = np.zeros(image.spatial_shape, np.uint8)
    assert write_segmentation(image, empty, folder, BRATS, tmp_path / "seg.dcm", algorithm=algorithm) is None
    assert not (tmp_path / "seg.dcm").exists()


def test_bad_requests_are_refused_with_the_fix(make_series, tmp_path, algorithm):
    folder, volume = make_series(shape=(4, 8, 8))
    image = read(folder)
    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1, 2:4, 2:4] = 1
    nifti = write(volume, tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="not read from DICOM"):
        write_segmentation(read(nifti), labels, nifti, BRATS, tmp_path / "a.dcm", algorithm=algorithm)
    with pytest.raises(InputError, match="not on the grid"):
        write_segmentation(image, labels[:, :4], folder, BRATS, tmp_path / "a.dcm", algorithm=algorithm)
    odd = labels.copy()
    odd[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"codes \[9\]"):
        write_segmentation(image, odd, folder, BRATS, tmp_path / "a.dcm", algorithm=algorithm)
    moved = folder.rename(tmp_path / "moved")
    with pytest.raises(InputError, match="no longer there"):
        write_segmentation(image, labels, folder if folder.exists() else moved / "nothing", BRATS, tmp_path / "a.dcm",
                           algorithm=algorithm)  # fmt: skip
    assert not (tmp_path / "a.dcm").exists()


def test_the_device_uid_follows_the_weights_and_unknown_classes_get_a_local_code(tmp_path):
    for name, content in (("a.pt", b"one"), ("b.pt", b"one"), ("c.pt", b"two")):
        (tmp_path / name).write_bytes(content)
    a, b, c = (Algorithm.of_weights("model", tmp_path / n) for n in ("a.pt", "b.pt", "c.pt"))
    assert a == b and a.device_uid != c.device_uid and a.version != c.version
    assert Algorithm.of_weights("other", tmp_path / "a.pt").device_uid != a.device_uid
    category, kind = segment_concepts("Left atrial appendage")
    assert category.value == "85756007" and kind.scheme_designator == "99MEDSIGHT"
    assert kind.meaning == "Left atrial appendage"
    assert segment_concepts("lv")[1].value == "87878005" and segment_concepts("Nodule")[1].value == "27925004"


def test_a_fractional_seg_holds_each_structures_probability(make_series, tmp_path, algorithm):
    from medsight.export.dicom_seg import write_fractional_segmentation

    folder, _ = make_series(shape=(5, 12, 10))
    image = read(folder)
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 120, size=(3, *image.spatial_shape)).astype(np.uint8)  # below 0.5 everywhere
    maps[0, 1:3, 2:6, 2:5] = rng.integers(128, 256, size=(2, 4, 3))  # NCR found; ED never reaches 0.5
    maps[2, 2, 4:6, 3:5] = 255  # ET found
    path = write_fractional_segmentation(image, maps, folder, ["NCR", "ED", "ET"], tmp_path / "seg.dcm",
                                         algorithm=algorithm)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(path)
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(image.metadata.sop_uids),
                                                   combine_segments=False)  # fmt: skip
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert int(seg.MaximumFractionalValue) == 255 and int(seg.BitsAllocated) == 8
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["NCR", "ET"]
    for k, structure in enumerate((0, 2)):  # each frame kept reads back as written (to 1/255)
        kept = (maps[structure] > 0).any(axis=(1, 2))  # empty frames are left out: they read back 0
        want = np.where(kept[:, None, None], maps[structure] / 255.0, 0.0)
        np.testing.assert_allclose(pixels[..., k], want, atol=0.5 / 255)
    assert _dciodvfy(path) == []
    low = write_fractional_segmentation(image, np.full((1, *image.spatial_shape), 127, np.uint8), folder, ["NCR"],
                                        tmp_path / "none.dcm", algorithm=algorithm)  # fmt: skip
    assert low is None and not (tmp_path / "none.dcm").exists()  # nothing reaches 0.5: no SEG
    with pytest.raises(InputError, match=r"3 probability map\(s\) expected"):
        write_fractional_segmentation(image, maps[:2], folder, ["NCR", "ED", "ET"], tmp_path / "x.dcm",
                                      algorithm=algorithm)  # fmt: skip
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        write_fractional_segmentation(image, maps[:1].astype(np.float32), folder, ["NCR"], tmp_path / "x.dcm",
                                      algorithm=algorithm)  # fmt: skip
