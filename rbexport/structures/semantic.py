"""Semantic exports (SPEC 2.3): voxels hold category numbers instead of instance ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import TaskDataError
from ..nifti import smallest_unsigned
from ..segment_map import Instance, owners_by_value
from . import MaskFile, SeriesPaths, Structure, without_overlap_fields
from .masks import VoxelIndex, relabelling, selection


def semantic_structure(
    index: VoxelIndex,
    instances: Sequence[Instance],
    category_numbers: Mapping[str, int],
    binary: bool,
    paths: SeriesPaths,
) -> Structure:
    """A category-number map; when binary, also one 0/1 file per category with voxels.

    Where instances of different categories overlap, the lowest category number wins.
    Several instances of one category share one segmentMap entry: the first one's.
    """
    number_of = {instance.id: category_number(instance, category_numbers) for instance in instances}
    owners = owners_by_value(instances)

    counts = index.counts
    table = np.zeros(index.table_size, dtype=smallest_unsigned(max(number_of.values(), default=0)))
    values_of_category: dict[int, set[int]] = {number: set() for number in number_of.values()}
    for value, owning in owners.items():
        numbers = {number_of[instance.id] for instance in owning}
        if value < len(table):
            table[value] = min(numbers)
        for number in numbers:
            values_of_category[number].add(value)

    first_instance: dict[int, Instance] = {}
    for instance in instances:  # instance order: the lowest id comes first
        first_instance.setdefault(number_of[instance.id], instance)
    ordered = sorted(first_instance)

    files = [MaskFile(paths.label_map, relabelling(index, table))]
    category_files: dict[int, str] = {}
    if binary:
        for number in ordered:
            members = sorted(values_of_category[number])
            if any(counts[value] for value in members if value < len(counts)):
                category_files[number] = paths.category(number)
                files.append(MaskFile(category_files[number], selection(index, members), binary=True))

    segment_map = {
        str(number): without_overlap_fields(first_instance[number].entry, category_files.get(number))
        for number in ordered
    }
    segmentations = (
        [category_files[number] for number in ordered if number in category_files] if binary else paths.label_map
    )
    return Structure(segment_map=segment_map, segmentations=segmentations, binary=binary, files=files)


def category_number(instance: Instance, category_numbers: Mapping[str, int]) -> int:
    category = instance.entry.get("category")
    if not isinstance(category, str):
        raise TaskDataError(f"{instance.describe()} has no category; a semantic export needs one")
    if category not in category_numbers:
        raise TaskDataError(f"category {category!r} of instance {instance.id} is not in taxonomy.json")
    return category_numbers[category]
