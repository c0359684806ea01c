"""The segments of a series: what a file made of one series' masks holds, part by part.

A DICOM SEG's segments and an RT Structure Set's ROIs are the same list: one per instance
with voxels (one per category in semantic exports), numbered 1, 2, ... in instance
(category number) order (`plan_segments`). Segments overlap when they share a label value
(a voxel). `numbered_entry` is the series' tasks.json entry once its masks are parts of
one such file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..segment_map import Instance
from ..structures.masks import VoxelIndex


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


def segments_overlap(segments: Sequence[Segment]) -> bool:
    return bool(overlapping_segments(segments))


def overlapping_segments(segments: Sequence[Segment]) -> list[Segment]:
    """The segments sharing a label value (a voxel) with another, in segment order."""
    owners: dict[int, list[Segment]] = {}
    for segment in segments:
        for value in segment.values:
            owners.setdefault(value, []).append(segment)
    shared = {segment.number for owned in owners.values() if len(owned) > 1 for segment in owned}
    return [segment for segment in segments if segment.number in shared]
