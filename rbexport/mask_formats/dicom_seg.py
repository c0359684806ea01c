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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
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
from .seg_writer import NotPatientCoordinates, binary_segmentation, labelmap_segmentation, source_planes
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
        planes = source_planes([headers.datasets[file] for file in _source_order(headers)])
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
    on_grid = _on_image_grid(label_map, headers, series)  # (columns, rows[, slices]) label values
    if binary:
        by_segment = _binary_frames_by_segment(segments, on_grid, headers, label_map, index)
        return binary_segmentation(planes, descriptions, by_segment, identity, _segments_overlap(segments))
    plane_indices, frames = _labelmap_planes(segments, on_grid, headers, label_map, index, planes.order)
    return labelmap_segmentation(planes, descriptions, plane_indices, frames, identity, compression)


def _is_binary(segments: Sequence[Segment], series: str, seg_type: str, compression: str) -> bool:
    """Whether the series' SEG is BINARY (else LABELMAP); a series its seg_type or
    seg_compression cannot be written for fails with a reason."""
    overlapping = _overlapping(segments)
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
    on_grid = _on_image_grid(label_map, headers, series)
    if binary:
        pixels = _binary_frames(segments, on_grid, headers)
    else:
        pixels = _labelmap_frames(segments, on_grid, headers, label_map, index)
    sources = [_source_header(headers.datasets[file]) for file in _source_order(headers)]
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


def segmentation_entry(entry: dict, path: str | None, segments: Sequence[Segment]) -> dict:
    """A series' tasks.json entry once its masks are the segments of one SEG at `path`:
    each segmentMap entry with a segment gets its `segmentNumber` (numbered_entry)."""
    return numbered_entry(entry, path, {segment.key: segment.number for segment in segments}, "segmentNumber")


def numbered_entry(entry: dict, path: str | None, numbers: Mapping[str, int], field_name: str) -> dict:
    """A series' entry once its masks are parts of one file at `path` (a SEG, a structure
    set): `segmentations` is that file ([] when nothing was annotated), each segmentMap
    entry in `numbers` gets its number as `field_name`, and no `mask` (there are no
    per-instance files)."""
    entry = dict(entry)
    entry["segmentations"] = path if path is not None else []
    segment_map = entry.get("segmentMap")
    if isinstance(segment_map, dict):
        rewritten = {}
        for key, value in segment_map.items():
            if isinstance(value, dict):
                value = {field: item for field, item in value.items() if field != "mask"}
                if key in numbers:
                    value[field_name] = numbers[key]
            rewritten[key] = value
        entry["segmentMap"] = rewritten
    return entry


def _segments_overlap(segments: Sequence[Segment]) -> bool:
    return bool(_overlapping(segments))


def _overlapping(segments: Sequence[Segment]) -> list[Segment]:
    """The segments sharing a label value (a voxel) with another, in segment order."""
    owners: dict[int, list[Segment]] = {}
    for segment in segments:
        for value in segment.values:
            owners.setdefault(value, []).append(segment)
    shared = {segment.number for owned in owners.values() if len(owned) > 1 for segment in owned}
    return [segment for segment in segments if segment.number in shared]


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


