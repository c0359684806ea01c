"""Planar contours that follow the voxel boundary of a mask, slice by slice (numpy only).

A contour runs along pixel edges: its vertices are pixel corners, at half-integer
(row, column) positions, so no pixel centre ever lies on one. Every edge between a pixel
of the mask and one outside it belongs to exactly one contour, and no other edge does;
a point's even-odd parity (the number of contour edges a ray from it crosses) therefore
is 1 exactly at the mask's pixel centres, however the edges are grouped into loops. A
reader that fills each slice's contours even-odd at pixel centres (or XORs each contour's
fill, as dcmrtstruct2nii does) gets the mask back pixel for pixel, holes included.

The loops are those of the 4-connected components: walking with the mask on the left,
at a vertex where two pixels touch only by their corners the walk turns left, staying
with the pixel it follows; so loops touch at such a corner but never cross, each loop is
a simple polygon (an outer boundary, or a hole's), and a planning system that treats a
contour inside another as a hole sees the same structure. Only corners are kept (no
point in the middle of a straight run): every loop has at least four points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Directions of an edge: 0 +column, 1 +row, 2 -column, 3 -row (rows run down the image).
_STEP_ROW = np.array([0, 1, 0, -1])
_STEP_COLUMN = np.array([1, 0, -1, 0])


@dataclass(frozen=True)
class Loop:
    """One closed contour on one slice: its corners as (row, column) pixel positions (x.5)."""

    slice: int
    rows: np.ndarray  # float64, half-integers
    columns: np.ndarray


def boundary_loops(mask: np.ndarray) -> list[Loop]:
    """The closed contours of a (slices, rows, columns) bool mask, slice by slice.

    Loops come in a fixed order: by slice, then by where their first edge lies (each
    component's outer boundary before its holes)."""
    slices, rows, columns = mask.shape
    padded = np.zeros((slices, rows + 2, columns + 2), dtype=bool)
    padded[:, 1:-1, 1:-1] = mask
    width = columns + 1  # vertices per row of corners
    per_slice = (rows + 1) * width

    def vertex(slice_index, row, column):
        return (slice_index.astype(np.int64) * per_slice) + row.astype(np.int64) * width + column

    starts, ends, directions = [], [], []
    above, below = padded[:, :-1, 1:-1], padded[:, 1:, 1:-1]  # across each row of corners
    for fill, heading, start_column, end_column in ((below & ~above, 2, 1, 0), (above & ~below, 0, 0, 1)):
        s, r, c = np.nonzero(fill)
        starts.append(vertex(s, r, c + start_column))
        ends.append(vertex(s, r, c + end_column))
        directions.append(np.full(s.size, heading, dtype=np.int64))
    left, right = padded[:, 1:-1, :-1], padded[:, 1:-1, 1:]  # across each column of corners
    for fill, heading, start_row, end_row in ((right & ~left, 1, 0, 1), (left & ~right, 3, 1, 0)):
        s, r, c = np.nonzero(fill)
        starts.append(vertex(s, r + start_row, c))
        ends.append(vertex(s, r + end_row, c))
        directions.append(np.full(s.size, heading, dtype=np.int64))
    start, end, direction = np.concatenate(starts), np.concatenate(ends), np.concatenate(directions)
    if start.size == 0:
        return []
    # Each edge's successor: the edge leaving its end vertex to the left, else straight on, else right.
    keys = start * 4 + direction
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    successor = np.full(start.size, -1, dtype=np.int64)
    for turn in (3, 0, 1):  # left, straight, right
        wanted = end * 4 + (direction + turn) % 4
        at = np.minimum(np.searchsorted(sorted_keys, wanted), sorted_keys.size - 1)
        found = (sorted_keys[at] == wanted) & (successor < 0)
        successor[found] = by_key[at[found]]
    order, loop_starts = _cycles(successor, np.argsort(start, kind="stable"))  # vertices are numbered slice by slice
    # Keep the corners: the edges whose direction differs from the edge before them in their loop.
    loop_of = np.repeat(np.arange(len(loop_starts) - 1), np.diff(loop_starts))
    ordered_direction = direction[order]
    previous = np.arange(order.size) - 1
    previous[loop_starts[:-1]] = loop_starts[1:] - 1  # a loop's first edge follows its last
    corner = ordered_direction != ordered_direction[previous]
    corners = start[order[corner]]
    corner_loops = loop_of[corner]
    bounds = np.searchsorted(corner_loops, np.arange(len(loop_starts)))
    slice_of = corners // per_slice
    in_slice = corners % per_slice
    corner_rows = (in_slice // width).astype(np.float64) - 0.5
    corner_columns = (in_slice % width).astype(np.float64) - 0.5
    return [
        Loop(
            int(slice_of[bounds[k]]), corner_rows[bounds[k] : bounds[k + 1]], corner_columns[bounds[k] : bounds[k + 1]]
        )
        for k in range(len(loop_starts) - 1)
    ]


def _cycles(successor: np.ndarray, visit_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The successor permutation's cycles, each from the first of its edges in `visit_order`:
    (edges in cycle order, where each cycle starts, with the total at the end)."""
    following = successor.tolist()
    seen = bytearray(len(following))
    order: list[int] = []
    starts = [0]
    for first in visit_order.tolist():
        if seen[first]:
            continue
        edge = first
        while not seen[edge]:
            seen[edge] = 1
            order.append(edge)
            edge = following[edge]
        starts.append(len(order))
    return np.array(order, dtype=np.int64), np.array(starts, dtype=np.int64)
