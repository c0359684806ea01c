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


@dataclass(frozen=True)
class Loops:
    """Closed contours, flat: loop k lies on slice `slices[k]`, its corners are
    `rows[bounds[k]:bounds[k + 1]]`, `columns[...]` (pixel positions, half-integers)."""

    slices: np.ndarray
    bounds: np.ndarray
    rows: np.ndarray
    columns: np.ndarray

    def __len__(self) -> int:
        return self.slices.size


def boundary_loops(mask: np.ndarray) -> Loops:
    """The closed contours of a (slices, rows, columns) bool mask, slice by slice.

    Loops come in a fixed order: by slice, then by where their first edge lies (each
    component's outer boundary before its holes)."""
    slices, rows, columns = mask.shape
    padded = np.zeros((slices, rows + 2, columns + 2), dtype=bool)
    padded[:, 1:-1, 1:-1] = mask
    width = columns + 1  # vertices per row of corners
    per_slice = (rows + 1) * width

    # Across each row of corners: the edge above a pixel of the mask runs -column, below one +column.
    s, r, c = np.nonzero(padded[:, :-1, 1:-1] != padded[:, 1:, 1:-1])
    vertex = s.astype(np.int64) * per_slice + r.astype(np.int64) * width + c
    pixel_below = padded[s, r + 1, c + 1]
    horizontal = (vertex + pixel_below, vertex + ~pixel_below, np.where(pixel_below, 2, 0))
    # Across each column of corners: the edge left of a pixel runs +row, right of one -row.
    s, r, c = np.nonzero(padded[:, 1:-1, :-1] != padded[:, 1:-1, 1:])
    vertex = s.astype(np.int64) * per_slice + r.astype(np.int64) * width + c
    pixel_right = padded[s, r + 1, c + 1]
    vertical = (vertex + width * ~pixel_right, vertex + width * pixel_right, np.where(pixel_right, 1, 3))
    start, end, direction = (np.concatenate(pair) for pair in zip(horizontal, vertical, strict=True))
    if start.size == 0:
        empty = np.zeros(0)
        return Loops(empty.astype(np.int64), np.zeros(1, np.int64), empty, empty)
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
    bounds = np.searchsorted(loop_of[corner], np.arange(len(loop_starts)))
    in_slice = corners % per_slice
    return Loops(
        corners[bounds[:-1]] // per_slice,
        bounds,
        (in_slice // width).astype(np.float64) - 0.5,
        (in_slice % width).astype(np.float64) - 0.5,
    )


def _cycles(successor: np.ndarray, visit_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The successor permutation's cycles, each from the first of its edges in `visit_order`:
    (edges in cycle order, where each cycle starts, with the total at the end).

    By pointer jumping (numpy, no walk in Python): every edge learns its cycle's first edge
    and its distance from it in log2(edges) doublings."""
    count = successor.size
    rank = np.empty(count, dtype=np.int64)
    rank[visit_order] = np.arange(count)
    following = rank[successor[visit_order]]  # edges numbered in visit order
    head, jump, reach = np.arange(count), following.copy(), 1
    while reach < count:
        head = np.minimum(head, head[jump])
        jump = jump[jump]
        reach *= 2
    last = following == head  # the edge before its cycle's first
    onward = np.where(last, np.arange(count), following)
    to_last = (~last).astype(np.int64)
    reach = 1
    while reach < count:
        to_last = to_last + to_last[onward]
        onward = onward[onward]
        reach *= 2
    length = np.bincount(head, minlength=count)
    ordered = np.lexsort((length[head] - 1 - to_last, head))
    heads = head[ordered]
    starts = np.flatnonzero(np.concatenate([[True], heads[1:] != heads[:-1]]))
    return visit_order[ordered], np.concatenate([starts, [count]])
