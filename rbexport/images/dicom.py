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

Here, the series and its headers; a file's frames are rbexport.images.dicom_frames',
their checks, order and grid dicom_grid's, the voxel values dicom_values'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO, RawIOBase
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..errors import StorageError, TaskDataError
from .dicom_frames import Frame, frame_of, read_file_frames
from .dicom_grid import check_one_series, check_same_format, grid_affine, ordered_along_normal
from .dicom_values import rescaled_voxels
from .messages import one_line
from .volume import ImageVolume


def read_dicom_series(items: Sequence[tuple[str, bytes]]) -> ImageVolume:
    """One series' DICOM files, (name, bytes) in any order, as a volume; TaskDataError if they are not one."""
    if not items:
        raise TaskDataError("the series has no image files")
    files = [read_file_frames(name, raw) for name, raw in items]
    frames = [frame for _, file_frames in files for frame in file_frames]
    modality = files[0][0]
    check_one_series(frames)
    check_same_format(frames)
    if len(frames) == 1:
        return ImageVolume(rescaled_voxels(frames)[:, :, 0], grid_affine(frames[0], slice_spacing=1.0), modality)
    ordered, slice_spacing = ordered_along_normal(frames)
    return ImageVolume(rescaled_voxels(ordered), grid_affine(ordered[0], slice_spacing), modality)


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
                frame = frame_of(dataset, name, index, count, blank)
                where[id(frame)] = (file_index, index)
                frames.append(frame)
        except TaskDataError:
            raise
        except Exception as error:  # pydicom raises many kinds on malformed values
            raise TaskDataError(f"unreadable DICOM header ({one_line(error)})", name) from None
        datasets.append(dataset)
    check_one_series(frames)
    check_same_format(frames)
    rows, columns = frames[0].stored.shape
    if len(frames) == 1:
        return SeriesHeaders(datasets, [where[id(frames[0])]], (columns, rows), grid_affine(frames[0], 1.0))
    ordered, slice_spacing = ordered_along_normal(frames)
    return SeriesHeaders(
        datasets,
        [where[id(frame)] for frame in ordered],
        (columns, rows, len(ordered)),
        grid_affine(ordered[0], slice_spacing),
    )
