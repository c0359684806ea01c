"""The source images' planes a DICOM SEG lies on, as highdicom orders and describes them.

For sources in the patient coordinate system (a Frame of Reference and plane positions):
each plane's position (and its DS values, formatted as highdicom formats them), the
shared orientation and pixel measures, and highdicom's plane order (by distance along the
normal its volume convention gives). Any other source raises NotPatientCoordinates, and
rbexport.mask_formats.dicom_seg hands it to highdicom's constructor.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DS


class NotPatientCoordinates(ValueError):
    """The source has no Frame of Reference or plane positions: highdicom's general path handles it."""


@dataclass(frozen=True)
class Planes:
    """The source's planes, in the order its frames (or files) come: where each lies and what it is."""

    sources: list[Dataset]  # single-frame images in plane order, or one multi-frame image
    multiframe: bool
    positions: np.ndarray  # (planes, 3) ImagePositionPatient, LPS mm
    position_values: list[list[Any]]  # DS values, as highdicom formats them
    orientation: Dataset  # the PlaneOrientationSequence's item
    pixel_measures: Dataset  # the PixelMeasuresSequence's item
    order: np.ndarray  # plane indices in highdicom's sorted order

    @property
    def count(self) -> int:
        return len(self.positions)


def source_planes(sources: Sequence[Dataset]) -> Planes:
    """The planes of single-frame `sources` (in the order given) or of one multi-frame image."""
    import highdicom as hd
    from highdicom.image import _Image
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector
    from highdicom.utils import get_plane_positions_of_image

    first = sources[0]
    multiframe = len(sources) == 1 and int(first.get("NumberOfFrames") or 1) > 1
    if "FrameOfReferenceUID" not in first:
        raise NotPatientCoordinates("the source images have no Frame of Reference UID")
    if multiframe:
        shared = first.SharedFunctionalGroupsSequence[0]
        orientation = hd.PlaneOrientationSequence.from_sequence(shared.PlaneOrientationSequence)
        raw_positions = [item[0].ImagePositionPatient for item in get_plane_positions_of_image(first)]
    else:
        if any("ImagePositionPatient" not in image or "ImageOrientationPatient" not in image for image in sources):
            raise NotPatientCoordinates("a source image has no plane position or orientation")
        orientation = hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, first.ImageOrientationPatient)
        raw_positions = [image.ImagePositionPatient for image in sources]
    measures = _Image._get_pixel_measures_sequence(
        source_image=first, is_multiframe=multiframe, coordinate_system=hd.CoordinateSystemNames.PATIENT
    )
    if measures is None:
        raise NotPatientCoordinates("the source images have no pixel spacing")
    measures = copy.deepcopy(measures)  # a multi-frame source's own item: the SEG's may gain a slice spacing
    values = [[DS(value, auto_format=True) for value in position] for position in raw_positions]
    positions = np.array([[float(value) for value in position] for position in raw_positions])
    normal = get_normal_vector(orientation[0].ImageOrientationPatient, index_convention=VOLUME_INDEX_CONVENTION)
    _, order = np.unique(positions @ normal, return_index=True)
    if len(order) != len(positions):
        raise NotPatientCoordinates("two source planes lie at the same position")
    return Planes(list(sources), multiframe, positions, values, orientation[0], measures[0], order)


def included_planes(planes: Planes, nonempty: np.ndarray) -> np.ndarray:
    """The planes with segment voxels, in sorted order (all of them when none has any, as highdicom does)."""
    keep = np.zeros(planes.count, dtype=bool)
    keep[nonempty] = True
    if not keep.any():
        keep[:] = True
    return planes.order[keep[planes.order]]
