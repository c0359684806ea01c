"""Put an image on its label map's voxel grid (SPEC 5 "Geometry").

The image must lie on the grid of its series' label map: the same shape, the affine
within 1e-3 mm and the axis directions within 1e-4. An image whose grid is the label's
with its axes in another order or running the other way (slices in the opposite order;
LAS against LPS; in-plane axes transposed) is transposed and flipped onto the label's
grid, which is lossless and exact; the axes are matched by their directions, so an
oblique image is matched just as well. A 2D image and a label of shape (X, Y, 1), or the
reverse, differ only by that last axis. Anything else fails with a reason that names the
series and both grids: an image is never exported misaligned with its label.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ..errors import TaskDataError
from .messages import listed
from .volume import ImageVolume

AFFINE_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4
SPATIAL_AXES = 3


def onto_label_grid(
    image: ImageVolume, label_shape: tuple[int, ...], label_affine: np.ndarray, series: str
) -> ImageVolume:
    """The image on the label's grid: itself when already there, else reoriented with the label's affine."""
    label_shape = tuple(int(size) for size in label_shape)
    label_affine = np.asarray(label_affine, dtype=float)
    data = _with_rank(image.data, len(label_shape))
    mapping = None if data is None else _axis_mapping(data.shape, image.affine, label_shape, label_affine)
    if mapping is None or data is None:
        image_grid, label_grid = _grid(image.data.shape, image.affine), _grid(label_shape, label_affine)
        raise TaskDataError(
            f"series {series}: the image's grid does not match its label's: image {image_grid} vs label {label_grid}"
        )
    order, flips = mapping
    if data is image.data and order == list(range(len(order))) and not any(flips):
        return image
    trailing = list(range(len(order), data.ndim))
    reoriented = data.transpose(order + trailing)[tuple(slice(None, None, -1 if flip else 1) for flip in flips)]
    return ImageVolume(reoriented, label_affine.copy(), image.modality, image.scaling)


def axis_mapping(
    shape: tuple[int, ...], affine: np.ndarray, target_shape: tuple[int, ...], target_affine: np.ndarray
) -> tuple[list[int], list[bool]] | None:
    """How a grid of the same rank lies on a target grid: for each target axis, the axis of
    `shape` that runs along it and whether it runs backwards; None when it does not lie on it."""
    if len(shape) != len(target_shape):
        return None
    target_shape = tuple(int(size) for size in target_shape)
    return _axis_mapping(tuple(int(size) for size in shape), affine, target_shape, np.asarray(target_affine, float))


def _with_rank(data: np.ndarray, rank: int) -> np.ndarray | None:
    """`data` with `rank` axes: a 2D image gets a last axis of size 1, or loses it; None if it cannot."""
    if data.ndim == rank:
        return data
    if data.ndim == 2 and rank == 3:
        return data[:, :, np.newaxis]
    if data.ndim == 3 and rank == 2 and data.shape[2] == 1:
        return data[:, :, 0]
    return None


def _axis_mapping(
    shape: tuple[int, ...], affine: np.ndarray, label_shape: tuple[int, ...], label_affine: np.ndarray
) -> tuple[list[int], list[bool]] | None:
    """For each label axis, the image axis that runs along it and whether it runs backwards; None if none does.

    Axes of size 1 carry no positions, so their directions are not compared. Axes past
    the third (time) must be the same and stay where they are.
    """
    spatial = min(len(label_shape), SPATIAL_AXES)
    if shape[spatial:] != label_shape[spatial:]:
        return None
    columns, label_columns = affine[:3, :spatial], label_affine[:3, :spatial]
    order: list[int] = [-1] * spatial
    flips = [False] * spatial
    unmatched = list(range(spatial))
    for axis in (axis for axis in range(spatial) if label_shape[axis] > 1):
        candidates = [image_axis for image_axis in unmatched if shape[image_axis] > 1]
        if not candidates:
            return None
        label_direction = _unit(label_columns[:, axis])
        match = max(candidates, key=lambda image_axis: abs(_unit(columns[:, image_axis]) @ label_direction))
        flip = bool(_unit(columns[:, match]) @ label_direction < 0)
        column = -columns[:, match] if flip else columns[:, match]
        if shape[match] != label_shape[axis] or not _same_step(column, label_columns[:, axis]):
            return None
        order[axis], flips[axis] = match, flip
        unmatched.remove(match)
    for axis in (axis for axis in range(spatial) if label_shape[axis] == 1):
        order[axis] = unmatched.pop(0)
        if shape[order[axis]] != 1:
            return None
    flipped_ends = [
        (shape[image_axis] - 1) * columns[:, image_axis] for image_axis, flip in zip(order, flips, strict=True) if flip
    ]
    origin = affine[:3, 3] + sum(flipped_ends, np.zeros(3))
    if np.linalg.norm(origin - label_affine[:3, 3]) > AFFINE_TOLERANCE_MM:
        return None
    return order, flips


def _same_step(column: np.ndarray, label_column: np.ndarray) -> bool:
    """One voxel step along an axis: the same length within 1e-3 mm and direction within 1e-4."""
    same_length = abs(np.linalg.norm(column) - np.linalg.norm(label_column)) <= AFFINE_TOLERANCE_MM
    return bool(same_length) and bool(np.abs(_unit(column) - _unit(label_column)).max() <= DIRECTION_TOLERANCE)


def _unit(vector: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(vector)
    return vector / length if length else vector


def grid_description(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """A grid as the reasons name it (see `_grid`)."""
    return _grid(shape, affine)


def _grid(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """shape (512, 512, 300), spacing (0.7, 0.7, 1.25), origin (-90, 126, -72), axes LPS [oblique]."""
    spatial = min(len(shape), SPATIAL_AXES)
    columns = affine[:3, :spatial]
    spacing = np.linalg.norm(columns, axis=0)
    axes = "".join(code or "?" for code in nib.orientations.aff2axcodes(affine))[:spatial]
    oblique = any(np.abs(_unit(columns[:, axis])).max() < 1 - DIRECTION_TOLERANCE for axis in range(spatial))
    return (
        f"shape {tuple(int(size) for size in shape)}, spacing {listed(spacing)}, origin {listed(affine[:3, 3])}, "
        f"axes {axes}{' oblique' if oblique else ''}"
    )
