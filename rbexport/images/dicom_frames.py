"""A DICOM file's frames: each 2D image's stored pixels, where it lies, and how to rescale it.

Every file is parsed once with its pixel data deferred: for the uncompressed transfer
syntaxes the frames are views of the file's own bytes (np.frombuffer), never copied
before they land in the volume; compressed ones go through pydicom's decoders. Position,
orientation, pixel spacing and rescale come from the per-frame functional groups first,
then the shared ones, then the top level (classic single-frame files).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

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

from ..errors import TaskDataError
from .messages import one_line

# Values larger than this are located, not read: the pixel data stays in the file's bytes.
DEFER_BYTES = 64 * 1024
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
NATIVE_BITS = (8, 16, 32)  # read straight from the bytes; other sizes (1-bit) go through pydicom


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


def read_file_frames(name: str, raw: bytes) -> tuple[str | None, list[Frame]]:
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
        frames = [frame_of(dataset, name, index, count, stored[index]) for index in range(count)]
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


def frame_of(dataset: Dataset, name: str, index: int, count: int, stored: np.ndarray) -> Frame:
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
