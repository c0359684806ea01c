"""Where each label value lies in a volume, and filling derived masks from that.

Label maps are mostly background. `VoxelIndex` finds the non-zero voxels once (scanning
eight bytes at a time) and groups their positions by value; a derived mask is then written
by touching only its own voxels, into an output that starts as zeros. For a dense map
(more than a quarter of the voxels labelled) the positions would outweigh the volume, so
masks are filled by one table look-up over the whole volume instead.

Positions are flat indices in the volume's memory order, which is also the order a NIfTI
file stores voxels in: an output array of the same layout takes them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..nifti import Fill

# Above this share of labelled voxels, look masks up in a table instead of by position.
DENSE_SHARE = 0.25
_CHUNK = 1 << 22


class VoxelIndex:
    """Voxel counts per value, and (for sparse maps) the positions of every non-zero value."""

    def __init__(self, values: np.ndarray) -> None:
        # NIfTI order (first axis fastest): flat positions are file positions.
        self.flat = np.asfortranarray(values).ravel(order="F")
        self.size = self.flat.size
        self.sparse = _labelled_at_most(self.flat, DENSE_SHARE)
        if self.sparse:
            self._index_positions()
        else:
            self.counts = _chunked_bincount(self.flat)

    def _index_positions(self) -> None:
        positions = _nonzero_positions(self.flat)
        labels = self.flat[positions]
        order = np.argsort(labels, kind="stable")  # a radix sort for these integer types
        self._positions = positions[order]  # grouped by value, ascending within each
        self._labels = labels[order]
        changes = np.flatnonzero(self._labels[1:] != self._labels[:-1]) + 1
        self._starts = np.concatenate([[0], changes]) if len(positions) else changes
        self._ends = np.concatenate([changes, [len(positions)]]) if len(positions) else changes
        self.present = self._labels[self._starts]
        self.counts = np.zeros(int(self.present[-1]) + 1 if len(positions) else 1, dtype=np.int64)
        self.counts[self.present] = self._ends - self._starts
        self.counts[0] = self.size - len(positions)

    @property
    def table_size(self) -> int:
        """One more than the largest value present."""
        return len(self.counts)

    def write_labels(self, out: np.ndarray, table: np.ndarray | None = None) -> None:
        """Every labelled voxel's value (or `table[value]`) into `out`; sparse indexes only."""
        out[self._positions] = self._labels if table is None else table[self._labels]

    def positions(self, value: int) -> np.ndarray:
        at = np.searchsorted(self.present, value)
        if at == len(self.present) or self.present[at] != value:
            return self._positions[:0]
        return self._positions[self._starts[at] : self._ends[at]]


def copy_of(index: VoxelIndex) -> Fill:
    """The label map itself."""

    def write(out: np.ndarray) -> None:
        if index.sparse:
            index.write_labels(out)
        else:
            out[:] = index.flat

    return Fill(write, index.flat.dtype.type)


def selection(index: VoxelIndex, member_values: Iterable[int]) -> Fill:
    """1 where the voxel's value is one of `member_values`, else 0 (uint8)."""
    members = sorted(value for value in set(member_values) if value < index.table_size)

    def write(out: np.ndarray) -> None:
        if index.sparse:
            for value in members:
                out[index.positions(value)] = 1
        else:
            table = np.zeros(index.table_size, dtype=np.uint8)
            table[members] = 1
            _look_up(index.flat, table, out)

    return Fill(write, np.uint8)


def relabelling(index: VoxelIndex, table: np.ndarray) -> Fill:
    """`table[value]` for every voxel (`table[0]` must be 0)."""

    def write(out: np.ndarray) -> None:
        if index.sparse:
            index.write_labels(out, table)
        else:
            _look_up(index.flat, table, out)

    return Fill(write, table.dtype.type)


def _look_up(flat: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for start in range(0, flat.size, _CHUNK):  # chunks: no volume-sized index copies
        np.take(table, flat[start : start + _CHUNK], out=out[start : start + _CHUNK])


def _labelled_at_most(flat: np.ndarray, share: float) -> bool:
    """Whether at most `share` of the voxels are non-zero (counting eight bytes at a time)."""
    per_word = 8 // flat.itemsize
    whole = flat.size - flat.size % per_word
    if flat.itemsize > 8 or whole == 0:
        return bool(np.count_nonzero(flat) <= share * flat.size)
    words = np.count_nonzero(flat[:whole].view(np.uint64))
    if words <= share * flat.size / per_word:  # even if every byte of those words is labelled
        return True
    return bool(np.count_nonzero(flat) <= share * flat.size)


def _nonzero_positions(flat: np.ndarray) -> np.ndarray:
    """Flat indices of the non-zero voxels, ascending; reads eight bytes at a time."""
    per_word = 8 // flat.itemsize
    whole = flat.size - flat.size % per_word
    if flat.itemsize > 8 or not flat.flags.c_contiguous or whole == 0:
        return np.flatnonzero(flat)
    words = flat[:whole].view(np.uint64)
    candidates = (np.flatnonzero(words)[:, None] * per_word + np.arange(per_word)).reshape(-1)
    found = candidates[flat[candidates] != 0]
    tail = np.flatnonzero(flat[whole:]) + whole
    return np.concatenate([found, tail]) if tail.size else found


def _chunked_bincount(flat: np.ndarray) -> np.ndarray:
    counts = np.zeros(1, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        chunk = np.bincount(flat[start : start + _CHUNK])
        if len(chunk) > len(counts):
            chunk[: len(counts)] += counts
            counts = chunk
        else:
            counts[: len(chunk)] += chunk
    return counts
