"""Building derived voxel arrays from a label map, by table look-up (one pass each)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def select(values: np.ndarray, member_values: Iterable[int], table_size: int) -> np.ndarray:
    """uint8 mask: 1 where the voxel's value is one of `member_values`, else 0.

    `table_size` is one more than the largest value in `values`.
    """
    table = np.zeros(table_size, dtype=np.uint8)
    members = [value for value in member_values if value < len(table)]
    table[members] = 1
    return relabel(values, table)


def relabel(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`table[value]` for every voxel, keeping the array's shape and memory order."""
    return table[values]
