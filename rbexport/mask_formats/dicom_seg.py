"""DICOM SEG masks (`mask_format = dicom-seg`): one Segmentation object per series, by highdicom.

A series' SEG references the DICOM images the series' `items` name (only their headers
are read): it lies on their grid, each frame derived from the source image (or frame)
at its position. The label map is put onto that grid as rbexport.images puts images
onto a label's (axis order and flips only; any other difference fails with both grids).

- Segments: one per instance with voxels (one per category in semantic exports),
  numbered 1, 2, ... in instance (category number) order. SegmentLabel is the category's
  name; Segmented Property Category and Type come from segment_codes.json, else SNOMED CT
  85756007 "Tissue" (rbexport.mask_formats.segment_codes); algorithm type MANUAL; the
  display colour is the taxonomy's (else the fixed palette's), as CIELab.
- Type: LABELMAP (one frame per slice, each pixel its segment's number) when no voxel
  belongs to two segments, else BINARY (one 1-bit frame per segment and slice). Frames
  with no segment voxels are omitted.
- UIDs are derived from the source series and the SEG's path in the export, so exporting
  the same series again gives the same SOP Instance UID (a PACS replaces, never
  duplicates); creation dates and times are those of the export.

A series whose items are not DICOM, or that has none, fails the task with a reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..errors import TaskDataError
from ..images.dicom import SeriesHeaders
from ..images.geometry import axis_mapping, grid_description, onto_label_grid
from ..images.volume import ImageVolume
from ..nifti import LabelMap, smallest_unsigned
from ..segment_map import Instance
from ..structures.masks import VoxelIndex
from .colours import RGB, colour_of
from .segment_codes import SegmentCode, code_of

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


# Bytes per voxel of a label map a SEG holds beside it while encoding: LABELMAP, the
# segment numbers on the images' grid and their frames (2 x 16 bits); BINARY, a byte per
# segment (the stack highdicom takes) and the int64 sum over segments highdicom makes.
LABELMAP_BYTES_PER_VOXEL = 4
BINARY_BYTES_PER_VOXEL = 8  # plus one per segment


def working_memory(series: dict, voxels: int) -> int:
    """The most a series' SEG holds while it is encoded, from its segmentMap (before decoding)."""
    segment_map = series.get("segmentMap")
    entries = (
        [entry for entry in segment_map.values() if isinstance(entry, dict)] if isinstance(segment_map, dict) else []
    )
    if any(entry.get("overlappingGroups") for entry in entries):
        return voxels * (BINARY_BYTES_PER_VOXEL + len(entries))
    return voxels * LABELMAP_BYTES_PER_VOXEL


@dataclass(frozen=True)
class Segment:
    """One segment: its number in the SEG, what it is, and the label values that belong to it."""

    number: int
    key: str  # the segmentMap key it describes (instance id, or category number when semantic)
    category: str | None
    values: tuple[int, ...]


def plan_segments(
    instances: Sequence[Instance],
    index: VoxelIndex,
    semantic: bool,
    category_numbers: Mapping[str, int] | None,
) -> list[Segment]:
    """The segments of a series: its instances (or categories) with at least one voxel."""
    from ..structures.semantic import category_number

    groups: dict[str, tuple[str | None, set[int]]] = {}
    order: list[tuple[int, str]] = []
    for instance in instances:
        category = instance.entry.get("category")
        category = category if isinstance(category, str) else None
        key = str(category_number(instance, category_numbers or {})) if semantic else instance.key
        if key not in groups:
            groups[key] = (category, set())
            order.append((int(key) if semantic else instance.id, key))
        groups[key][1].update(instance.values)
    segments: list[Segment] = []
    for _, key in sorted(order):
        category, values = groups[key]
        present = tuple(sorted(value for value in values if value < len(index.counts) and index.counts[value]))
        if present:
            segments.append(Segment(len(segments) + 1, key, category, present))
    return segments


