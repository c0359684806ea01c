"""What a label map's values mean, from its series' `segmentMap` (SPEC 1).

Value 0 is background; a value that is a key of `segmentMap` is that instance; a value
listed in the `overlappingGroups` of instances belongs to each of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .display import shown
from .errors import TaskDataError
from .nifti import UINT16_MAX

_LISTED_AT_MOST = 10
_ASCII_DIGITS = re.compile(r"[0-9]+")
_MOST_DIGITS = 6  # more digits than a label value can have: read no further


@dataclass(frozen=True)
class Instance:
    """One annotation: its id (the key of `segmentMap`), its entry, the groups it is part of."""

    id: int
    key: str  # the key as written in the source
    entry: dict
    groups: tuple[int, ...]

    @property
    def values(self) -> tuple[int, ...]:
        """Every voxel value that belongs to this instance: its own id and its groups."""
        return (self.id, *(group for group in self.groups if group != self.id))

    def describe(self) -> str:
        category = self.entry.get("category")
        return f"instance {self.id} ({category})" if isinstance(category, str) else f"instance {self.id}"


def parse_segment_map(segment_map: object) -> list[Instance]:
    """The instances of a `segmentMap`, in instance order (ascending id)."""
    if segment_map is None:
        return []
    if not isinstance(segment_map, Mapping):
        raise TaskDataError(f"segmentMap must be an object keyed by instance id, not {type(segment_map).__name__}")
    instances = []
    for key, entry in segment_map.items():
        instance_id = _label_value(key, f"segmentMap key {key!r}")
        if not isinstance(entry, Mapping):
            raise TaskDataError(f"segmentMap entry {key!r} must be an object, not {type(entry).__name__}")
        groups = entry.get("overlappingGroups") or []
        if not isinstance(groups, Sequence) or isinstance(groups, str):
            raise TaskDataError(f"overlappingGroups of instance {key} must be a list of label values")
        instances.append(
            Instance(
                id=instance_id,
                key=key,
                entry=dict(entry),
                groups=tuple(
                    _label_value(group, f"overlappingGroups value {group!r} of instance {key}") for group in groups
                ),
            )
        )
    ids = [instance.id for instance in instances]
    if len(set(ids)) != len(ids):
        raise TaskDataError("segmentMap has two keys for the same instance id")
    return sorted(instances, key=lambda instance: instance.id)


def _label_value(raw: object, what: str) -> int:
    """An instance id or group value: an integer, or a string of ASCII digits only (no sign,
    space, or other script's digits: `" 1"`, `"²"`, `"١"` are not label values)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and _ASCII_DIGITS.fullmatch(raw):
        value = int(raw) if len(raw) <= _MOST_DIGITS else UINT16_MAX + 1
    else:
        raise TaskDataError(f"{shown(what)} is not an integer label value")
    if not 1 <= value <= UINT16_MAX:
        raise TaskDataError(f"{shown(what)} is outside 1..{UINT16_MAX}")
    return value


def has_overlaps(instances: Sequence[Instance]) -> bool:
    return any(instance.groups for instance in instances)


def owners_by_value(instances: Sequence[Instance]) -> dict[int, list[Instance]]:
    """For every value some instance claims, the instances it belongs to, in instance order."""
    owners: dict[int, list[Instance]] = {}
    for instance in instances:
        for value in instance.values:
            owners.setdefault(value, []).append(instance)
    return owners


def instance_voxels(instance: Instance, counts: np.ndarray) -> int:
    return int(sum(counts[value] for value in instance.values if value < len(counts)))


def refuse_absent_groups(instances: Sequence[Instance], counts: np.ndarray) -> None:
    """An overlap group the mask does not hold means segmentMap and mask disagree: refuse."""
    for instance in instances:
        for group in instance.groups:
            if group != instance.id and (group >= len(counts) or not counts[group]):
                raise TaskDataError(
                    f"overlappingGroups of instance {instance.id} name value {group}, which the mask does not hold"
                )


def label_warnings(instances: Sequence[Instance], counts: np.ndarray) -> list[str]:
    """Values no entry claims, and instances with no voxels: reported, never fatal."""
    warnings = []
    claimed = set(owners_by_value(instances))
    unclaimed = [value for value in np.flatnonzero(counts) if value != 0 and int(value) not in claimed]
    if unclaimed:
        shown = ", ".join(str(int(value)) for value in unclaimed[:_LISTED_AT_MOST])
        more = f" and {len(unclaimed) - _LISTED_AT_MOST} more" if len(unclaimed) > _LISTED_AT_MOST else ""
        warnings.append(f"label values {shown}{more} appear in the mask but no segmentMap entry claims them")
    for instance in instances:
        if instance_voxels(instance, counts) == 0:
            warnings.append(f"{instance.describe()} has no voxels")
    return warnings
