"""Generated inputs for the benchmarks: CT-sized label maps and many small 2D tasks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from rbexport.app.sample import TAXONOMY

CT_SHAPE = (512, 512, 300)
CATEGORIES = ["Glioma", "Edema", "Abscess"]


def ct_label_map(seed: int = 0, instances: int = 20, shape=CT_SHAPE) -> tuple[np.ndarray, dict]:
    """20 blobs (ellipsoids) in a 512x512x300 uint16 map; every fourth overlaps its predecessor.

    Overlap voxels hold group values 1000 + i, listed in both instances' overlappingGroups.
    """
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.uint16)
    segment_map: dict[str, dict] = {}
    centres = []
    for instance in range(1, instances + 1):
        radius = rng.integers(12, 45, size=3)
        if instance % 4 == 0:  # overlaps the previous blob
            centre = centres[-1] + rng.integers(-radius.min() // 2, radius.min() // 2, size=3)
        else:
            centre = np.array([rng.integers(60, size - 60) for size in shape])
        centres.append(centre)
        low = np.maximum(centre - radius, 0)
        high = np.minimum(centre + radius, shape)
        grid = np.ogrid[tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=False))]
        inside = sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radius, strict=False)) <= 1
        region = volume[tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=False))]
        entry = {"category": CATEGORIES[instance % 3], "attributes": {"index": instance}}
        if instance % 4 == 0:
            group = 1000 + instance
            shared = inside & (region == instance - 1)
            region[inside & ~shared & (region == 0)] = instance
            region[shared] = group
            segment_map[str(instance - 1)]["overlappingGroups"] = [group]
            entry["overlappingGroups"] = [group]
        else:
            region[inside & (region == 0)] = instance
        segment_map[str(instance)] = entry
    return volume, segment_map


def nifti_gz(volume: np.ndarray, level: int = 6) -> bytes:
    image = nib.Nifti1Image(volume, np.diag([0.7, 0.7, 1.25, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    return gzip.compress(image.to_bytes(), compresslevel=level, mtime=0)


def write_ct_project(root: Path, tasks: int = 1) -> Path:
    """`tasks` CT-sized tasks (different seeds) with their masks and the taxonomy."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    entries = []
    for number in range(tasks):
        volume, segment_map = ct_label_map(seed=number)
        (root / f"masks/ct-{number:03d}.nii.gz").write_bytes(nifti_gz(volume))
        entries.append(
            {
                "taskId": f"ct-{number:03d}",
                "name": f"CT_{number:03d}",
                "series": [{"name": "AX", "segmentations": f"masks/ct-{number:03d}.nii.gz", "segmentMap": segment_map}],
            }
        )
    (root / "tasks.json").write_text(json.dumps(entries))
    (root / "taxonomy.json").write_text(json.dumps(TAXONOMY))
    return root


def write_small_project(root: Path, tasks: int = 1000, shape=(256, 256)) -> Path:
    """`tasks` 2D tasks of three instances each, one mask file per task."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    entries = []
    for number in range(tasks):
        image = np.zeros(shape, dtype=np.uint8)
        for instance in (1, 2, 3):
            x, y = rng.integers(0, 200, size=2)
            image[x : x + 40, y : y + 40] = instance
        (root / f"masks/x-{number:04d}.nii.gz").write_bytes(nifti_gz(image))
        entries.append(
            {
                "taskId": f"x-{number:04d}",
                "name": f"XR_{number:04d}",
                "series": [
                    {
                        "name": "PA",
                        "segmentations": f"masks/x-{number:04d}.nii.gz",
                        "segmentMap": {str(i): {"category": CATEGORIES[i - 1]} for i in (1, 2, 3)},
                    }
                ],
            }
        )
    (root / "tasks.json").write_text(json.dumps(entries))
    (root / "taxonomy.json").write_text(json.dumps(TAXONOMY))
    return root