def encode_segmentation(
    segments: Sequence[Segment],
    index: VoxelIndex,
    label_map: LabelMap,
    headers: SeriesHeaders,
    series: str,
    uid_seed: str,
    colours: Mapping[str, RGB] | None = None,
    codes: Mapping[str, SegmentCode] | None = None,
) -> bytes:
    """The SEG file of one series: `segments` of `label_map`, on the grid of the images `headers` describe."""
    import highdicom as hd

    if label_map.values.ndim > 3:
        raise TaskDataError(f"series {series}: a DICOM SEG holds 2D or 3D masks, and this label map is 4D")
    if len({file for file, _ in headers.slices}) != len(headers.slices) and len(headers.datasets) > 1:
        raise TaskDataError(
            f"series {series}: {len(headers.datasets)} multi-frame files; a DICOM SEG references one "
            "multi-frame image or single-frame images"
        )
    overlap = _segments_overlap(segments)
    on_grid = _on_image_grid(label_map, headers, series)  # (columns, rows[, slices]) label values
    if overlap:
        pixels, positions = _binary_frames(segments, on_grid, headers, label_map, index)
    else:
        pixels, positions = _labelmap_frames(segments, on_grid, headers), None
    sources = [_source_header(headers.datasets[file]) for file in _source_order(headers)]
    source_series = str(sources[0].get("SeriesInstanceUID", ""))
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY if overlap else hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=[_description(segment, colours, codes) for segment in segments],
        series_instance_uid=generate_uid(UID_PREFIX, [source_series, uid_seed, "series"]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(UID_PREFIX, [source_series, uid_seed, "instance"]),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=_version(),
        device_serial_number="0",
        series_description=f"{series} segmentation"[:64],
        content_label="SEGMENTATION",
        content_description=f"{series} (rbexport)"[:64],
        plane_positions=positions,
        omit_empty_frames=True,
    )
    stream = BytesIO()
    segmentation.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def segmentation_entry(entry: dict, path: str | None, segments: Sequence[Segment]) -> dict:
    """A series' tasks.json entry once its masks are the segments of one SEG at `path`:
    `segmentations` is that file ([] when nothing was annotated), each segmentMap entry
    with a segment gets its `segmentNumber`, and no `mask` (there are no per-instance files)."""
    numbers = {segment.key: segment.number for segment in segments}
    entry = dict(entry)
    entry["segmentations"] = path if path is not None else []
    segment_map = entry.get("segmentMap")
    if isinstance(segment_map, dict):
        rewritten = {}
        for key, value in segment_map.items():
            if isinstance(value, dict):
                value = {field: item for field, item in value.items() if field != "mask"}
                if key in numbers:
                    value["segmentNumber"] = numbers[key]
            rewritten[key] = value
        entry["segmentMap"] = rewritten
    return entry


def _segments_overlap(segments: Sequence[Segment]) -> bool:
    seen: set[int] = set()
    for segment in segments:
        if seen.intersection(segment.values):
            return True
        seen.update(segment.values)
    return False


def _on_image_grid(label_map: LabelMap, headers: SeriesHeaders, series: str) -> np.ndarray:
    """The label values on the images' grid (a view: transposed and flipped, never resampled)."""
    affine = label_map.header.get_best_affine()
    label = ImageVolume(label_map.values, affine, modality=None)
    try:
        return onto_label_grid(label, headers.shape, headers.affine, series).data
    except TaskDataError:
        raise TaskDataError(
            f"series {series}: the label map does not lie on its DICOM images' grid: label map "
            f"{grid_description(label_map.values.shape, affine)} vs images "
            f"{grid_description(headers.shape, headers.affine)}"
        ) from None


def _frames(volume: np.ndarray) -> np.ndarray:
    """(columns, rows[, slices]) as (slices, rows, columns): frame k is slice k as DICOM stores it."""
    stack = volume[:, :, np.newaxis] if volume.ndim == 2 else volume
    return stack.transpose(2, 1, 0)


def _labelmap_frames(segments: Sequence[Segment], on_grid: np.ndarray, headers: SeriesHeaders) -> np.ndarray:
    """Every slice as segment numbers, in the source frames' order."""
    table = np.zeros(int(on_grid.max()) + 1, dtype=smallest_unsigned(len(segments)))
    for segment in segments:
        table[[value for value in segment.values if value < len(table)]] = segment.number
    frames = np.ascontiguousarray(_frames(table[on_grid]))
    return _in_source_order(frames, headers)


