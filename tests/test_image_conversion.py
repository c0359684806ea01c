"""Image conversion (SPEC 5, image_format = nifti), without servers.

DICOM is checked voxel for voxel and in geometry against an independent reader,
SimpleITK's ImageSeriesReader (ITK/GDCM): its LPS origin, direction and spacing become a
RAS affine, its (z, y, x) array an (x, y, z) one.
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from rbexport.app.sample_images import dicom_series, expected_affine, xray_image
from rbexport.errors import TaskDataError
from rbexport.images.dicom import read_dicom_series
from rbexport.images.geometry import onto_label_grid
from rbexport.images.read import item_kind, read_image_series
from rbexport.images.volume import ImageVolume, encode_nifti

SHAPE = (16, 12, 8)
COS20, SIN20 = math.cos(math.radians(20)), math.sin(math.radians(20))


def ct_volume(shape=SHAPE, seed: int = 0, low: int = -1000, high: int = 2000) -> np.ndarray:
    """Stored values (int32, so that any 16-bit range fits)."""
    return np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int32)


# --- the independent reader -------------------------------------------------------------


def simpleitk_read(items: list[tuple[str, bytes]], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxels in x, y, z order, RAS affine) as SimpleITK reads the files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in items:
        (folder / name).write_bytes(raw)
    if len(items) == 1:
        image = sitk.ReadImage(str(folder / items[0][0]))
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        image = reader.Execute()
    dimension = image.GetDimension()
    lps = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(dimension, dimension)
    lps[:dimension, :dimension] = direction * np.array(image.GetSpacing())
    lps[:dimension, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).T, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def assert_same_as_simpleitk(items: list[tuple[str, bytes]], folder: Path) -> ImageVolume:
    volume = read_dicom_series(items)
    expected, affine = simpleitk_read(items, folder)
    if volume.data.ndim == 2:  # SimpleITK reads one slice as a volume of one slice
        expected = expected[:, :, 0]
        affine[:3, 2] = volume.affine[:3, 2]  # the missing axis' step means nothing
    assert volume.data.shape == expected.shape
    if volume.data.dtype == np.float32:  # ITK computes in double; we round that once
        expected = expected.astype(np.float32)
    assert np.array_equal(volume.data, expected)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    return volume


def edited(item: tuple[str, bytes], name: str | None = None, **attributes) -> tuple[str, bytes]:
    """The file with some attributes changed (None deletes one)."""
    dataset = pydicom.dcmread(io.BytesIO(item[1]))
    for keyword, value in attributes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return name or item[0], buffer.getvalue()


def with_pixel_bytes(item: tuple[str, bytes], change) -> tuple[str, bytes]:
    """The file with its 16-bit stored values passed through `change`."""
    dataset = pydicom.dcmread(io.BytesIO(item[1]))
    dtype = "<i2" if dataset.PixelRepresentation else "<u2"
    dataset.PixelData = change(np.frombuffer(dataset.PixelData, dtype=dtype).copy()).astype(dtype).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return item[0], buffer.getvalue()


# --- slices, orientation, order ---------------------------------------------------------


def test_axial_series_matches_simpleitk_voxel_for_voxel(tmp_path):
    volume = assert_same_as_simpleitk(dicom_series(ct_volume()), tmp_path)
    assert volume.data.shape == SHAPE
    np.testing.assert_allclose(volume.affine, expected_affine(), atol=1e-9)
    assert volume.modality == "CT"


@pytest.mark.parametrize(
    "row, column",
    [((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)), ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))],
    ids=["sagittal", "coronal"],
)
def test_sagittal_and_coronal_series_match_simpleitk(tmp_path, row, column):
    items = dicom_series(ct_volume(), row_direction=row, column_direction=column, spacing=(0.5, 0.7, 1.5))
    volume = assert_same_as_simpleitk(items, tmp_path)
    np.testing.assert_allclose(
        volume.affine, expected_affine((0.5, 0.7, 1.5), row_direction=row, column_direction=column), atol=1e-9
    )


@pytest.mark.parametrize(
    "row, column",
    [
        ((1.0, 0.0, 0.0), (0.0, COS20, SIN20)),
        ((COS20, SIN20, 0.0), (-SIN20 * COS20, COS20 * COS20, SIN20)),
    ],
    ids=["20-degrees-about-x", "about-z-then-x"],
)
def test_oblique_series_keeps_its_orientation_without_resampling(tmp_path, row, column):
    stored = ct_volume()
    volume = assert_same_as_simpleitk(dicom_series(stored, row_direction=row, column_direction=column), tmp_path)
    assert np.array_equal(volume.data, stored)
    np.testing.assert_allclose(volume.affine, expected_affine(row_direction=row, column_direction=column), atol=1e-6)


def test_slices_are_ordered_along_the_normal_not_by_file_name(tmp_path):
    stored = ct_volume()
    items = dicom_series(stored)
    order = np.random.default_rng(1).permutation(len(items))
    # Names and InstanceNumbers that both sort the other way round from the positions.
    shuffled = [
        edited(items[index], name=f"image-{len(items) - index:02d}.dcm", InstanceNumber=len(items) - index)
        for index in order
    ]
    volume = assert_same_as_simpleitk(shuffled, tmp_path)
    assert np.array_equal(volume.data, stored)
    np.testing.assert_allclose(volume.affine, expected_affine(), atol=1e-9)


def test_slices_stacked_against_the_normal_start_from_the_lowest_position(tmp_path):
    stored = ct_volume()
    items = dicom_series(stored, spacing=(0.8, 0.8, -2.0))  # slice k+1 lies 2 mm below slice k
    volume = assert_same_as_simpleitk(items, tmp_path)
    assert np.array_equal(volume.data, stored[:, :, ::-1])
    assert volume.affine[2, 2] == pytest.approx(2.0)


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rescale, dtype",
    [
        ((1, -1024), np.int16),
        ((2, -1000), np.int16),
        ((-1, 0), np.int16),
        ((0.5, -3.25), np.float32),
        ((2.5, 0.1), np.float32),
    ],
)
def test_rescale_slope_and_intercept_give_the_values_itk_gives(tmp_path, rescale, dtype):
    stored = ct_volume(low=-2000, high=3000)
    volume = assert_same_as_simpleitk(dicom_series(stored, rescale=rescale), tmp_path)
    assert volume.data.dtype == dtype


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_signed_and_unsigned_pixels_match_simpleitk(tmp_path, signed):
    stored = ct_volume(low=-3000 if signed else 0, high=60000 if not signed else 3000)
    volume = assert_same_as_simpleitk(dicom_series(stored, signed=signed), tmp_path)
    assert volume.data.dtype == (np.int16 if signed else np.uint16)


@pytest.mark.parametrize(
    "signed, high, rescale, dtype",
    [
        (False, 200, None, np.uint8),
        (False, 60000, None, np.uint16),
        (False, 60000, (1, -1024), np.int32),
        (True, 32000, (1, 1000), np.int32),
        (True, 3000, (1, -1024), np.int16),
    ],
)
def test_integer_rescale_gives_the_smallest_type_that_holds_the_values(tmp_path, signed, high, rescale, dtype):
    stored = ct_volume(low=0, high=high)
    stored[0, 0, 0] = high
    volume = assert_same_as_simpleitk(dicom_series(stored, signed=signed, rescale=rescale), tmp_path)
    assert volume.data.dtype == dtype


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_bits_above_bits_stored_are_cleared_as_gdcm_does(tmp_path, signed):
    stored = ct_volume(low=-2048 if signed else 0, high=2048 if signed else 4096)
    items = dicom_series(stored, signed=signed, bits_stored=12, rescale=(1, -1024))
    items[2] = with_pixel_bytes(items[2], lambda values: (values.view(np.uint16) & 0x0FFF | 0x5000).view(values.dtype))
    volume = assert_same_as_simpleitk(items, tmp_path)
    assert np.array_equal(volume.data, stored - 1024)


@pytest.mark.parametrize(
    "transfer_syntax",
    [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless],
    ids=lambda uid: uid.name,
)
def test_every_readable_transfer_syntax_gives_the_same_voxels(tmp_path, transfer_syntax):
    stored = ct_volume()
    items = dicom_series(stored, rescale=(1, -1024), transfer_syntax=transfer_syntax)
    volume = assert_same_as_simpleitk(items, tmp_path)
    assert np.array_equal(volume.data, stored - 1024)


def test_a_larger_ct_series_matches_simpleitk(tmp_path):
    stored = ct_volume(shape=(256, 192, 40), low=-1024, high=3071)
    assert_same_as_simpleitk(dicom_series(stored, rescale=(1, -1024), spacing=(0.7, 0.7, 1.25)), tmp_path)


# --- multi-frame, single images, real files ---------------------------------------------


@pytest.mark.parametrize("rescale", [None, (1, -1024), (0.25, 5)])
def test_enhanced_multiframe_equals_the_same_series_in_single_frames(tmp_path, rescale):
    stored = ct_volume()
    arguments = dict(row_direction=(1.0, 0.0, 0.0), column_direction=(0.0, COS20, SIN20), rescale=rescale)
    multiframe = dicom_series(stored, multiframe=True, **arguments)
    assert len(multiframe) == 1
    volume = assert_same_as_simpleitk(multiframe, tmp_path)
    single_frames = read_dicom_series(dicom_series(stored, **arguments))
    assert np.array_equal(volume.data, single_frames.data) and volume.data.dtype == single_frames.data.dtype
    np.testing.assert_allclose(volume.affine, single_frames.affine, atol=1e-9)


def test_multiframe_frames_are_ordered_and_rescaled_frame_by_frame():
    stored = ct_volume()
    name, raw = dicom_series(stored, multiframe=True)[0]
    dataset = pydicom.dcmread(io.BytesIO(raw))
    frames = list(dataset.PerFrameFunctionalGroupsSequence)
    for index, frame in enumerate(frames):
        transformation = pydicom.Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept = 1, -100 * index
        frame.PixelValueTransformationSequence = pydicom.Sequence([transformation])
    order = np.random.default_rng(2).permutation(len(frames))
    dataset.PerFrameFunctionalGroupsSequence = pydicom.Sequence([frames[index] for index in order])
    frame_bytes = stored[:, :, 0].size * 2
    dataset.PixelData = b"".join(dataset.PixelData[index * frame_bytes : (index + 1) * frame_bytes] for index in order)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    volume = read_dicom_series([(name, buffer.getvalue())])
    assert np.array_equal(volume.data, stored - 100 * np.arange(stored.shape[2]))
    np.testing.assert_allclose(volume.affine, expected_affine(), atol=1e-9)


def test_a_single_slice_gives_a_2d_image(tmp_path):
    stored = ct_volume()[:, :, :1]
    volume = assert_same_as_simpleitk(dicom_series(stored, rescale=(1, -1024)), tmp_path)
    assert volume.data.shape == SHAPE[:2]
    np.testing.assert_allclose(volume.affine[:, [0, 1, 3]], expected_affine()[:, [0, 1, 3]], atol=1e-9)


def test_an_xray_without_position_or_orientation_gives_a_2d_image_at_the_origin(tmp_path):
    pixels = ct_volume(low=0, high=4096)[:, :, 0]
    volume = assert_same_as_simpleitk([xray_image(pixels, spacing=(0.15, 0.2))], tmp_path)
    assert volume.data.shape == pixels.shape and volume.modality == "DX"
    np.testing.assert_allclose(volume.affine, expected_affine((0.15, 0.2, 1.0), (0.0, 0.0, 0.0)), atol=1e-9)


@pytest.mark.parametrize(
    "spacing, spacing_tag, expected", [((0.2, 0.3), "PixelSpacing", (0.2, 0.3)), (None, "PixelSpacing", (1.0, 1.0))]
)
def test_an_xray_takes_pixel_spacing_else_imager_pixel_spacing_else_1mm(spacing, spacing_tag, expected):
    pixels = ct_volume(low=0, high=4096)[:, :, 0]
    volume = read_dicom_series([xray_image(pixels, spacing=spacing, spacing_tag=spacing_tag)])
    np.testing.assert_allclose(volume.affine, expected_affine((*expected, 1.0), (0.0, 0.0, 0.0)), atol=1e-9)


@pytest.mark.parametrize("file_name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm"])
def test_real_files_from_pydicom_match_simpleitk(tmp_path, file_name):
    path = Path(get_testdata_file(file_name))
    volume = assert_same_as_simpleitk([(path.name, path.read_bytes())], tmp_path)
    assert volume.data.ndim == 2


# --- reading items of any kind ----------------------------------------------------------


def test_items_are_told_apart_by_content_not_name(tmp_path):
    name, raw = dicom_series(ct_volume())[0]
    dataset = pydicom.dcmread(io.BytesIO(raw))
    dataset.preamble, dataset.file_meta = None, pydicom.dataset.FileMetaDataset()
    headerless = io.BytesIO()
    dataset.save_as(headerless, implicit_vr=True, little_endian=True)
    nifti = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).to_bytes()
    assert headerless.getvalue()[128:132] != b"DICM"
    assert item_kind("scan", raw) == "dicom"
    assert item_kind("scan.png", headerless.getvalue()[:1024]) == "dicom"
    assert item_kind("x.dcm", nifti) == "nifti"
    assert item_kind("x", gzip.compress(nifti)[:1024]) == "nifti"
    assert item_kind("x.nii", b"\x89PNG\r\n\x1a\n" + bytes(100)) == "other"
    assert read_image_series([("scan", headerless.getvalue())]).data.shape == SHAPE[:2]


def test_a_nifti_item_keeps_its_stored_voxels_type_scaling_and_affine():
    stored = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    affine = np.array([[0, -0.9, 0, 10], [0, 0, 1.1, -5], [2, 0, 0, 3], [0, 0, 0, 1]], dtype=float)
    image = nib.Nifti1Image(stored, affine)
    image.header.set_slope_inter(0.5, -3)
    original = gzip.compress(image.to_bytes())
    volume = read_image_series([("t1.nii.gz", original)])
    assert volume.data.dtype == np.int16 and np.array_equal(volume.data, stored)
    assert volume.scaling == (0.5, -3.0) and volume.modality is None
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    written = nib.Nifti1Image.from_bytes(gzip.decompress(encode_nifti(volume, compress=True)))
    assert np.array_equal(written.get_fdata(), nib.Nifti1Image.from_bytes(gzip.decompress(original)).get_fdata())


def test_a_series_of_mixed_or_several_non_dicom_items_fails():
    nifti = ("a.nii", nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).to_bytes())
    dicom = dicom_series(ct_volume())[0]
    with pytest.raises(TaskDataError, match="mixes DICOM .* and NIfTI") as mixed:
        read_image_series([dicom, nifti])
    assert mixed.value.file == "a.nii"
    with pytest.raises(TaskDataError, match="2 NIfTI items in one series") as several:
        read_image_series([nifti, ("b.nii", nifti[1])])
    assert several.value.file == "b.nii"


def test_a_picture_without_pillow_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(TaskDataError, match="PNG images need Pillow") as error:
        read_image_series([("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64))])
    assert error.value.file == "photo.png"
    with pytest.raises(TaskDataError, match="not an image the export can read"):
        read_image_series([("notes.txt", b"hello")])


def test_a_png_is_a_2d_image_with_one_value_per_pixel():
    image_module = pytest.importorskip("PIL.Image")
    grey = np.random.default_rng(3).integers(0, 256, size=(12, 16), dtype=np.uint8)  # rows, columns
    buffer = io.BytesIO()
    image_module.fromarray(grey).save(buffer, format="PNG")
    volume = read_image_series([("grey.png", buffer.getvalue())])
    assert np.array_equal(volume.data, grey.T)
    colour = np.random.default_rng(4).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    image_module.fromarray(colour).save(buffer, format="PNG")
    volume = read_image_series([("colour.png", buffer.getvalue())])
    assert volume.data.shape == (16, 12) and volume.data[5, 2]["G"] == colour[2, 5, 1]
    written = nib.Nifti1Image.from_bytes(encode_nifti(volume, compress=False))
    assert written.get_data_dtype().names == ("R", "G", "B")


# --- bad input --------------------------------------------------------------------------


def test_a_file_that_is_not_dicom_fails_naming_it():
    items = dicom_series(ct_volume())
    items[3] = ("slice-0004.dcm", b"this is not a DICOM file at all" * 20)
    with pytest.raises(TaskDataError) as error:
        read_dicom_series(items)
    assert error.value.file == "slice-0004.dcm"


@pytest.mark.parametrize("keep", [200, -100], ids=["inside-the-header", "inside-the-pixels"])
def test_a_truncated_file_fails_naming_it(keep):
    items = dicom_series(ct_volume())
    items[5] = (items[5][0], items[5][1][:keep])
    with pytest.raises(TaskDataError) as error:
        read_dicom_series(items)
    assert error.value.file == items[5][0]
    if keep < 0:
        assert "truncated" in error.value.reason


def test_slices_of_more_than_one_series_fail():
    items = dicom_series(ct_volume())
    items[4] = edited(items[4], SeriesInstanceUID="1.2.3.4")
    with pytest.raises(TaskDataError, match="more than one series") as error:
        read_dicom_series(items)
    assert error.value.file == items[4][0]


def test_slices_of_more_than_one_orientation_fail():
    items = dicom_series(ct_volume())
    items[6] = edited(items[6], ImageOrientationPatient=[1, 0, 0, 0, COS20, SIN20])
    with pytest.raises(TaskDataError, match="more than one orientation") as error:
        read_dicom_series(items)
    assert error.value.file == items[6][0]


def test_slices_of_different_sizes_or_pixel_spacing_fail():
    items = dicom_series(ct_volume(), series_uid="1.2.3")
    smaller = dicom_series(ct_volume(shape=(8, 12, 8)), series_uid="1.2.3")[2]
    with pytest.raises(TaskDataError, match="different sizes: slice-0003.dcm is 8x12") as size:
        read_dicom_series(items[:2] + [smaller] + items[3:])
    assert size.value.file == "slice-0003.dcm"
    items[1] = edited(items[1], PixelSpacing=[0.8, 0.9])
    with pytest.raises(TaskDataError, match="different pixel spacing") as spacing:
        read_dicom_series(items)
    assert spacing.value.file == items[1][0]


def test_missing_slices_fail_naming_the_gap():
    items = dicom_series(ct_volume())
    gap = "4 mm between slice-0003.dcm and slice-0005.dcm, where the series' slices are 2 mm apart"
    with pytest.raises(TaskDataError, match=gap):
        read_dicom_series(items[:3] + items[4:])


def test_two_slices_at_the_same_position_fail():
    items = dicom_series(ct_volume())
    copy = edited(items[2], name="copy.dcm", SOPInstanceUID="1.2.3.4.5")
    with pytest.raises(TaskDataError, match="two slices at the same position .*slice-0003.dcm and copy.dcm") as error:
        read_dicom_series(items + [copy])
    assert error.value.file == "copy.dcm"


def test_slices_without_position_cannot_be_ordered():
    items = dicom_series(ct_volume())
    items[1] = edited(items[1], ImagePositionPatient=None)
    with pytest.raises(TaskDataError, match="has no ImagePositionPatient") as error:
        read_dicom_series(items)
    assert error.value.file == items[1][0]


def test_an_undecodable_compressed_transfer_syntax_is_named():
    name, raw = dicom_series(ct_volume())[0]
    dataset = pydicom.dcmread(io.BytesIO(raw))
    dataset.file_meta.TransferSyntaxUID = JPEG2000
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51 not really a codestream"])
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(TaskDataError, match=r"JPEG 2000 Image Compression \(1\.2\.840\.10008\.1\.2\.4\.91\)") as error:
        read_dicom_series([(name, buffer.getvalue())])
    assert error.value.file == name
    real = Path(get_testdata_file("JPEG2000.dcm"))
    if get_decoder(JPEG2000).is_available:  # Pillow, pylibjpeg or gdcm installed
        assert read_dicom_series([(real.name, real.read_bytes())]).data.shape == (256, 1024)
    else:
        with pytest.raises(TaskDataError, match=r"JPEG 2000 Image Compression .* cannot be decoded here: install"):
            read_dicom_series([(real.name, real.read_bytes())])


# --- geometry ---------------------------------------------------------------------------


def reader_volume(**arguments) -> ImageVolume:
    return read_dicom_series(dicom_series(ct_volume(), **arguments))


def assert_same_voxels_in_the_world(original: ImageVolume, placed: ImageVolume) -> None:
    """Every voxel of `placed` holds the value `original` has at the same world position."""
    indices = np.indices(placed.data.shape[:3]).reshape(3, -1)
    world = placed.affine[:3, :3] @ indices + placed.affine[:3, 3:]
    source = np.linalg.inv(original.affine)[:3] @ np.vstack([world, np.ones(indices.shape[1])])
    rounded = np.rint(source).astype(int)
    np.testing.assert_allclose(source, rounded, atol=1e-6)
    assert np.array_equal(placed.data[tuple(indices)], original.data[tuple(rounded)])


def test_a_label_on_the_readers_grid_gets_the_image_untouched():
    image = reader_volume()
    assert onto_label_grid(image, SHAPE, image.affine + 1e-5, "T1") is image


@pytest.mark.parametrize(
    "axes, flips",
    [((0, 1, 2), (False, False, True)), ((1, 0, 2), (False, False, False)), ((2, 1, 0), (True, False, True))],
    ids=["slices-reversed", "in-plane-swapped", "permuted-and-flipped"],
)
@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_a_label_with_axes_in_another_order_or_direction_gets_the_image_reoriented_exactly(axes, flips, oblique):
    image = reader_volume(column_direction=(0.0, COS20, SIN20) if oblique else (0.0, 1.0, 0.0))
    shape = tuple(SHAPE[axis] for axis in axes)
    label_affine = np.eye(4)
    label_affine[:3, 3] = image.affine[:3, 3]
    for label_axis, (axis, flip) in enumerate(zip(axes, flips, strict=False)):
        label_affine[:3, label_axis] = -image.affine[:3, axis] if flip else image.affine[:3, axis]
        if flip:
            label_affine[:3, 3] += (SHAPE[axis] - 1) * image.affine[:3, axis]
    placed = onto_label_grid(image, shape, label_affine, "T1")
    assert placed.data.shape == shape and np.array_equal(placed.affine, label_affine)
    assert_same_voxels_in_the_world(image, placed)
    assert np.array_equal(read_back(placed).data, placed.data)


def read_back(volume: ImageVolume) -> ImageVolume:
    image = nib.Nifti1Image.from_bytes(encode_nifti(volume, compress=False))
    return ImageVolume(np.asanyarray(image.dataobj), image.affine, None)


def test_a_2d_image_fits_a_label_of_one_slice_and_the_reverse():
    flat = read_dicom_series(dicom_series(ct_volume()[:, :, :1]))
    thin = onto_label_grid(flat, (*SHAPE[:2], 1), expected_affine(), "X")
    assert thin.data.shape == (*SHAPE[:2], 1) and np.array_equal(thin.data[:, :, 0], flat.data)
    one_slice = ImageVolume(flat.data[:, :, np.newaxis], flat.affine, "CT")
    assert onto_label_grid(one_slice, SHAPE[:2], expected_affine(), "X").data.shape == SHAPE[:2]
    swapped = expected_affine()[:, [1, 0, 2, 3]]
    assert np.array_equal(onto_label_grid(flat, SHAPE[1::-1], swapped, "X").data, flat.data.T)


@pytest.mark.parametrize(
    "change, shape",
    [
        (lambda affine: affine @ np.diag([1.0, 1.0, 1.1, 1.0]), SHAPE),
        (lambda affine: affine + np.array([[0, 0, 0, 0.5]] * 3 + [[0, 0, 0, 0]]), SHAPE),
        (lambda affine: affine, (16, 12, 9)),
        (lambda affine: expected_affine(column_direction=(0.0, COS20, SIN20)), SHAPE),
    ],
    ids=["slice-spacing", "shifted", "shape", "rotated"],
)
def test_a_label_on_another_grid_fails_naming_both_geometries(change, shape):
    image = reader_volume()
    with pytest.raises(TaskDataError) as error:
        onto_label_grid(image, shape, change(image.affine), "T1")
    reason = error.value.reason
    assert reason.startswith("series T1: the image's grid does not match its label's: image shape (16, 12, 8)")
    assert "spacing (0.8, 0.8, 2)" in reason and f"vs label shape {shape}" in reason and "\n" not in reason


# --- NIfTI encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_encode_nifti_round_trips_and_is_deterministic(compress):
    volume = reader_volume(column_direction=(0.0, COS20, SIN20), rescale=(0.5, -3.25))
    encoded = encode_nifti(volume, compress)
    assert encoded == encode_nifti(volume, compress)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(encoded) if compress else encoded)
    assert image.get_data_dtype() == np.float32 and np.array_equal(np.asanyarray(image.dataobj), volume.data)
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-6)
    assert image.header.get_sform(coded=True)[1] == 1 and image.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(image.header.get_qform(), volume.affine, atol=1e-5)


def test_sample_series_are_deterministic():
    assert dicom_series(ct_volume(), multiframe=True) == dicom_series(ct_volume(), multiframe=True)
    assert xray_image(ct_volume(low=0, high=99)[:, :, 0]) == xray_image(ct_volume(low=0, high=99)[:, :, 0])
