"""Structure variants (SPEC 2.1 to 2.3): a label map and its segmentMap in, files and JSON out.

Pure functions of arrays and dicts. A structure says which files a series gets and what
its tasks.json entry holds; the voxels of each file are written only when that file is
(`MaskFile.fill`), straight into its output buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..nifti import Fill
from ..options import ExportOptions
from ..segment_map import Instance, has_overlaps, label_warnings, parse_segment_map, refuse_absent_groups
from .masks import VoxelIndex


@dataclass(frozen=True)
class SeriesPaths:
    """Where one series' files go, relative to the export root."""

    base: str  # segmentations/<Task>/<Series>[_<annotator>]
    suffix: str  # .nii.gz or .nii

    @property
    def label_map(self) -> str:
        return self.base + self.suffix

    def instance(self, instance_id: int) -> str:
        return f"{self.base}/instance-{instance_id}{self.suffix}"

    def category(self, number: int) -> str:
        return f"{self.base}/category-{number}{self.suffix}"


@dataclass(frozen=True)
class MaskFile:
    path: str
    fill: Fill  # writes its voxels into a zeroed array when the file is written
    binary: bool = False  # a 0/1 instance or category file (PNG writes it as 0/255)


@dataclass(frozen=True)
class Structure:
    """What a structure decided for one series."""

    segment_map: dict | None  # None: the source's segmentMap, unchanged
    segmentations: str | list[str]
    binary: bool
    files: list[MaskFile]


@dataclass(frozen=True)
class SeriesExport:
    series: dict  # the series entry for tasks.json
    files: list[MaskFile]
    warnings: list[str]


def export_series(
    series: dict,
    index: VoxelIndex,
    paths: SeriesPaths,
    options: ExportOptions,
    category_numbers: Mapping[str, int] | None = None,
    instances: Sequence[Instance] | None = None,
) -> SeriesExport:
    """The files and tasks.json entry of one series under `options` (`instances`: its
    segmentMap already parsed, rbexport.annotations.ParsedTask; else parsed here)."""
    from .instances import instance_structure
    from .semantic import semantic_structure

    if instances is None:
        instances = parse_segment_map(series.get("segmentMap"))
    refuse_absent_groups(instances, index.counts)
    binary = options.binary_for(has_overlaps(instances))
    if options.semantic_mask:
        structure = semantic_structure(index, instances, category_numbers or {}, binary, paths)
    else:
        structure = instance_structure(index, instances, binary, paths)
    entry = dict(series)
    entry["segmentations"] = structure.segmentations
    if structure.segment_map is not None:
        entry["segmentMap"] = structure.segment_map
    entry["binaryMask"] = structure.binary
    entry["semanticMask"] = options.semantic_mask
    return SeriesExport(entry, structure.files, label_warnings(instances, index.counts))


def without_overlap_fields(entry: Mapping, mask: str | None) -> dict:
    """A segmentMap entry once overlaps live in files: no overlappingGroups, its file as `mask`."""
    cleaned = {key: value for key, value in entry.items() if key not in ("overlappingGroups", "mask")}
    if mask is not None:
        cleaned["mask"] = mask
    return cleaned
