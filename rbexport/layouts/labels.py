"""Training labels (SPEC 6 "Labels"): one consecutive label per category, background 0.

Label values are 1..K in ascending category number (taxonomy `classId + 1`), so gaps in
the classIds disappear. A voxel where instances of different categories overlap takes the
label of the lowest category number, as in the semantic export (SPEC 2.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigurationError
from ..nifti import Fill, smallest_unsigned
from ..segment_map import Instance, label_warnings, owners_by_value
from ..structures.masks import VoxelIndex, relabelling
from ..structures.semantic import category_number

BACKGROUND = "background"


@dataclass(frozen=True)
class TrainingLabels:
    """The label of every category: `value_of[category number]` and `names[label value]`."""

    value_of: dict[int, int]  # category number -> label value 1..K
    names: dict[int, str]  # label value -> category name (background 0 is implicit)

    @property
    def count(self) -> int:
        """K, the number of labels besides background."""
        return len(self.names)


def training_labels(category_numbers: Mapping[str, int]) -> TrainingLabels:
    """Labels 1..K for the categories of `category_numbers` (taxonomy.category_numbers), in number order.

    Raises ConfigurationError when two categories share a number (one label could not
    name both) or a category is called "background" (the name of label 0).
    """
    name_of_number: dict[int, str] = {}
    for name, number in sorted(category_numbers.items(), key=lambda item: (item[1], item[0])):
        if name == BACKGROUND:
            raise ConfigurationError(
                f'taxonomy.json: category "{BACKGROUND}" clashes with label 0 of a training layout'
            )
        if number in name_of_number:
            raise ConfigurationError(
                f"taxonomy.json: categories {name_of_number[number]!r} and {name!r} share category number {number}"
            )
        name_of_number[number] = name
    value_of = {number: value for value, number in enumerate(sorted(name_of_number), start=1)}
    return TrainingLabels(value_of=value_of, names={value_of[number]: name for number, name in name_of_number.items()})


def label_volume(
    index: VoxelIndex,
    instances: Sequence[Instance],
    category_numbers: Mapping[str, int],
    labels: TrainingLabels,
) -> tuple[Fill, dict[int, int], list[str]]:
    """The training label map of one label map: its Fill, voxels per label value, warnings.

    The Fill writes each voxel's label (uint8 when K <= 255, else uint16); values no
    segmentMap entry claims become 0. The counts hold every label value 0..K (0 for
    labels absent here) and come from `index.counts`, without reading the volume again.
    The warnings are segment_map.label_warnings'. A category the taxonomy does not know
    raises TaskDataError (as in the semantic export).
    """
    number_of = {instance.id: category_number(instance, category_numbers) for instance in instances}
    table = np.zeros(index.table_size, dtype=smallest_unsigned(labels.count))
    for value, owning in owners_by_value(instances).items():
        if value < len(table):
            table[value] = labels.value_of[min(number_of[instance.id] for instance in owning)]

    voxels = np.zeros(labels.count + 1, dtype=np.int64)
    np.add.at(voxels, table, index.counts)
    voxels_per_label = {value: int(count) for value, count in enumerate(voxels)}
    return relabelling(index, table), voxels_per_label, label_warnings(instances, index.counts)
