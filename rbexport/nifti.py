"""Read label maps and write masks: the only module that touches NIfTI bytes and gzip.

Reading checks a file before trusting it: the header must be NIfTI-1 or NIfTI-2, its
dimensions must fit in the bytes the file actually holds (checked while decompressing, so
a header that claims gigabytes never makes us allocate them), and its voxels must be
whole non-negative numbers that fit an export (uint8 or uint16).

Writing keeps the source header (shape, affine, qform/sform and their codes, voxel
sizes, units) and changes only the data type and scaling. A mask's voxels are written by
a `Fill` straight into the buffer that holds its header, and compressed in place. Output
is deterministic: ISA-L gzip with mtime 0 and a fixed level, so the same voxels give the
same bytes.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib
from nibabel.volumeutils import native_code

from .errors import TaskDataError

GZIP_MAGIC = b"\x1f\x8b"
# ISA-L level 1: as fast as its level 0 on label maps and five times smaller.
GZIP_LEVEL = 1
# Largest voxel block an export accepts: a 2048^3 uint16 volume.
MAX_DATA_BYTES = 16 * 1024**3
_CHUNK = 64 * 1024**2
_NIFTI1_HEADER_BYTES = 348
_NIFTI2_HEADER_BYTES = 540
_MAX_HEADER_BYTES = 1024**2  # header and extensions
# What a mask reader takes first, to learn from the header how much more the file may hold.
MASK_HEAD_BYTES = _MAX_HEADER_BYTES
UINT16_MAX = np.iinfo(np.uint16).max

# What a corrupt gzip stream raises (isal has no type hints: mypy sees Any).
GZIP_ERRORS: tuple[type[BaseException], ...] = (cast(type[BaseException], isal_zlib.error),)


@dataclass(frozen=True)
class Fill:
    """How to write a mask's voxels into a zeroed flat array (file order) of type `dtype`."""

    write: Callable[[np.ndarray], None]
    dtype: type | np.dtype


@dataclass(frozen=True)
class LabelMap:
    """Voxel values (uint8 or uint16, the source's shape, in file order) and the source's header."""

    values: np.ndarray
    header: nib.Nifti1Header


def read_label_map(raw: bytes) -> LabelMap:
    """Decode a .nii or .nii.gz label map; TaskDataError with a one-line reason if bad."""
    header, voxels = read_stored_volume(raw)
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "uif":
        raise TaskDataError(f"voxel type {_dtype_name(header)} is not a label map type (integers or floats)")
    try:
        slope, inter = header.get_slope_inter()
    except Exception:  # nibabel's HeaderDataError: a valid slope with a NaN or infinite intercept
        raise TaskDataError(
            f"corrupt header: scaling scl_slope {_number(header['scl_slope'])}, "
            f"scl_inter {_number(header['scl_inter'])} is not finite"
        ) from None
    if slope is not None and (slope, inter or 0.0) != (1.0, 0.0):
        voxels = voxels * np.float64(slope) + np.float64(inter or 0.0)
    return LabelMap(values=to_label_values(voxels), header=header)


def read_stored_volume(raw: bytes) -> tuple[nib.Nifti1Header, np.ndarray]:
    """A checked .nii or .nii.gz file's header and its voxels as stored (file order, unscaled, read-only)."""
    header, voxel_bytes = _gunzip_checked(raw) if raw[:2] == GZIP_MAGIC else _split_checked(raw)
    voxels = np.frombuffer(voxel_bytes, dtype=header.get_data_dtype(), count=_voxel_count(header))
    return header, voxels.reshape(_dims(header), order="F")


def peek_volume(raw: bytes) -> tuple[int, int] | None:
    """(voxels, bytes per voxel) a label map announces, from its header alone; None if unreadable."""
    try:
        head = (
            isal_zlib.decompressobj(31).decompress(raw, _NIFTI2_HEADER_BYTES)
            if raw[:2] == GZIP_MAGIC
            else raw[:_NIFTI2_HEADER_BYTES]
        )
        _, header = _parse_header(head if _NIFTI2_HEADER_BYTES in _header_sizes(head) else head[:_NIFTI1_HEADER_BYTES])
        return _voxel_count(header), header.get_data_dtype().itemsize
    except (TaskDataError, GZIP_ERRORS[0]):
        return None


