"""Read a DICOM series into one ImageVolume, with the voxel values ITK/GDCM give.

A series is a list of files: one per slice, one enhanced multi-frame file, or several of
either. Every file is parsed once with its pixel data deferred: for the uncompressed
transfer syntaxes the frames are views of the file's own bytes (np.frombuffer), never
copied before they land in the volume; compressed ones go through pydicom's decoders.

Every frame then gets its place: slices are ordered by their position along the slice
normal (ImagePositionPatient . (row x column direction)), never by file name or
InstanceNumber; they must be one series (SeriesInstanceUID), one orientation, one size
and pixel spacing, evenly spaced (a gap means missing slices) with no two at the same
place. An oblique series keeps its orientation. A single frame gives a 2D image; without
ImagePositionPatient/ImageOrientationPatient (an X-ray) it lies at the origin, unrotated.

Values are RescaleSlope * stored + RescaleIntercept, as ITK/GDCM compute them, with the
unused high bits of each stored value cleared (signed values sign-extended from
BitsStored) as GDCM does. The output type holds every value of this series exactly:
integer slopes and intercepts give the smallest of int16 and int32 that holds the
rescaled minimum and maximum (uint8 or uint16 for unsigned pixels with no rescale;
float64 beyond int32); any fractional slope or intercept gives float32 (the double
result rounded once).

Geometry follows ITK's ImageSeriesReader: the slice axis is the normal and the slice
spacing is the distance from the first to the last slice over their count less one. The
affine is converted from DICOM's LPS to nibabel's RAS+ (x and y negated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO, RawIOBase
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ..errors import StorageError, TaskDataError
from .messages import listed, mm, one_line
from .volume import ImageVolume

# Values larger than this are located, not read: the pixel data stays in the file's bytes.
DEFER_BYTES = 64 * 1024
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
NATIVE_BITS = (8, 16, 32)  # read straight from the bytes; other sizes (1-bit) go through pydicom
ORIENTATION_TOLERANCE = 1e-4  # direction cosines
PIXEL_SPACING_TOLERANCE = 1e-4  # mm
SAME_POSITION_MM = 1e-3  # slices closer than this along the normal are at the same place
GAP_TOLERANCE_FRACTION = 0.01  # of the median spacing, or GAP_TOLERANCE_MM if larger
GAP_TOLERANCE_MM = 1e-3
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
IDENTITY_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass(frozen=True, eq=False)
class Frame:
    """One 2D image of a series: its stored pixels, where it lies, and how to rescale it."""

    file: str  # the item's name
    label: str  # the file, and the frame's number in a multi-frame file
    stored: np.ndarray  # (rows, columns) stored values; often a view of the file's bytes
    bits_stored: int
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: np.ndarray | None  # (between rows, between columns) mm
    slope: float
    intercept: float
    series_uid: str | None


def read_dicom_series(items: Sequence[tuple[str, bytes]]) -> ImageVolume:
    """One series' DICOM files, (name, bytes) in any order, as a volume; TaskDataError if they are not one."""
    if not items:
        raise TaskDataError("the series has no image files")
    files = [_read_file(name, raw) for name, raw in items]
    frames = [frame for _, file_frames in files for frame in file_frames]
    modality = files[0][0]
    _check_one_series(frames)
    _check_same_format(frames)
    if len(frames) == 1:
        return ImageVolume(_voxels(frames)[:, :, 0], _affine(frames[0], slice_spacing=1.0), modality)
    ordered, slice_spacing = _ordered_along_normal(frames)
    return ImageVolume(_voxels(ordered), _affine(ordered[0], slice_spacing), modality)


@dataclass(frozen=True, eq=False)
class SeriesHeaders:
    """A DICOM series' headers and voxel grid, without its pixels (what a DICOM SEG references).

    `slices[k]` is (file index, frame index) of slice k in the order `read_dicom_series`
    stacks them (along the slice normal); `shape` and `affine` are that volume's grid.
    """

    datasets: list[Dataset]  # one per file, pixel data not read
    slices: list[tuple[int, int]]
    shape: tuple[int, ...]  # (columns, rows) or (columns, rows, slices)
    affine: np.ndarray  # RAS+


