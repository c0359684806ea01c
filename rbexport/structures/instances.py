"""Standard, binary and single-mask exports (SPEC 2.1, 2.2): voxels keep instance ids."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from ..segment_map import Instance, instance_voxels
from . import MaskFile, SeriesPaths, Structure, without_overlap_fields
from .masks import select


def instance_structure(
    values: np.ndarray,
    counts: np.ndarray,
    instances: Sequence[Instance],
    binary: bool,
    paths: SeriesPaths,
) -> Structure:
    """The label map unchanged; when binary, also one 0/1 file per instance with voxels."""
    label_map = MaskFile(paths.label_map, lambda: values)
    if not binary:
        return Structure(segment_map=None, segmentations=paths.label_map, binary=False, files=[label_map])

    instance_files = {
        instance.id: paths.instance(instance.id) for instance in instances if instance_voxels(instance, counts)
    }
    files = [label_map] + [
        MaskFile(instance_files[instance.id], partial(select, values, instance.values, len(counts)))
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