def max_file_bytes(head: bytes) -> int | None:
    """The most bytes a label map file starting with `head` may hold, from its header: the
    voxels it announces, gzip's overhead, and what a reader tolerates after them; None when
    the header cannot be read (decoding `head` says why)."""
    try:
        compressed = head[:2] == GZIP_MAGIC
        start = isal_zlib.decompressobj(31).decompress(head, _NIFTI2_HEADER_BYTES) if compressed else head
        sizes = _header_sizes(start)
        _, header = _parse_header(start if _NIFTI2_HEADER_BYTES in sizes else start[:_NIFTI1_HEADER_BYTES])
        expected = _expected_bytes(header)
    except (TaskDataError, GZIP_ERRORS[0]):
        return None
    if expected > MAX_DATA_BYTES:
        return None
    return expected + (expected // 64 if compressed else 0) + _CHUNK


def to_label_values(voxels: np.ndarray) -> np.ndarray:
    """Whole non-negative label values as uint8 when they fit, else uint16.

    Floats are rounded to the nearest integer; NaN, infinities, negative values and
    values above 65535 are refused. Keeps the array's memory order.
    """
    if voxels.size == 0:
        raise TaskDataError("the label map holds no voxels")
    if voxels.dtype.kind == "f":
        if not np.isfinite(voxels).all():
            raise TaskDataError("the label map holds NaN or infinite values")
        voxels = np.rint(voxels)
    if voxels.dtype.kind != "u":
        low = voxels.min()
        if low < 0:
            raise TaskDataError(f"the label map holds negative value {_number(low)}; label values are 0 and up")
    high = voxels.max()
    if high > UINT16_MAX:
        raise TaskDataError(f"the label map holds value {_number(high)}; an export holds values up to {UINT16_MAX}")
    target = np.dtype(smallest_unsigned(int(high)))
    if voxels.dtype.kind == "i" and voxels.dtype.itemsize == target.itemsize and voxels.dtype.isnative:
        return voxels.view(target)  # non-negative: the same bits
    return voxels.astype(target, copy=False)


def smallest_unsigned(high: int) -> type[np.unsignedinteger]:
    """uint8 when every value fits, else uint16 (SPEC 2)."""
    return np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16


def mask_header(like: nib.Nifti1Header, dtype: type | np.dtype) -> bytes:
    """The bytes before the voxels of a mask with `like`'s geometry and type `dtype`.

    The same bytes nibabel writes: the header with its extensions, unscaled (slope 1,
    intercept 0), padded to the data offset.
    """
    header = like.copy()
    header.set_data_dtype(dtype)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    header["vox_offset"] = _data_offset(header)
    stream = io.BytesIO()
    header.write_to(stream)
    head = stream.getvalue()
    return head + bytes(max(0, int(header.get_data_offset()) - len(head)))


def encode_fill(fill: Fill, like: nib.Nifti1Header, compress: bool, head: bytes | None = None) -> bytes:
    """A mask file whose voxels `fill` writes into a zeroed array; gzip-compressed when asked.

    The voxels are written straight after the header in one buffer, so the payload is
    never copied; pages the fill leaves at zero are never touched.
    """
    head = mask_header(like, fill.dtype) if head is None else head
    dtype = np.dtype(fill.dtype)
    buffer = np.zeros(len(head) + _voxel_count(like) * dtype.itemsize, dtype=np.uint8)
    buffer[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    voxels = buffer[len(head) :].view(dtype)
    fill.write(voxels)
    if dtype.itemsize > 1 and like.endianness != native_code:
        voxels.byteswap(inplace=True)  # the header's byte order, as nibabel writes it
    return igzip.compress(buffer, GZIP_LEVEL, mtime=0) if compress else buffer.tobytes()


def encode_mask(voxels: np.ndarray, like: nib.Nifti1Header, compress: bool) -> bytes:
    """NIfTI bytes for `voxels` (an array of `like`'s shape) with `like`'s geometry."""

    def write(out: np.ndarray) -> None:
        out[:] = voxels.reshape(-1, order="F")

    return encode_fill(Fill(write, voxels.dtype.type), like, compress)


def _gunzip_checked(raw: bytes) -> tuple[nib.Nifti1Header, bytes]:
    """Gunzip the header, then exactly the voxels it announces (never more), then check the end."""
    decompressor = isal_zlib.decompressobj(31)
    pending = raw

    def inflate(count: int) -> bytes:
        nonlocal pending
        part = decompressor.decompress(pending, count)
        pending = decompressor.unconsumed_tail
        return part

    try:
        head = inflate(_NIFTI1_HEADER_BYTES)
        if len(head) < _NIFTI1_HEADER_BYTES and not decompressor.eof:
            raise TaskDataError(f"truncated: the gzip stream ends after {len(head)} bytes, inside the header")
        if _NIFTI2_HEADER_BYTES in _header_sizes(head):
            head += inflate(_NIFTI2_HEADER_BYTES - len(head))
        _, header = _parse_header(head)
        expected = _expected_bytes(header)
        if expected > MAX_DATA_BYTES:
            raise TaskDataError(
                f"header announces {_size(expected)} of voxels ({_shape(header)}), more than an export accepts"
            )
        offset = _data_offset(header)
        head += inflate(offset - len(head)) if offset > len(head) else b""
        header = _parse_extensions(header, head[:offset])
        voxel_bytes = inflate(expected - offset)
        produced = len(head) + len(voxel_bytes)
        if produced < expected and pending:
            raise TaskDataError(f"corrupt gzip data after {_size(produced)} (the stream cannot be inflated further)")
        if produced < expected and not decompressor.eof:
            raise TaskDataError(
                f"truncated or corrupt: the gzip stream ends after {_size(produced)} of the "
                f"{_size(expected)} its header announces ({_shape(header)} {_dtype_name(header)})"
            )
        _check_size(header, produced)
        _drain_to_end(decompressor, pending)
    except GZIP_ERRORS as error:
        raise TaskDataError(f"corrupt gzip data ({_one_line(error)})") from None
    return header, voxel_bytes


def _split_checked(raw: bytes) -> tuple[nib.Nifti1Header, memoryview]:
    """An uncompressed .nii: its header, and a view of its voxels (no copy)."""
    _, header = _parse_header(raw)
    _check_size(header, len(raw))
    offset = _data_offset(header)
    header = _parse_extensions(header, raw[:offset])
    return header, memoryview(raw)[offset : _expected_bytes(header)]


def _data_offset(header: nib.Nifti1Header) -> int:
    """Where the voxels start: vox_offset, or right after the header when it says less."""
    offset = max(int(header["vox_offset"]), int(header["sizeof_hdr"]) + 4)
    if offset > _MAX_HEADER_BYTES:
        raise TaskDataError(f"corrupt header: voxels said to start at byte {offset}")
    return offset


def _parse_extensions(header: nib.Nifti1Header, head: bytes) -> nib.Nifti1Header:
    """The header again, read with the extensions that sit between it and the voxels."""
    try:
        return type(header).from_fileobj(io.BytesIO(head), check=False)
    except Exception as error:
        raise TaskDataError(f"unreadable NIfTI header extensions ({_one_line(error)})") from None


def _header_sizes(data: bytes) -> set[int]:
    return {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]} if len(data) >= 4 else set()


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
        detail = (
            "a .hdr/.img pair; export needs single-file .nii or .nii.gz" if found_magic[:2] == b"ni" else "bad magic"
        )
        raise TaskDataError(f"not a single-file NIfTI image ({detail})")
    ndim = int(header["dim"][0])
    if not 1 <= ndim <= 7:
        raise TaskDataError(f"corrupt header: {ndim} dimensions")
    if ndim > 4:
        raise TaskDataError(f"{ndim}-dimensional image ({_shape(header)}); label maps have 2 to 4 dimensions")
    if min(header["dim"][1 : ndim + 1]) < 1:
        raise TaskDataError(f"corrupt header: empty dimension in {_shape(header)}")
    try:
        dtype = header.get_data_dtype()
    except Exception:
        raise TaskDataError(f"unknown voxel type code {int(header['datatype'])}") from None
    if dtype.itemsize == 0:  # DT_UNKNOWN (0), or a type numpy has no size for here (float128)
        raise TaskDataError(f"voxel type code {int(header['datatype'])} ({_dtype_name(header)}) has no voxel size")
    _check_numbers(header, ndim)
    return image_class, header


def _check_numbers(header: nib.Nifti1Header, ndim: int) -> None:
    """The header's numbers that reading and writing use, refused when NaN, infinite or out
    of range: where the voxels start, the voxel sizes and the voxel-to-world transform."""
    offset = float(header["vox_offset"])
    if not math.isfinite(offset) or not 0 <= offset <= _MAX_HEADER_BYTES:
        raise TaskDataError(f"corrupt header: vox_offset is {_number(header['vox_offset'])}")
    zooms = [float(size) for size in header["pixdim"][1 : ndim + 1]]
    if not all(math.isfinite(size) for size in zooms):
        raise TaskDataError(f"corrupt header: voxel sizes (pixdim) {zooms} are not finite")
    try:
        affine = header.get_best_affine()
    except Exception as error:  # nibabel's checks of the quaternion
        raise TaskDataError(f"corrupt header: no voxel-to-world transform ({_one_line(error)})") from None
    if not np.isfinite(affine).all():
        raise TaskDataError("corrupt header: the voxel-to-world transform (qform/sform) holds NaN or infinite values")


def _dims(header: nib.Nifti1Header) -> tuple[int, ...]:
    return tuple(int(size) for size in header["dim"][1 : int(header["dim"][0]) + 1])


def _voxel_count(header: nib.Nifti1Header) -> int:
    return math.prod(_dims(header))


def _expected_bytes(header: nib.Nifti1Header) -> int:
    return _data_offset(header) + _voxel_count(header) * header.get_data_dtype().itemsize


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


def size_text(count: int) -> str:
    """A byte count as a person reads it: `1.5 GiB`."""
    return _size(count)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _number(value: np.generic) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