def read_dicom_headers(items: Sequence[tuple[str, bytes]]) -> SeriesHeaders:
    """One series' DICOM files, (name, bytes) in any order: their headers and grid, checked
    as `read_dicom_series` checks them; TaskDataError if they are not one series."""
    return series_headers([(name, parse_dicom_header(name, raw)) for name, raw in items])


def parse_dicom_header(name: str, source: bytes | BinaryIO | RawIOBase) -> Dataset:
    """A DICOM file's header, read up to its pixel data (from bytes, or a file that is read no further)."""
    try:
        return pydicom.dcmread(
            BytesIO(source) if isinstance(source, bytes) else source, stop_before_pixels=True, force=True
        )
    except TaskDataError:
        raise
    except StorageError:
        raise
    except Exception as error:  # truncated or not DICOM at all: any exception pydicom's parser raises
        raise TaskDataError(f"not a readable DICOM file ({one_line(error)})", name) from None


def series_headers(headers: Sequence[tuple[str, Dataset]]) -> SeriesHeaders:
    """The grid of one series from its files' headers, (name, header) in any order; checked
    as `read_dicom_series` checks a series; TaskDataError if they are not one series."""
    if not headers:
        raise TaskDataError("the series has no image files")
    datasets: list[Dataset] = []
    frames: list[Frame] = []
    where: dict[int, tuple[int, int]] = {}
    for file_index, (name, dataset) in enumerate(headers):
        try:
            if "Rows" not in dataset or "Columns" not in dataset:
                raise TaskDataError("not a DICOM image (no Rows or Columns)", name)
            count = int(dataset.get("NumberOfFrames") or 1)
            blank = np.broadcast_to(np.uint16(0), (int(dataset.Rows), int(dataset.Columns)))
            for index in range(count):
                frame = _frame(dataset, name, index, count, blank)
                where[id(frame)] = (file_index, index)
                frames.append(frame)
        except TaskDataError:
            raise
        except Exception as error:  # pydicom raises many kinds on malformed values
            raise TaskDataError(f"unreadable DICOM header ({one_line(error)})", name) from None
        datasets.append(dataset)
    _check_one_series(frames)
    _check_same_format(frames)
    rows, columns = frames[0].stored.shape
    if len(frames) == 1:
        return SeriesHeaders(datasets, [where[id(frames[0])]], (columns, rows), _affine(frames[0], 1.0))
    ordered, slice_spacing = _ordered_along_normal(frames)
    return SeriesHeaders(
        datasets,
        [where[id(frame)] for frame in ordered],
        (columns, rows, len(ordered)),
        _affine(ordered[0], slice_spacing),
    )


# --- files ------------------------------------------------------------------------------


def _read_file(name: str, raw: bytes) -> tuple[str | None, list[Frame]]:
    """A file's modality and frames."""
    dataset = _parse(name, raw, defer_larger_than=DEFER_BYTES)
    try:
        syntax = _transfer_syntax(dataset)
        if syntax == DeflatedExplicitVRLittleEndian:  # deferred offsets would point into the inflated stream
            dataset = _parse(name, raw, defer_larger_than=None)
        if "Rows" not in dataset or "Columns" not in dataset or PIXEL_DATA not in dataset:
            raise TaskDataError("not a DICOM image, or truncated (no Rows, Columns or PixelData)", name)
        samples = int(dataset.get("SamplesPerPixel", 1))
        if samples != 1:
            raise TaskDataError(
                f"colour DICOM ({dataset.get('PhotometricInterpretation')}, {samples} samples per pixel): "
                "only greyscale images can be converted",
                name,
            )
        count = int(dataset.get("NumberOfFrames") or 1)
        stored = _stored_frames(dataset, raw, syntax, count, name)
        frames = [_frame(dataset, name, index, count, stored[index]) for index in range(count)]
        modality = str(dataset.get("Modality") or "") or None
    except TaskDataError:
        raise
    except Exception as error:  # pydicom raises many kinds on malformed values
        raise TaskDataError(f"unreadable DICOM header ({one_line(error)})", name) from None
    return modality, frames


def _parse(name: str, raw: bytes, defer_larger_than: int | None) -> Dataset:
    try:
        return pydicom.dcmread(BytesIO(raw), defer_size=defer_larger_than, force=True)
    except Exception as error:  # truncated or not DICOM at all: any exception pydicom's parser raises
        raise TaskDataError(f"not a readable DICOM file ({one_line(error)})", name) from None


