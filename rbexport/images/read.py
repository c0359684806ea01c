"""Read one series' image items into an ImageVolume, whatever they hold (SPEC 5).

Items are told apart by their content, not their names: DICOM (the "DICM" prefix at
byte 128, or a dataset that starts with a group 0002 or 0008 tag, or a `.dcm` name),
NIfTI (a NIfTI-1 or NIfTI-2 header, gzipped or not), or else a 2D picture (PNG, JPEG),
read with Pillow when it is installed. A series is one kind: any number of DICOM files,
or exactly one NIfTI file or picture.

A NIfTI item keeps its stored voxels (type and values) and its scaling (scl_slope,
scl_inter) as they are, with nibabel's affine (sform, else qform), so that writing it
again changes nothing but the header fields the export sets. A picture gets ITK's
geometry for an image with none: 1 mm pixels at the origin, axis 0 along a row, which
is RAS+ diag(-1, -1, 1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from io import BytesIO
from typing import Literal

import numpy as np
from isal import isal_zlib

from ..errors import TaskDataError
from ..nifti import GZIP_ERRORS, GZIP_MAGIC, read_stored_volume
from .dicom import read_dicom_series
from .messages import one_line
from .volume import ImageVolume

ItemKind = Literal["dicom", "nifti", "other"]
KIND_NAMES = {"dicom": "DICOM", "nifti": "NIfTI", "other": "picture"}
SNIFF_BYTES = 1024  # enough of an item to tell its kind
DICOM_PREFIX_AT = 128
DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")  # a dataset without preamble starts with group 0002 or 0008
NIFTI_MAGICS = {348: (344, (b"n+1\0", b"ni1\0")), 540: (4, (b"n+2\0", b"ni2\0"))}  # header size: (offset, magics)
PICTURE_MAGICS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
PICTURE_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
GREYSCALE_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "F"}
RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])  # NIfTI's RGB24, as nibabel spells it


def read_image_series(items: Sequence[tuple[str, bytes]]) -> ImageVolume:
    """A series' items, (name, bytes), as one volume; TaskDataError with the item at fault if they are not one image."""
    if not items:
        raise TaskDataError("the series has no image items")
    kinds = [item_kind(name, raw[:SNIFF_BYTES]) for name, raw in items]
    for (name, _), kind in zip(items, kinds, strict=True):
        if kind != kinds[0]:
            raise TaskDataError(
                f"the series mixes {KIND_NAMES[kinds[0]]} ({items[0][0]}) and {KIND_NAMES[kind]} ({name}) items", name
            )
    if kinds[0] == "dicom":
        return read_dicom_series(items)
    if len(items) > 1:
        raise TaskDataError(
            f"{len(items)} {KIND_NAMES[kinds[0]]} items in one series: only DICOM series may have more than one",
            items[1][0],
        )
    name, raw = items[0]
    return _read_nifti(name, raw) if kinds[0] == "nifti" else _read_picture(name, raw)


def item_kind(name: str, first_bytes: bytes) -> ItemKind:
    """What an item holds, from its first bytes (SNIFF_BYTES of them); its name only breaks a tie."""
    if first_bytes[DICOM_PREFIX_AT : DICOM_PREFIX_AT + 4] == b"DICM" or first_bytes[:2] in DICOM_FIRST_GROUPS:
        return "dicom"
    if _is_nifti_header(_gunzipped_start(first_bytes) if first_bytes[:2] == GZIP_MAGIC else first_bytes):
        return "nifti"
    if name.lower().endswith(".dcm"):
        return "dicom"
    return "other"


def _gunzipped_start(first_bytes: bytes) -> bytes:
    try:
        return isal_zlib.decompressobj(31).decompress(first_bytes, max(NIFTI_MAGICS))
    except GZIP_ERRORS:
        return b""


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 4:
        return False
    for size in {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}:
        if size in NIFTI_MAGICS:
            offset, magics = NIFTI_MAGICS[size]
            return head[offset : offset + 4] in magics
    return False


def _read_nifti(name: str, raw: bytes) -> ImageVolume:
    try:
        header, voxels = read_stored_volume(raw)
    except TaskDataError as error:
        raise TaskDataError(error.reason, name) from None
    slope, inter = header.get_slope_inter()
    scaling = None if slope is None else (float(slope), float(inter or 0.0))
    return ImageVolume(voxels, header.get_best_affine(), modality=None, scaling=scaling)


def _read_picture(name: str, raw: bytes) -> ImageVolume:
    """A PNG or JPEG (whatever Pillow opens) as a 2D image: greyscale values, or RGB24."""
    unreadable = "not an image the export can read (DICOM, NIfTI, PNG or JPEG)"
    picture_format = next((label for magic, label in PICTURE_MAGICS.items() if raw.startswith(magic)), None)
    try:
        from PIL import Image
    except ImportError:
        needs_pillow = f"{picture_format} images need Pillow, which is not installed (pip install pillow)"
        raise TaskDataError(needs_pillow if picture_format else unreadable, name) from None
    try:
        with Image.open(BytesIO(raw)) as picture:
            pixels = np.asarray(_greyscale_or_rgb(picture))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise TaskDataError(f"{unreadable}: {one_line(error)}", name) from None
    if pixels.ndim == 3:
        pixels = np.ascontiguousarray(pixels).view(RGB)[..., 0]
    return ImageVolume(pixels.T, PICTURE_AFFINE.copy(), modality=None)


def _greyscale_or_rgb(picture):
    if picture.mode in GREYSCALE_MODES:
        return picture
    return picture.convert("L" if picture.mode in ("1", "LA") else "RGB")
