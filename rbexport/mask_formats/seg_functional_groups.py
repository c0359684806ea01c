"""A DICOM SEG's dimensions and functional groups: what says where each frame lies and what it shows.

The Dimension Index and Organization (segment number for BINARY, then the plane
position), the shared groups (orientation, pixel measures, with the spacing between
slices highdicom's volume rule gives), and each frame's per-frame groups, encoded straight
to bytes: its derivation from the source image (and frame) it lies on, its dimension index
values (counted over the planes with any segment voxel), its position and, when several
segments share the file, its segment. Also the references to every source image.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataset import Dataset

from .dicom_bytes import code_bytes, element_bytes, item_bytes, sequence_bytes
from .seg_planes import Planes

SEGMENT_NUMBER_POINTER = 0x0062000B  # ReferencedSegmentNumber
SEGMENT_GROUP_POINTER = 0x0062000A  # SegmentIdentificationSequence
POSITION_POINTER = 0x00200032  # ImagePositionPatient
POSITION_GROUP_POINTER = 0x00209113  # PlanePositionSequence
# (value, scheme, meaning) of the codes highdicom puts in every frame's derivation.
PURPOSE_OF_REFERENCE = ("121322", "DCM", "Source image for image processing operation")
DERIVATION = ("113076", "DCM", "Segmentation")


def source_references(planes: Planes) -> dict[int, bytes]:
    """The Source Image and Referenced Series Sequences: every source image, once."""
    references = [
        item_bytes(
            element_bytes(0x0008, 0x1150, b"UI", str(image.SOPClassUID).encode("ascii"))
            + element_bytes(0x0008, 0x1155, b"UI", str(image.SOPInstanceUID).encode("ascii"))
        )
        for image in planes.sources
    ]
    listed = b"".join(references)
    series = element_bytes(0x0008, 0x114A, b"SQ", listed)
    series += element_bytes(0x0020, 0x000E, b"UI", str(planes.sources[0].SeriesInstanceUID).encode("ascii"))
    return {
        0x00081115: element_bytes(0x0008, 0x1115, b"SQ", item_bytes(series)),
        0x00082112: element_bytes(0x0008, 0x2112, b"SQ", listed),
    }


def add_dimensions(dataset: Dataset, planes: Planes, included: np.ndarray, channels: bool) -> None:
    """Dimension index and organization, and the shared functional groups (orientation, pixel measures)."""
    from highdicom.spatial import get_volume_positions
    from pydicom.uid import UID

    organization = UID(_dimension_organization_uid())
    pointers = [(SEGMENT_NUMBER_POINTER, SEGMENT_GROUP_POINTER, "Referenced Segment Number")] if channels else []
    pointers.append((POSITION_POINTER, POSITION_GROUP_POINTER, "Image Position Patient"))
    index = []
    for pointer, group, label in pointers:
        item = Dataset()
        item.DimensionOrganizationUID = organization
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = group
        item.DimensionDescriptionLabel = label
        index.append(item)
    dataset.DimensionIndexSequence = index
    orientation = planes.orientation.ImageOrientationPatient
    measures = planes.pixel_measures
    if "SpacingBetweenSlices" not in measures:
        spacing, _ = get_volume_positions(image_positions=planes.positions.tolist(), image_orientation=orientation)
        if spacing is not None:
            from pydicom.valuerep import format_number_as_ds

            measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    shared = Dataset()
    shared.PlaneOrientationSequence = [planes.orientation]
    shared.PixelMeasuresSequence = [measures]
    dataset.SharedFunctionalGroupsSequence = [shared]
    organized = Dataset()
    organized.DimensionOrganizationUID = organization
    dataset.DimensionOrganizationSequence = [organized]
    if not channels and len(included) > 1:
        in_input_order = np.sort(included)
        spacing, _ = get_volume_positions(
            image_positions=planes.positions[in_input_order].tolist(), image_orientation=orientation, sort=False
        )
        if spacing is not None and spacing > 0.0:
            dataset.DimensionOrganizationType = "3D"


def _dimension_organization_uid() -> str:
    from highdicom import UID

    return str(UID())


def frame_items(
    planes: Planes, included: np.ndarray, channels: list[tuple[int | None, np.ndarray]], identified: bool = True
) -> bytes:
    """The Per-Frame Functional Groups Sequence's items: for each channel (segment number, or
    None for a LABELMAP), a frame for each of its planes in sorted order. `identified`: each
    frame names its segment (not when the shared groups name the only one)."""
    position_rank = {int(plane): rank for rank, plane in enumerate(included, 1)}
    derivations = {int(plane): _derivation(planes, int(plane)) for plane in included}
    positions = [
        sequence_bytes(0x0020, 0x9113, element_bytes(0x0020, 0x0032, b"DS", "\\".join(map(str, value)).encode("ascii")))
        for value in planes.position_values
    ]
    items = []
    for channel, (number, plane_indices) in enumerate(channels, 1):
        identification = (
            b""
            if number is None or not identified
            else sequence_bytes(0x0062, 0x000A, element_bytes(0x0062, 0x000B, b"US", struct.pack("<H", number)))
        )
        for plane in plane_indices:
            plane = int(plane)
            dimension_values = [channel, position_rank[plane]] if number is not None else [position_rank[plane]]
            content = sequence_bytes(
                0x0020,
                0x9111,
                element_bytes(0x0020, 0x9157, b"UL", struct.pack(f"<{len(dimension_values)}I", *dimension_values)),
            )
            items.append(item_bytes(derivations[plane] + content + positions[plane] + identification))
    return b"".join(items)


def _derivation(planes: Planes, plane: int) -> bytes:
    """A plane's Derivation Image Sequence: the source image (and frame) it was drawn on."""
    source = planes.sources[0] if planes.multiframe else planes.sources[plane]
    reference = element_bytes(0x0008, 0x1150, b"UI", str(source.SOPClassUID).encode("ascii"))
    reference += element_bytes(0x0008, 0x1155, b"UI", str(source.SOPInstanceUID).encode("ascii"))
    if planes.multiframe:
        reference += element_bytes(0x0008, 0x1160, b"IS", str(plane + 1).encode("ascii"))
    reference += element_bytes(0x0028, 0x135A, b"CS", b"YES")
    reference += sequence_bytes(0x0040, 0xA170, code_bytes(*PURPOSE_OF_REFERENCE))
    derivation = sequence_bytes(0x0008, 0x2112, reference) + sequence_bytes(0x0008, 0x9215, code_bytes(*DERIVATION))
    return sequence_bytes(0x0008, 0x9124, derivation)