def _transfer_syntax(dataset: Dataset) -> UID:
    """The file meta's transfer syntax, or the encoding a file without one was read in."""
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax:
        return UID(syntax)
    implicit, little_endian = dataset.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _stored_frames(dataset: Dataset, raw: bytes, syntax: UID, count: int, name: str) -> np.ndarray:
    """The file's stored values as a (frames, rows, columns) array."""
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    bits_allocated = int(dataset.get("BitsAllocated", 16))
    if syntax in NATIVE_SYNTAXES and bits_allocated in NATIVE_BITS:
        kind = "i" if int(dataset.get("PixelRepresentation", 0)) else "u"
        order = ">" if syntax == ExplicitVRBigEndian else "<"
        dtype = np.dtype(f"{order}{kind}{bits_allocated // 8}")
        pixel_bytes = _native_pixel_bytes(dataset, raw, name)
        needed = count * rows * columns * dtype.itemsize
        if len(pixel_bytes) < needed:
            raise TaskDataError(
                f"truncated: the pixel data holds {len(pixel_bytes)} bytes; {count} frame(s) of "
                f"{columns}x{rows} {bits_allocated}-bit pixels need {needed}",
                name,
            )
        return np.frombuffer(pixel_bytes, dtype=dtype, count=count * rows * columns).reshape(count, rows, columns)
    return _decoded_frames(dataset, syntax, name).reshape(count, rows, columns)


def _native_pixel_bytes(dataset: Dataset, raw: bytes, name: str) -> bytes | memoryview:
    """The PixelData value: a view of `raw` when its reading was deferred, else the value read."""
    element: Any = dataset.get_item(PIXEL_DATA, keep_deferred=True)  # a RawDataElement: length, value_tell
    if element.length == UNDEFINED_LENGTH:
        raise TaskDataError("encapsulated pixel data in an uncompressed transfer syntax", name)
    if element.value is not None:
        return element.value
    start = element.value_tell
    return memoryview(raw)[start : start + element.length]


