"""SPEC 1 (label maps), 2 (uint8/uint16, deterministic output) and 3 (bad input) for NIfTI I/O."""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from spec_helpers import AFFINE, PLAIN_MAP, decode, nifti_bytes

from rbexport.errors import TaskDataError
from rbexport.nifti import encode_mask, read_label_map

# Header fields that carry geometry; an export must copy every one exactly.
GEOMETRY_FIELDS = [
    "dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units",
    "dim_info", "slice_code", "slice_start", "slice_end", "slice_duration", "toffset",
]  # fmt: skip


def roundtrip(voxels: np.ndarray, compress: bool = True, **kwargs) -> nib.Nifti1Image:
    """Read a label map like the export does, write it back, decode the output."""
    label_map = read_label_map(nifti_bytes(voxels, compress=compress, **kwargs))
    return decode(encode_mask(label_map.values, label_map.header, compress))


def refusal(raw: bytes) -> str:
    with pytest.raises(TaskDataError) as caught:
        read_label_map(raw)
    reason = str(caught.value)
    assert reason and "\n" not in reason, "a reason is one line"
    return reason


def test_reads_nii_and_nii_gz_alike():
    from_gz = read_label_map(nifti_bytes(PLAIN_MAP, compress=True))
    from_nii = read_label_map(nifti_bytes(PLAIN_MAP, compress=False))
    np.testing.assert_array_equal(from_gz.values, PLAIN_MAP)
    np.testing.assert_array_equal(from_nii.values, PLAIN_MAP)
    assert from_gz.values.dtype == from_nii.values.dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
def test_integer_maps_are_read_as_they_are(dtype):
    voxels = np.array([[[0, 1], [2, 3]], [[4, 0], [100, 127]]], dtype=dtype)
    values = read_label_map(nifti_bytes(voxels)).values
    np.testing.assert_array_equal(values, [[[0, 1], [2, 3]], [[4, 0], [100, 127]]])


def test_float_maps_are_rounded_to_the_nearest_integer():
    voxels = np.array(
        [
            [[0.0, 0.2], [0.9999, 1.0001]],
            [[1.6, 2.4], [2.9997, 300.0004]],
        ],
        dtype=np.float32,
    )
    values = read_label_map(nifti_bytes(voxels)).values
    np.testing.assert_array_equal(
        values,
        np.array(
            [
                [[0, 0], [1, 1]],
                [[2, 2], [3, 300]],
            ]
        ),
    )
    assert values.dtype == np.uint16  # 300 does not fit uint8


def test_output_is_uint8_when_every_value_fits():
    voxels = np.array([[[0, 255], [1, 2]]], dtype=np.uint16)  # stored wide, values fit a byte
    output = roundtrip(voxels)
    assert output.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(output.dataobj), [[[0, 255], [1, 2]]])


def test_output_is_uint16_when_a_value_exceeds_255():
    voxels = np.array([[[0, 256], [1, 65535]]], dtype=np.int32)
    output = roundtrip(voxels)
    assert output.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asanyarray(output.dataobj), [[[0, 256], [1, 65535]]])


def test_affine_voxel_sizes_qform_sform_and_units_are_preserved_exactly():
    image = nib.Nifti1Image(PLAIN_MAP, AFFINE)
    qform = np.array([[-0.7, 0, 0, 90.0], [0, 0.85, 0, -126.0], [0, 0, 2.5, -72.0], [0, 0, 0, 1]])
    image.header.set_qform(qform, code=1)  # scanner
    image.header.set_sform(AFFINE, code=2)  # aligned
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_dim_info(freq=0, phase=1, slice=2)
    source = image.header

    label_map = read_label_map(gzip.compress(image.to_bytes(), mtime=0))
    output = decode(encode_mask(label_map.values, label_map.header, compress=True)).header

    for field in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(output[field], source[field], err_msg=field)
    np.testing.assert_array_equal(output.get_qform(coded=True)[0], source.get_qform(coded=True)[0])
    np.testing.assert_array_equal(output.get_sform(coded=True)[0], source.get_sform(coded=True)[0])
    assert output.get_qform(coded=True)[1] == 1 and output.get_sform(coded=True)[1] == 2
    assert output.get_zooms() == source.get_zooms()
    assert output.get_xyzt_units() == ("mm", "msec")


def test_2d_maps_keep_their_shape():
    xray = np.array(
        [
            [0, 1, 1],
            [0, 1, 0],
            [2, 2, 0],
            [0, 0, 0],
        ],
        dtype=np.uint8,
    )
    output = roundtrip(xray, affine=np.diag([0.2, 0.3, 1.0, 1.0]))
    assert output.shape == (4, 3)
    assert int(output.header["dim"][0]) == 2
    assert output.header.get_zooms() == (np.float32(0.2), np.float32(0.3))
    np.testing.assert_array_equal(np.asanyarray(output.dataobj), xray)


def test_4d_maps_keep_their_shape():
    timeline = np.array(
        [
            [[[0, 1], [1, 1]], [[0, 0], [2, 0]]],
            [[[3, 0], [0, 0]], [[0, 2], [2, 2]]],
        ],
        dtype=np.uint8,
    )
    output = roundtrip(timeline)
    assert output.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(np.asanyarray(output.dataobj), timeline)


def test_output_bytes_are_deterministic():
    label_map = read_label_map(nifti_bytes(PLAIN_MAP))
    first = encode_mask(label_map.values, label_map.header, compress=True)
    again = encode_mask(read_label_map(nifti_bytes(PLAIN_MAP)).values, label_map.header, compress=True)
    assert first == again
    assert first[:2] == b"\x1f\x8b"
    assert struct.unpack("<I", first[4:8])[0] == 0, "gzip mtime must be 0"
    assert gzip.decompress(first) == encode_mask(label_map.values, label_map.header, compress=False)


