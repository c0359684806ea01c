"""Read label maps and write masks: the only module that touches NIfTI bytes and gzip.

Reading checks a file before trusting it: the header must be NIfTI-1 or NIfTI-2, its
dimensions must fit in the bytes the file actually holds (checked while decompressing, so
a header that claims gigabytes never makes us allocate them), and its voxels must be
whole non-negative numbers that fit an export (uint8 or uint16).

Writing keeps the source header (shape, affine, qform/sform and their codes, voxel
sizes, units) and changes only the data type and scaling. Output is deterministic:
gzip with mtime 0 and a fixed level, so the same voxels give the same bytes.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib

from .errors import TaskDataError

GZIP_MAGIC = b"\x1f\x8b"
# ISA-L level 1: as fast as its level 0 on label maps and five times smaller.
GZIP_LEVEL = 1
# Largest voxel block an export accepts: a 2048^3 uint16 volume.
MAX_DATA_BYTES = 16 * 1024**3
_CHUNK = 64 * 1024**2
_NIFTI1_HEADER_BYTES = 348
_NIFTI2_HEADER_BYTES = 540
UINT16_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class LabelMap:
    """Voxel values (uint8 or uint16, the source's shape) and the source's header."""

    values: np.ndarray
    header: nib.Nifti1Header


def read_label_map(raw: bytes) -> LabelMap:
    """Decode a .nii or .nii.gz label map; TaskDataError with a one-line reason if bad."""
    data = _decompress_checked(raw) if raw[:2] == GZIP_MAGIC else raw
    image_class, header = _parse_header(data)
    _check_size(header, len(data))
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "uif":
        raise TaskDataError(f"voxel type {_dtype_name(header)} is not a label map type (integers or floats)")
    try:
        image = image_class.from_bytes(data)
        voxels = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many kinds for corrupt input
        raise TaskDataError(f"not a readable NIfTI file ({_one_line(error)})") from None
    return LabelMap(values=to_label_values(voxels), header=image.header)


def to_label_values(voxels: np.ndarray) -> np.ndarray:
    """Whole non-negative label values as uint8 when they fit, else uint16.

    Floats are rounded to the nearest integer; NaN, infinities, negative values and
    values above 65535 are refused.
    """
    if voxels.size == 0:
        raise TaskDataError("the label map holds no voxels")
    if voxels.dtype.kind == "f":
        if not np.isfinite(voxels).all():
            raise TaskDataError("the label map holds NaN or infinite values")
        voxels = np.rint(voxels)
    low, high = voxels.min(), voxels.max()
    if low < 0:
        raise TaskDataError(f"the label map holds negative value {_number(low)}; label values are 0 and up")
    if high > UINT16_MAX:
        raise TaskDataError(f"the label map holds value {_number(high)}; an export holds values up to {UINT16_MAX}")
    return voxels.astype(smallest_unsigned(int(high)), copy=False)


def smallest_unsigned(high: int) -> type[np.unsignedinteger]:
    """uint8 when every value fits, else uint16 (SPEC 2)."""
    return np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16


def encode_mask(voxels: np.ndarray, like: nib.Nifti1Header, compress: bool) -> bytes:
    """NIfTI bytes for `voxels` with `like`'s geometry; gzip-compressed when asked."""
    header = like.copy()
    header.set_data_dtype(voxels.dtype)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    payload = image_class(voxels, None, header).to_bytes()
    return igzip.compress(payload, GZIP_LEVEL, mtime=0) if compress else payload


def _decompress_checked(raw: bytes) -> bytes:
    """Gunzip, reading the header first and never inflating more than it announces."""
    decompressor = isal_zlib.decompressobj(31)
    try:
        head = decompressor.decompress(raw, _NIFTI2_HEADER_BYTES)
        if len(head) < _NIFTI1_HEADER_BYTES and not decompressor.eof:
            raise TaskDataError(f"truncated: the gzip stream ends after {len(head)} bytes, inside the header")
        _, header = _parse_header(head)
        expected = _expected_bytes(header)
        if expected > MAX_DATA_BYTES:
            raise TaskDataError(
                f"header announces {_size(expected)} of voxels ({_shape(header)}), more than an export accepts"
            )
        parts = [head]
        produced = len(head)
        pending = decompressor.unconsumed_tail
        while produced < expected and (pending or not decompressor.eof):
            part = decompressor.decompress(pending, min(_CHUNK, expected - produced))
            pending = decompressor.unconsumed_tail
            if not part:
                break
            parts.append(part)
            produced += len(part)
        if produced < expected and pending:
            raise TaskDataError(f"corrupt gzip data after {_size(produced)} (the stream cannot be inflated further)")
        if produced < expected and not decompressor.eof:
            raise TaskDataError(
                f"truncated or corrupt: the gzip stream ends after {_size(produced)} of the "
                f"{_size(expected)} its header announces ({_shape(header)} {_dtype_name(header)})"
            )
        _drain_to_end(decompressor, pending)
    except isal_zlib.error as error:
        raise TaskDataError(f"corrupt gzip data ({_one_line(error)})") from None
    return b"".join(parts)


def _drain_to_end(decompressor, pending: bytes) -> None:
    """Read past the voxels to the gzip trailer, so its CRC and length are checked."""
    extra = 0
    while not decompressor.eof:
        if not pending:
            raise TaskDataError("truncated: the gzip stream stops before its end (the last bytes are missing)")
        extra += len(decompressor.decompress(pending, _CHUNK))
        pending = decompressor.unconsumed_tail
        if extra > _CHUNK:
            raise TaskDataError(f"more than {_size(_CHUNK)} of data after the voxels the header announces")


def _parse_header(data: bytes) -> tuple[type, nib.Nifti1Header]:
    if len(data) < _NIFTI1_HEADER_BYTES:
        raise TaskDataError(f"only {len(data)} bytes: too short for a NIfTI header")
    sizes = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    if _NIFTI1_HEADER_BYTES in sizes:
        image_class, header_class, magic, length = nib.Nifti1Image, nib.Nifti1Header, b"n+1\0", _NIFTI1_HEADER_BYTES
    elif _NIFTI2_HEADER_BYTES in sizes and len(data) >= _NIFTI2_HEADER_BYTES:
        image_class, header_class, magic, length = nib.Nifti2Image, nib.Nifti2Header, b"n+2\0", _NIFTI2_HEADER_BYTES
    else:
        raise TaskDataError("not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    try:
        header = header_class.from_fileobj(io.BytesIO(data[:length]), check=False)
    except Exception as error:
        raise TaskDataError(f"unreadable NIfTI header ({_one_line(error)})") from None
    found_magic = bytes(header["magic"])[:4]
    if found_magic != magic:
        detail = "a .hdr/.img pair; export needs single-file .nii or .nii.gz" if found_magic[:2] == b"ni" else "bad magic"
        raise TaskDataError(f"not a single-file NIfTI image ({detail})")
    ndim = int(header["dim"][0])
    if not 1 <= ndim <= 7:
        raise TaskDataError(f"corrupt header: {ndim} dimensions")
    if ndim > 4:
        raise TaskDataError(f"{ndim}-dimensional image ({_shape(header)}); label maps have 2 to 4 dimensions")
    if min(header["dim"][1 : ndim + 1]) < 1:
        raise TaskDataError(f"corrupt header: empty dimension in {_shape(header)}")
    try:
        header.get_data_dtype()
    except Exception:
        raise TaskDataError(f"unknown voxel type code {int(header['datatype'])}") from None
    return image_class, header


def _expected_bytes(header: nib.Nifti1Header) -> int:
    ndim = int(header["dim"][0])
    voxels = int(np.prod([int(d) for d in header["dim"][1 : ndim + 1]], dtype=object))
    return int(header["vox_offset"]) + voxels * header.get_data_dtype().itemsize


def _check_size(header: nib.Nifti1Header, available: int) -> None:
    expected = _expected_bytes(header)
    if expected > available:
        raise TaskDataError(
            f"truncated: header announces {_shape(header)} {_dtype_name(header)} "
            f"({_size(expected)}) but the file holds {_size(available)}"
        )


def _shape(header: nib.Nifti1Header) -> str:
    ndim = int(header["dim"][0])
    return "x".join(str(int(d)) for d in header["dim"][1 : ndim + 1])


def _dtype_name(header: nib.Nifti1Header) -> str:
    try:
        return header.get_value_label("datatype")
    except Exception:
        return f"code {int(header['datatype'])}"


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _number(value: np.generic) -> str:
    return str(int(value)) if float(value).is_integer() else str(float(value))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