def _decoded_frames(dataset: Dataset, syntax: UID, name: str) -> np.ndarray:
    """Compressed pixel data through pydicom's decoders; TaskDataError naming the syntax if none can."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise TaskDataError(f"unknown transfer syntax {syntax}: its pixel data cannot be decoded", name) from None
    described = f"{syntax.name} ({syntax})"
    if not decoder.is_available:
        options = " or ".join(missing.split(" - requires ", 1)[-1] for missing in decoder.missing_dependencies)
        raise TaskDataError(f"{described} cannot be decoded here: install {options}", name)
    try:
        return dataset.pixel_array
    except Exception as error:  # the decoder's own errors: corrupt or unsupported data
        raise TaskDataError(f"{described} pixel data could not be decoded ({one_line(error)})", name) from None


def _frame(dataset: Dataset, name: str, index: int, count: int, stored: np.ndarray) -> Frame:
    """Frame `index` of a file: per-frame functional groups first, then shared ones, then the top level."""
    groups = _functional_groups(dataset, index, count, name)
    position = _attribute(dataset, groups, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _attribute(dataset, groups, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _attribute(dataset, groups, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None:
        spacing = dataset.get("ImagerPixelSpacing")
    slope = _attribute(dataset, groups, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _attribute(dataset, groups, "PixelValueTransformationSequence", "RescaleIntercept")
    return Frame(
        file=name,
        label=f"{name} frame {index + 1}" if count > 1 else name,
        stored=stored,
        bits_stored=int(dataset.get("BitsStored") or stored.dtype.itemsize * 8),
        position=_numbers(position, 3, "ImagePositionPatient", name),
        orientation=_numbers(orientation, 6, "ImageOrientationPatient", name),
        pixel_spacing=_numbers(spacing, 2, "PixelSpacing", name),
        slope=1.0 if slope in (None, "") else float(slope),
        intercept=0.0 if intercept in (None, "") else float(intercept),
        series_uid=str(dataset.get("SeriesInstanceUID") or "") or None,
    )


def _functional_groups(dataset: Dataset, index: int, count: int, name: str) -> list[Dataset]:
    """The enhanced multi-frame groups that describe frame `index` (none for a classic file)."""
    groups = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if count > 1 and not per_frame:
        raise TaskDataError(
            f"{count} frames without per-frame positions (no PerFrameFunctionalGroupsSequence): "
            "only enhanced multi-frame volumes can be converted",
            name,
        )
    if per_frame:
        if len(per_frame) != count:
            raise TaskDataError(f"{count} frames but {len(per_frame)} per-frame functional groups", name)
        groups.append(per_frame[index])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


def _attribute(dataset: Dataset, groups: list[Dataset], sequence: str, keyword: str):
    for group in groups:
        macro = group.get(sequence)
        if macro and keyword in macro[0]:
            return macro[0].get(keyword)
    return dataset.get(keyword)


def _numbers(value, count: int, keyword: str, name: str) -> np.ndarray | None:
    """A multi-valued decimal attribute as `count` finite numbers; None when absent."""
    if value is None or value == "":
        return None
    values = [value] if isinstance(value, (str, int, float)) else list(value)
    numbers = np.array([float(number) for number in values])
    if numbers.shape != (count,) or not np.isfinite(numbers).all():
        raise TaskDataError(f"malformed {keyword} {values}: {count} numbers expected", name)
    return numbers


# --- checks and order -------------------------------------------------------------------


def _check_one_series(frames: list[Frame]) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if frame.series_uid != first.series_uid:
            raise TaskDataError(
                f"slices of more than one series: {first.label} is in series {first.series_uid}, "
                f"{frame.label} in {frame.series_uid}",
                frame.file,
            )


def _check_same_format(frames: list[Frame]) -> None:
    """One size, one orientation and one pixel spacing for every frame."""
    first = frames[0]
    for frame in frames[1:]:
        if frame.stored.shape != first.stored.shape:
            raise TaskDataError(
                f"slices of different sizes: {frame.label} is {_size(frame)}, {first.label} {_size(first)}", frame.file
            )
        if _differ(frame.orientation, first.orientation, ORIENTATION_TOLERANCE):
            raise TaskDataError(
                f"more than one orientation in the series: {frame.label} has ImageOrientationPatient "
                f"{_listed(frame.orientation)}, {first.label} {_listed(first.orientation)}",
                frame.file,
            )
        if _differ(frame.pixel_spacing, first.pixel_spacing, PIXEL_SPACING_TOLERANCE):
            raise TaskDataError(
                f"slices of different pixel spacing: {frame.label} has {_listed(frame.pixel_spacing)} mm, "
                f"{first.label} {_listed(first.pixel_spacing)} mm",
                frame.file,
            )


def _ordered_along_normal(frames: list[Frame]) -> tuple[list[Frame], float]:
    """The frames in order along the slice normal, and the spacing between them (as ITK computes it)."""
    unplaced = next((frame for frame in frames if frame.position is None or frame.orientation is None), None)
    if unplaced is not None:
        raise TaskDataError(
            f"{unplaced.label} has no ImagePositionPatient or ImageOrientationPatient: "
            f"the {len(frames)} slices of the series cannot be ordered",
            unplaced.file,
        )
    orientation = frames[0].orientation
    assert orientation is not None  # checked above
    normal = _normal(orientation)
    distances = np.array([frame.position @ normal for frame in frames])
    order = np.argsort(distances, kind="stable")
    ordered = [frames[index] for index in order]
    _check_evenly_spaced(ordered, distances[order])
    extent = np.linalg.norm(ordered[-1].position - ordered[0].position)
    return ordered, float(extent / (len(ordered) - 1))


def _check_evenly_spaced(ordered: list[Frame], distances: np.ndarray) -> None:
    gaps = np.diff(distances)
    same = int(np.argmin(gaps))
    if gaps[same] < SAME_POSITION_MM:
        raise TaskDataError(
            f"two slices at the same position ({mm(distances[same])} mm along the slice normal): "
            f"{ordered[same].label} and {ordered[same + 1].label}",
            ordered[same + 1].file,
        )
    usual = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - usual)))
    if abs(gaps[worst] - usual) > max(GAP_TOLERANCE_FRACTION * usual, GAP_TOLERANCE_MM):
        raise TaskDataError(
            f"uneven slice spacing (missing slices?): {mm(gaps[worst])} mm between {ordered[worst].label} "
            f"and {ordered[worst + 1].label}, where the series' slices are {mm(usual)} mm apart",
            ordered[worst + 1].file,
        )


# --- voxels and geometry ----------------------------------------------------------------


def _voxels(frames: list[Frame]) -> np.ndarray:
    """The rescaled frames, in order, as one (columns, rows, frames) array in Fortran order."""
    checked = [_significant_bits(frame) for frame in frames]
    dtype = _output_dtype(frames, checked)
    rows, columns = frames[0].stored.shape
    volume = np.empty((columns, rows, len(frames)), dtype=dtype, order="F")
    for index, (frame, (stored, _, _)) in enumerate(zip(frames, checked, strict=True)):
        _rescale_into(volume[:, :, index], stored.T, frame.slope, frame.intercept)
    return volume


def _significant_bits(frame: Frame) -> tuple[np.ndarray, int, int]:
    """The stored values, their minimum and maximum, with the bits above BitsStored cleared
    (unsigned) or sign-extended (signed) as GDCM does, when any is set."""
    stored = frame.stored
    low, high = int(stored.min()), int(stored.max())
    unused = stored.dtype.itemsize * 8 - frame.bits_stored
    if unused <= 0:
        return stored, low, high
    allowed_low, allowed_high = _stored_range(stored.dtype, frame.bits_stored)
    if allowed_low <= low and high <= allowed_high:
        return stored, low, high
    if stored.dtype.kind == "u":
        stored = stored & np.array(allowed_high, dtype=stored.dtype)
    else:
        stored = (stored << unused) >> unused
    return stored, int(stored.min()), int(stored.max())


def _stored_range(dtype: np.dtype, bits_stored: int) -> tuple[int, int]:
    if dtype.kind == "u":
        return 0, 2**bits_stored - 1
    return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1


def _output_dtype(frames: list[Frame], checked: list[tuple[np.ndarray, int, int]]) -> np.dtype:
    """The smallest type that holds every rescaled value exactly (see the module's docstring)."""
    if not all(float(frame.slope).is_integer() and float(frame.intercept).is_integer() for frame in frames):
        return np.dtype(np.float32)
    ends: list[int] = []
    plain_unsigned = True
    for frame, (stored, low, high) in zip(frames, checked, strict=True):
        slope, intercept = int(frame.slope), int(frame.intercept)
        ends += [low * slope + intercept, high * slope + intercept]
        plain_unsigned &= stored.dtype.kind == "u" and (slope, intercept) == (1, 0)
    candidates = (np.uint8, np.uint16, np.int16, np.int32) if plain_unsigned else (np.int16, np.int32)
    for candidate in candidates:
        limits = np.iinfo(candidate)
        if limits.min <= min(ends) and max(ends) <= limits.max:
            return np.dtype(candidate)
    return np.dtype(np.float64)


def _rescale_into(target: np.ndarray, stored: np.ndarray, slope: float, intercept: float) -> None:
    """target = stored * slope + intercept, exactly for integer targets, rounded once for float32."""
    if target.dtype.kind == "f":
        target[...] = stored * np.float64(slope) + np.float64(intercept)
        return
    # Integer arithmetic in the target type wraps around; since the result fits the
    # target, it is exact even when a stored value alone does not fit.
    target[...] = stored
    if slope != 1:
        np.multiply(target, np.array(int(slope)).astype(target.dtype), out=target)
    if intercept != 0:
        np.add(target, np.array(int(intercept)).astype(target.dtype), out=target)


def _affine(first: Frame, slice_spacing: float) -> np.ndarray:
    """RAS+ voxel-to-world; in LPS its columns are row direction x column spacing,
    column direction x row spacing, normal x slice spacing, and the first position."""
    orientation = IDENTITY_ORIENTATION if first.orientation is None else first.orientation
    between_rows, between_columns = (1.0, 1.0) if first.pixel_spacing is None else first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * between_columns
    lps[:3, 1] = orientation[3:] * between_rows
    lps[:3, 2] = _normal(orientation) * slice_spacing
    lps[:3, 3] = np.zeros(3) if first.position is None else first.position
    return LPS_TO_RAS @ lps


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _differ(a: np.ndarray | None, b: np.ndarray | None, tolerance: float) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return bool(np.abs(a - b).max() > tolerance)


def _size(frame: Frame) -> str:
    rows, columns = frame.stored.shape
    return f"{columns}x{rows} pixels"


def _listed(values: np.ndarray | None) -> str:
    return "(none)" if values is None else listed(values)
