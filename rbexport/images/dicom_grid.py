"""A DICOM series' frames checked as one series, ordered along the slice normal, and their grid.

Slices are ordered by their position along the slice normal (ImagePositionPatient .
(row x column direction)), never by file name or InstanceNumber; they must be one series
(SeriesInstanceUID), one orientation, one size and pixel spacing, evenly spaced (a gap
means missing slices) with no two at the same place. The grid follows ITK's
ImageSeriesReader: the slice spacing is the distance from the first to the last slice
over their count less one, and the affine is converted from DICOM's LPS to nibabel's RAS+.
"""

from __future__ import annotations

import numpy as np

from ..errors import TaskDataError
from .dicom_frames import Frame
from .messages import listed, mm

ORIENTATION_TOLERANCE = 1e-4  # direction cosines
PIXEL_SPACING_TOLERANCE = 1e-4  # mm
SAME_POSITION_MM = 1e-3  # slices closer than this along the normal are at the same place
GAP_TOLERANCE_FRACTION = 0.01  # of the median spacing, or GAP_TOLERANCE_MM if larger
GAP_TOLERANCE_MM = 1e-3
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
IDENTITY_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def check_one_series(frames: list[Frame]) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if frame.series_uid != first.series_uid:
            raise TaskDataError(
                f"slices of more than one series: {first.label} is in series {first.series_uid}, "
                f"{frame.label} in {frame.series_uid}",
                frame.file,
            )


def check_same_format(frames: list[Frame]) -> None:
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


def ordered_along_normal(frames: list[Frame]) -> tuple[list[Frame], float]:
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


def grid_affine(first: Frame, slice_spacing: float) -> np.ndarray:
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
