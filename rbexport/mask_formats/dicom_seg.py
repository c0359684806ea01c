"""DICOM SEG masks (`mask_format = dicom-seg`): one Segmentation object per series, by highdicom.

A series' SEG references the DICOM images the series' `items` name (only their headers
are read): it lies on their grid, each frame derived from the source image (or frame)
at its position. The label map is put onto that grid as rbexport.images puts images
onto a label's (axis order and flips only; any other difference fails with both grids).
Here: the SEG's segment descriptions and identity, and its two encoders; its segments are
rbexport.mask_formats.segments', its frames seg_frames', the file seg_writer's (written
directly), or highdicom's constructor's for images without patient coordinates.

- Segments: one per instance with voxels (one per category in semantic exports),
  numbered 1, 2, ... in instance (category number) order. SegmentLabel is the category's
  name; Segmented Property Category and Type come from segment_codes.json, else SNOMED CT
  85756007 "Tissue" (rbexport.mask_formats.segment_codes); algorithm type MANUAL; the
  display colour is the taxonomy's (else the fixed palette's), as CIELab.
- Type (`seg_type`): LABELMAP (one frame per slice, each pixel its segment's number) or
  BINARY (one 1-bit frame per segment and slice). auto: LABELMAP when no voxel belongs to
  two segments, else BINARY; binary: BINARY always; labelmap: LABELMAP always, and a series
  whose segments overlap fails its task. Frames with no segment voxels are omitted.
- Compression (`seg_compression`): a LABELMAP's frames uncompressed, RLE Lossless or
  JPEG-LS Lossless; BINARY frames are never compressed (a series that would need one with
  a compression asked for fails its task; seg_type binary with a compression is refused
  by rbexport.options).
- UIDs are derived from the source series and the SEG's path in the export, so exporting
  the same series again gives the same SOP Instance UID (a PACS replaces, never
  duplicates); creation dates and times are those of the export.

A series whose items are not DICOM, or that has none, fails the task with a reason.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..errors import TaskDataError
from ..images.dicom import SeriesHeaders
from ..nifti import LabelMap
from ..structures.masks import VoxelIndex
from .colours import RGB, colour_of
from .seg_frames import (
    binary_frames,
    binary_frames_by_segment,
    labelmap_frames,
    labelmap_planes,
    on_image_grid,
    source_order,
)
from .seg_writer import NotPatientCoordinates, binary_segmentation, labelmap_segmentation, source_planes
from .segment_codes import SegmentCode, code_of

# What a series' segments are and its entry: rbexport.mask_formats.segments (named here too).
from .segments import Segment as Segment
from .segments import numbered_entry as numbered_entry
from .segments import overlapping_segments, segments_overlap
from .segments import plan_segments as plan_segments
from .segments import segmentation_entry as segmentation_entry

# highdicom warns when a source's PatientName has one component: the source's business, not the export's.
warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name", category=UserWarning)

NEEDED_BY = "a DICOM SEG"
MANUFACTURER = "rbexport"
SERIES_NUMBER = 300  # a number of its own beside the image series
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses
# Type 2 attributes highdicom copies from the source image: empty when the source lacks them.
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


# Bytes per voxel of a label map a SEG holds beside it while encoding (rbexport.mask_formats.seg_writer):
# LABELMAP, the segment numbers on the images' grid and their frames (2 x 16 bits); BINARY,
# one segment's frames at a time (a byte a voxel) and the file's copy of them, plus every
# segment's frames as bits and the file's copy of those (2 bits a voxel and segment, rounded up).
LABELMAP_BYTES_PER_VOXEL = 4
BINARY_BYTES_PER_VOXEL = 2  # plus one per four segments


def working_memory(series: dict, voxels: int, seg_type: str = "auto") -> int:
    """The most a series' SEG holds while it is encoded, from its segmentMap (before decoding)."""
    segment_map = series.get("segmentMap")
    entries = (
        [entry for entry in segment_map.values() if isinstance(entry, dict)] if isinstance(segment_map, dict) else []
    )
    if seg_type == "binary" or any(entry.get("overlappingGroups") for entry in entries):
        return voxels * (BINARY_BYTES_PER_VOXEL + (len(entries) + 3) // 4)
    return voxels * LABELMAP_BYTES_PER_VOXEL


@lru_cache(maxsize=1)
def load_highdicom() -> None:
    """Import highdicom and load the tables of the standard it reads on first use, once per
    process, then leave everything loaded so far out of the cyclic collector's walks
    (gc.freeze). Those tables are some 200,000 objects that live as long as the process;
    every full collection the export's garbage set off walked them (0.1 s, mid-task)."""
    import highdicom  # noqa: F401

    try:
        from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
    except ImportError:  # another highdicom: its tables load on first use, unfrozen
        pass
    else:
        for table in (get_module_attribute_map, get_iod_module_map, get_sop_class_iod_map):
            table()
    gc.freeze()


def encode_segmentation(
    segments: Sequence[Segment],
    index: VoxelIndex,
    label_map: LabelMap,
    headers: SeriesHeaders,
    series: str,
    uid_seed: str,
    colours: Mapping[str, RGB] | None = None,
    codes: Mapping[str, SegmentCode] | None = None,
    *,
    seg_type: str = "auto",
    compression: str = "none",
) -> bytes:
    """The SEG file of one series: `segments` of `label_map`, on the grid of the images `headers` describe.

    `seg_type` and `compression`: the export's seg_type and seg_compression (rbexport.options).
    Written by rbexport.mask_formats.seg_writer (highdicom's dataset, made directly) when
    the images are in the patient coordinate system, else by highdicom's constructor.
    """
    _check_encodable(label_map, headers, series)
    binary = _is_binary(segments, series, seg_type, compression)
    descriptions = [_description(segment, colours, codes) for segment in segments]
    identity = _identity(headers, series, uid_seed)
    try:
        planes = source_planes([headers.datasets[file] for file in source_order(headers)])
    except NotPatientCoordinates:
        return highdicom_segmentation(
            segments,
            index,
            label_map,
            headers,
            series,
            uid_seed,
            colours,
            codes,
            seg_type=seg_type,
            compression=compression,
        )
    on_grid = on_image_grid(label_map, headers, series)  # (columns, rows[, slices]) label values
    if binary:
        by_segment = binary_frames_by_segment(segments, on_grid, headers, label_map, index)
        return binary_segmentation(planes, descriptions, by_segment, identity, segments_overlap(segments))
    plane_indices, frames = labelmap_planes(segments, on_grid, headers, label_map, index, planes.order)
    return labelmap_segmentation(planes, descriptions, plane_indices, frames, identity, compression)


def _is_binary(segments: Sequence[Segment], series: str, seg_type: str, compression: str) -> bool:
    """Whether the series' SEG is BINARY (else LABELMAP); a series its seg_type or
    seg_compression cannot be written for fails with a reason."""
    overlapping = overlapping_segments(segments)
    if not overlapping:
        return seg_type == "binary"
    names = ", ".join(f"{segment.category or 'segment'} ({segment.key})" for segment in overlapping)
    if seg_type == "labelmap":
        raise TaskDataError(
            f"series {series}: segments {names} overlap, and a LABELMAP DICOM SEG gives each voxel one "
            "segment; export with seg_type binary"
        )
    if compression != "none":
        raise TaskDataError(
            f"series {series}: segments {names} overlap, so its DICOM SEG is BINARY, whose 1-bit frames "
            f"cannot be compressed ({compression}); export with seg_compression none"
        )
    return True


def highdicom_segmentation(
    segments: Sequence[Segment],
    index: VoxelIndex,
    label_map: LabelMap,
    headers: SeriesHeaders,
    series: str,
    uid_seed: str,
    colours: Mapping[str, RGB] | None = None,
    codes: Mapping[str, SegmentCode] | None = None,
    *,
    seg_type: str = "auto",
    compression: str = "none",
) -> bytes:
    """The same SEG by highdicom's `Segmentation` constructor: for images without patient
    coordinates, and the reference tests/test_seg_writer.py holds the fast writer to."""
    import highdicom as hd

    from .seg_writer import TRANSFER_SYNTAXES

    _check_encodable(label_map, headers, series)
    binary = _is_binary(segments, series, seg_type, compression)
    on_grid = on_image_grid(label_map, headers, series)
    if binary:
        pixels = binary_frames(segments, on_grid, headers)
    else:
        pixels = labelmap_frames(segments, on_grid, headers, label_map, index)
    sources = [_source_header(headers.datasets[file]) for file in source_order(headers)]
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY if binary else hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=[_description(segment, colours, codes) for segment in segments],
        omit_empty_frames=True,
        transfer_syntax_uid=TRANSFER_SYNTAXES[compression],
        **_identity(headers, series, uid_seed),
    )
    stream = BytesIO()
    segmentation.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def _check_encodable(label_map: LabelMap, headers: SeriesHeaders, series: str) -> None:
    if label_map.values.ndim > 3:
        raise TaskDataError(f"series {series}: a DICOM SEG holds 2D or 3D masks, and this label map is 4D")
    if len({file for file, _ in headers.slices}) != len(headers.slices) and len(headers.datasets) > 1:
        raise TaskDataError(
            f"series {series}: {len(headers.datasets)} multi-frame files; a DICOM SEG references one "
            "multi-frame image or single-frame images"
        )


