"""Standard, binary and single-mask exports (SPEC 2.1, 2.2): voxels keep instance ids."""

from __future__ import annotations

from collections.abc import Sequence

from ..segment_map import Instance, instance_voxels
from . import MaskFile, SeriesPaths, Structure, without_overlap_fields
from .masks import VoxelIndex, copy_of, selection


def instance_structure(
    index: VoxelIndex,
    instances: Sequence[Instance],
    binary: bool,
    paths: SeriesPaths,
) -> Structure:
    """The label map unchanged; when binary, also one 0/1 file per instance with voxels."""
    label_map = MaskFile(paths.label_map, copy_of(index))
    if not binary:
        return Structure(segment_map=None, segmentations=paths.label_map, binary=False, files=[label_map])

    instance_files = {
        instance.id: paths.instance(instance.id) for instance in instances if instance_voxels(instance, index.counts)
    }
    files = [label_map] + [
        MaskFile(instance_files[instance.id], selection(index, instance.values), binary=True)
        for instance in instances
        if instance.id in instance_files
    ]
    segment_map = {
        instance.key: without_overlap_fields(instance.entry, instance_files.get(instance.id)) for instance in instances
    }
    return Structure(
        segment_map=segment_map,
        segmentations=[instance_files[instance.id] for instance in instances if instance.id in instance_files],
        binary=True,
        files=files,
    )