def test_uncompressed_output_is_plain_nifti():
    label_map = read_label_map(nifti_bytes(PLAIN_MAP))
    raw = encode_mask(label_map.values, label_map.header, compress=False)
    assert struct.unpack("<i", raw[:4])[0] == 348
    assert raw[344:348] == b"n+1\0"
    np.testing.assert_array_equal(np.asanyarray(decode(raw).dataobj), PLAIN_MAP)


def test_nifti2_maps_are_read_and_written_as_nifti2():
    label_map = read_label_map(gzip.compress(nib.Nifti2Image(PLAIN_MAP, AFFINE).to_bytes(), mtime=0))
    raw = gzip.decompress(encode_mask(label_map.values, label_map.header, compress=True))
    assert struct.unpack("<i", raw[:4])[0] == 540
    output = nib.Nifti2Image.from_bytes(raw)
    np.testing.assert_array_equal(np.asanyarray(output.dataobj), PLAIN_MAP)
    np.testing.assert_array_equal(output.affine, nib.Nifti2Image(PLAIN_MAP, AFFINE).affine)


def test_big_endian_maps_are_read_and_written_correctly():
    voxels = np.array([[[0, 300], [1, 2]]], dtype=">u2")
    header = nib.Nifti1Header().as_byteswapped(">")
    label_map = read_label_map(nib.Nifti1Image(voxels, AFFINE, header).to_bytes())
    np.testing.assert_array_equal(label_map.values, [[[0, 300], [1, 2]]])
    output = decode(encode_mask(label_map.values, label_map.header, compress=False))
    np.testing.assert_array_equal(np.asanyarray(output.dataobj), [[[0, 300], [1, 2]]])


# SPEC 3: bad input is refused with a one-line reason.


def test_truncated_gzip_is_refused():
    whole = nifti_bytes(np.ones((20, 20, 20), dtype=np.uint8) * np.arange(20, dtype=np.uint8))
    assert "truncated" in refusal(whole[: len(whole) // 2])


def test_gzip_missing_its_last_bytes_is_refused():
    whole = nifti_bytes(PLAIN_MAP)
    assert "truncated" in refusal(whole[:-4])


def test_gzip_cut_inside_the_header_is_refused():
    whole = gzip.compress(nib.Nifti1Image(PLAIN_MAP, AFFINE).to_bytes(), mtime=0)
    reason = refusal(whole[:60])
    assert "truncated" in reason or "too short" in reason


def test_truncated_nii_is_refused():
    whole = nifti_bytes(np.zeros((10, 10, 10), dtype=np.uint16), compress=False)
    reason = refusal(whole[:1000])
    assert reason.startswith("truncated: header announces 10x10x10 uint16")


def test_corrupt_gzip_is_refused():
    whole = bytearray(nifti_bytes(np.arange(1000, dtype=np.uint16).reshape(10, 10, 10)))
    whole[-8:-4] = bytes(4)  # wrong CRC
    assert "corrupt gzip data" in refusal(bytes(whole))


def test_a_file_that_is_not_nifti_is_refused():
    assert "not a NIfTI file" in refusal(b"%PDF-1.7 " + bytes(500))
    assert "not a NIfTI file" in refusal(gzip.compress(b"<html>" + bytes(600)))
    assert "too short" in refusal(b"tiny")


def test_a_header_claiming_gigabytes_is_refused_before_allocating():
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint16)
    header.set_data_shape((4096, 4096, 4096))  # 128 GiB
    small_file = header.binaryblock + bytes(4) + bytes(1000)
    tracemalloc.start()
    try:
        huge = refusal(gzip.compress(small_file))
        header.set_data_shape((1024, 1024, 1024))  # 2 GiB, not in the 1 KiB the file holds
        large_gz = refusal(gzip.compress(header.binaryblock + bytes(4) + bytes(1000)))
        large_nii = refusal(header.binaryblock + bytes(4) + bytes(1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert huge == "header announces 128.0 GiB of voxels (4096x4096x4096), more than an export accepts"
    assert (
        large_gz
        == large_nii
        == "truncated: header announces 1024x1024x1024 uint16 (2.0 GiB) but the file holds 1.3 KiB"
    )
    assert peak < 16 * 1024**2


def test_complex_voxels_are_refused():
    assert "complex64" in refusal(nifti_bytes(np.ones((2, 2, 2), dtype=np.complex64)))


def test_rgb_voxels_are_refused():
    rgb = np.zeros((2, 2, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    reason = refusal(nifti_bytes(rgb))
    assert "RGB" in reason and "not a label map type" in reason


def test_5d_maps_are_refused():
    reason = refusal(nifti_bytes(np.zeros((2, 2, 2, 2, 2), dtype=np.uint8)))
    assert reason == "5-dimensional image (2x2x2x2x2); label maps have 2 to 4 dimensions"


def test_nan_is_refused():
    voxels = np.array([[[0.0, 1.0], [np.nan, 2.0]]], dtype=np.float32)
    assert refusal(nifti_bytes(voxels)) == "the label map holds NaN or infinite values"


def test_negative_values_are_refused():
    voxels = np.array([[[0, 1], [-3, 2]]], dtype=np.int16)
    assert refusal(nifti_bytes(voxels)) == "the label map holds negative value -3; label values are 0 and up"


def test_values_above_65535_are_refused():
    voxels = np.array([[[0, 1], [65536, 2]]], dtype=np.int32)
    assert refusal(nifti_bytes(voxels)) == "the label map holds value 65536; an export holds values up to 65535"