def _identity(headers: SeriesHeaders, series: str, uid_seed: str) -> dict:
    """What names the SEG (highdicom's keyword arguments): UIDs derived from the source series
    and the SEG's path, so exporting the same series again gives the same SOP Instance UID."""
    source_series = str(headers.datasets[0].get("SeriesInstanceUID", ""))
    return {
        "series_instance_uid": generate_uid(UID_PREFIX, [source_series, uid_seed, "series"]),
        "series_number": SERIES_NUMBER,
        "sop_instance_uid": generate_uid(UID_PREFIX, [source_series, uid_seed, "instance"]),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": MANUFACTURER,
        "software_versions": _version(),
        "device_serial_number": "0",
        "series_description": f"{series} segmentation"[:64],
        "content_label": "SEGMENTATION",
        "content_description": f"{series} (rbexport)"[:64],
    }


def _source_header(dataset: Dataset) -> Dataset:
    """The header highdicom reads, with the Type 2 patient and study attributes it copies present."""
    header = Dataset(dataset)
    for keyword in PATIENT_AND_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _description(segment: Segment, colours: Mapping[str, RGB] | None, codes: Mapping[str, SegmentCode] | None):
    import highdicom as hd
    from pydicom.sr.coding import Code

    code = code_of(segment.category, codes)
    red, green, blue = colour_of(segment.category, int(segment.key), colours)
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=(segment.category or f"segment {segment.key}")[:64],
        segmented_property_category=Code(code.category.value, code.category.scheme, code.category.meaning),
        segmented_property_type=Code(code.type.value, code.type.scheme, code.type.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
    )


def _version() -> str:
    from rbexport import __version__

    return __version__