def _labelmap_planes(
    segments: Sequence[Segment],
    on_grid: np.ndarray,
    headers: SeriesHeaders,
    label_map: LabelMap,
    index: VoxelIndex,
    plane_order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The source planes with segment voxels, and their frames as segment numbers (planes,
    rows, columns), in `plane_order` (the planes in the order the SEG stores them; default,
    by plane index): a sparse map's from its index's voxel positions, a dense map's slice by slice."""
    dtype = smallest_unsigned(len(segments))
    plane_of = _plane_numbers(headers)  # slice -> plane
    order = np.arange(len(plane_of)) if plane_order is None else np.asarray(plane_order)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    slice_rank = rank[plane_of]  # slice -> its place in `order`
    located = _located(segments, label_map, headers, index)
    if located is not None:
        columns, rows, _ = headers.shape
        ranks = [slice_rank[slice_index] for _, _, slice_index in located]
        used, page_of = _pages(ranks, len(order))
        frames = np.zeros((used.size, rows, columns), dtype=dtype)
        flat = frames.reshape(-1)
        for segment, (column, row, _), voxel_ranks in zip(segments, located, ranks, strict=True):
            flat[(page_of[voxel_ranks] * rows + row) * columns + column] = segment.number
        return order[used], frames
    table = np.zeros(int(on_grid.max()) + 1, dtype=dtype)
    for segment in segments:
        table[[value for value in segment.values if value < len(table)]] = segment.number
    stack = _frames(on_grid)
    kept, frames_kept = [], []
    for slice_index in np.argsort(slice_rank):
        numbers = table[stack[slice_index]]
        if numbers.any():
            kept.append(plane_of[slice_index])
            frames_kept.append(numbers)
    if not kept:
        return np.zeros(0, dtype=np.int64), np.zeros((0, *stack.shape[1:]), dtype=dtype)
    return np.array(kept), np.stack(frames_kept)


def _pages(keys: Sequence[np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of 0..count-1 occur in `keys` (ascending: the frames to write), and each one's
    frame among them (a running count: no sort of the voxels' keys)."""
    present = np.zeros(count, dtype=bool)
    for part in keys:
        present[part] = True
    return np.flatnonzero(present), np.cumsum(present) - 1


def _labelmap_frames(
    segments: Sequence[Segment], on_grid: np.ndarray, headers: SeriesHeaders, label_map: LabelMap, index: VoxelIndex
) -> np.ndarray:
    """Every source plane as segment numbers, in the source frames' order (as highdicom takes them)."""
    planes, frames = _labelmap_planes(segments, on_grid, headers, label_map, index)
    full = np.zeros((len(headers.slices), *frames.shape[1:]), dtype=frames.dtype)
    full[planes] = frames
    return full


def _binary_frames_by_segment(
    segments: Sequence[Segment],
    on_grid: np.ndarray,
    headers: SeriesHeaders,
    label_map: LabelMap,
    index: VoxelIndex,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each segment in turn: the source planes it has voxels in and its frames there
    (planes, rows, columns; bool). One segment's frames at a time; a sparse map's from its
    index's voxel positions, a dense map's from the slices that hold one of its values."""
    plane_of = _plane_numbers(headers)
    located = _located(segments, label_map, headers, index)
    if located is not None:
        columns, rows, slices = headers.shape
        for column, row, slice_index in located:
            used, page_of = _pages([slice_index], slices)
            frames = np.zeros((used.size, rows, columns), dtype=bool)
            frames.reshape(-1)[(page_of[slice_index] * rows + row) * columns + column] = True
            yield plane_of[used], frames
        return
    stack = _frames(on_grid)  # (slices, rows, columns), a view
    values = int(on_grid.max()) + 1
    present = np.zeros((stack.shape[0], values), dtype=bool)  # slice, value -> any voxel
    for slice_number, frame in enumerate(stack):
        present[slice_number] = np.bincount(frame.ravel(), minlength=values) > 0
    for segment in segments:
        members = np.zeros(values, dtype=bool)
        members[[value for value in segment.values if value < values]] = True
        used = np.flatnonzero(present[:, members].any(axis=1))
        frames = np.empty((used.size, *stack.shape[1:]), dtype=bool)
        for page, used_slice in enumerate(used):
            frames[page] = members[stack[used_slice]]
        yield plane_of[used], frames


def _plane_numbers(headers: SeriesHeaders) -> np.ndarray:
    """Slice k's plane among the SEG's sources: its frame in a multi-frame file, else k (files go in slice order)."""
    if len(headers.datasets) == 1 and len(headers.slices) > 1:
        return np.array([frame for _, frame in headers.slices])
    return np.arange(len(headers.slices))


def _located(
    segments: Sequence[Segment], label_map: LabelMap, headers: SeriesHeaders, index: VoxelIndex
) -> list[list[np.ndarray]] | None:
    """Each segment's voxels as (column, row, slice) on the images' grid, from the index's
    positions; None when the map is dense or not a 3D volume on a 3D grid."""
    shape = label_map.values.shape
    if not index.sparse or len(shape) != 3 or len(headers.shape) != 3:
        return None
    mapping = axis_mapping(shape, label_map.header.get_best_affine(), headers.shape, headers.affine)
    if mapping is None:
        return None
    order, flips = mapping
    located = []
    for segment in segments:
        positions = np.concatenate([index.positions(value) for value in segment.values])
        label_axes = np.unravel_index(positions, shape, order="F")  # flat positions are in file order
        located.append(
            [
                headers.shape[axis] - 1 - label_axes[order[axis]] if flips[axis] else label_axes[order[axis]]
                for axis in range(3)
            ]
        )
    return located


def _binary_frames(segments: Sequence[Segment], on_grid: np.ndarray, headers: SeriesHeaders) -> np.ndarray:
    """(frames, rows, columns, segments) bool for every source frame, as highdicom's constructor
    takes a BINARY segmentation (it omits the empty frames itself)."""
    frames = _frames(on_grid)
    membership = np.zeros((len(segments), int(on_grid.max()) + 1), dtype=bool)  # segment, value -> in it
    for position, segment in enumerate(segments):
        membership[position, [value for value in segment.values if value < membership.shape[1]]] = True
    stacked = np.zeros((len(segments), *frames.shape), dtype=bool)
    for position in range(len(segments)):
        for slice_index, frame in enumerate(frames):
            stacked[position, slice_index] = membership[position, frame]
    return _in_source_order(np.moveaxis(stacked, 0, -1), headers)


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
    from rbexport import __version__

    return __version__
