"""A label map as a DICOM SEG's frames, on the grid of the source images it references.

The label map is put onto the images' grid as rbexport.images puts images onto a label's
(axis order and flips only; any other difference fails with both grids). Frames are
(rows, columns) planes in the order DICOM stores them: LABELMAP frames hold each pixel's
segment number, BINARY frames one segment's pixels. A sparse label map's frames are made
from its index's voxel positions, never from the whole volume; a dense one's slice by slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import TaskDataError
from ..images.dicom import SeriesHeaders
from ..images.geometry import axis_mapping, grid_description, onto_label_grid
from ..images.volume import ImageVolume
from ..nifti import LabelMap, smallest_unsigned
from ..structures.masks import VoxelIndex
from .segments import Segment


def on_image_grid(label_map: LabelMap, headers: SeriesHeaders, series: str) -> np.ndarray:
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


def labelmap_planes(
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
    located = located_voxels(segments, label_map, headers, index)
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


def labelmap_frames(
    segments: Sequence[Segment], on_grid: np.ndarray, headers: SeriesHeaders, label_map: LabelMap, index: VoxelIndex
) -> np.ndarray:
    """Every source plane as segment numbers, in the source frames' order (as highdicom takes them)."""
    planes, frames = labelmap_planes(segments, on_grid, headers, label_map, index)
    full = np.zeros((len(headers.slices), *frames.shape[1:]), dtype=frames.dtype)
    full[planes] = frames
    return full


def binary_frames_by_segment(
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
    located = located_voxels(segments, label_map, headers, index)
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


def located_voxels(
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


def binary_frames(segments: Sequence[Segment], on_grid: np.ndarray, headers: SeriesHeaders) -> np.ndarray:
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
    sources: the file's frame order; single-frame images: `source_order`'s, which is slice order)."""
    if len(headers.datasets) == 1 and len(headers.slices) > 1:
        ordered = np.empty_like(frames)
        ordered[[frame for _, frame in headers.slices]] = frames
        return ordered
    return frames


def source_order(headers: SeriesHeaders) -> list[int]:
    """The files as highdicom's source images: in slice order (one multi-frame file: itself)."""
    if len(headers.datasets) == 1:
        return [0]
    return [file for file, _ in headers.slices]