def _binary_frames(
    segments: Sequence[Segment],
    on_grid: np.ndarray,
    headers: SeriesHeaders,
    label_map: LabelMap,
    index: VoxelIndex,
) -> tuple[np.ndarray, list | None]:
    """Segments stacked on the last axis, for the slices with any segment voxel (with their
    positions) when the source is single-frame images; every frame of a multi-frame source.

    The stack is laid out segment by segment in memory (a view with the segments last, as
    highdicom takes it), so each (slice, segment) frame highdicom encodes is contiguous; a
    sparse map is written voxel by voxel from its index, never slice by slice.
    """
    import highdicom as hd

    multiframe = len(headers.datasets) == 1 and len(headers.slices) > 1
    placed = None if multiframe else _grid_positions(segments, label_map, headers, index)
    if placed is None:
        stacked, used = _binary_frames_by_slice(segments, on_grid, multiframe)
    else:
        stacked, used = placed
    pixels = np.moveaxis(stacked, 0, -1)  # (frames, rows, columns, segments), segment-major in memory
    if multiframe:
        return _in_source_order(pixels, headers), None
    positions = [
        hd.PlanePositionSequence(
            hd.CoordinateSystemNames.PATIENT,
            [float(value) for value in headers.datasets[headers.slices[slice_index][0]].ImagePositionPatient],
        )
        for slice_index in used
    ]
    return pixels, positions


def _grid_positions(
    segments: Sequence[Segment], label_map: LabelMap, headers: SeriesHeaders, index: VoxelIndex
) -> tuple[np.ndarray, np.ndarray] | None:
    """(segments, slices used, rows, columns) from the index's voxel positions, and the slices
    used; None when the map is dense or not a 3D volume on a 3D grid (then: slice by slice)."""
    shape = label_map.values.shape
    if not index.sparse or len(shape) != 3 or len(headers.shape) != 3:
        return None
    mapping = axis_mapping(shape, label_map.header.get_best_affine(), headers.shape, headers.affine)
    if mapping is None:
        return None
    order, flips = mapping
    members = [np.concatenate([index.positions(value) for value in segment.values]) for segment in segments]
    located = []
    for positions in members:
        label_axes = np.unravel_index(positions, shape, order="F")  # flat positions are in file order
        grid = [
            headers.shape[axis] - 1 - label_axes[order[axis]] if flips[axis] else label_axes[order[axis]]
            for axis in range(3)
        ]
        located.append(grid)  # (column, row, slice) on the images' grid
    used = np.unique(np.concatenate([grid[2] for grid in located]))
    columns, rows, _ = headers.shape
    stacked = np.zeros((len(segments), used.size, rows, columns), dtype=bool)  # pages stay unwritten where empty
    for number, (column, row, slice_index) in enumerate(located):
        stacked[number, np.searchsorted(used, slice_index), row, column] = True
    return stacked, used


def _binary_frames_by_slice(
    segments: Sequence[Segment], on_grid: np.ndarray, every_slice: bool
) -> tuple[np.ndarray, np.ndarray]:
    frames = _frames(on_grid)
    membership = np.zeros((len(segments), int(on_grid.max()) + 1), dtype=bool)  # segment, value -> in it
    for position, segment in enumerate(segments):
        membership[position, [value for value in segment.values if value < membership.shape[1]]] = True
    claimed: np.ndarray = np.asarray(membership.any(axis=0))
    used = (
        np.arange(frames.shape[0])
        if every_slice
        else np.flatnonzero([claimed[frame].any() for frame in frames])  # one slice at a time: no volume copy
    )
    if used.size == 0:
        used = np.arange(1)
    stacked = np.zeros((len(segments), used.size, *frames.shape[1:]), dtype=bool)
    for position in range(len(segments)):
        for row, slice_index in enumerate(used):
            stacked[position, row] = membership[position, frames[slice_index]]
    return stacked, used


def _in_source_order(frames: np.ndarray, headers: SeriesHeaders) -> np.ndarray:
    """Frames in slice order, put in the order of the source frames they lie on (multi-frame
    sources: the file's frame order; single-frame images: `_source_order`'s, which is slice order)."""
    if len(headers.datasets) == 1 and len(headers.slices) > 1:
        ordered = np.empty_like(frames)
        ordered[[frame for _, frame in headers.slices]] = frames
        return ordered
    return frames


def _source_order(headers: SeriesHeaders) -> list[int]:
    """The files as highdicom's source images: in slice order (one multi-frame file: itself)."""
    if len(headers.datasets) == 1:
        return [0]
    return [file for file, _ in headers.slices]


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rbexport")
    except PackageNotFoundError:
        return "unknown"
