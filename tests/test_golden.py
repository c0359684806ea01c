"""Outputs stay byte-identical through speed work: every file's bytes against recorded hashes.

The hashes in tests/golden/exports.json were recorded before any optimisation. For a
compressed file the hash is of its NIfTI payload, and the file itself must be exactly
ISA-L level 1 with mtime 0 of that payload; so the exports are the same bytes as long as
the codec is. Record them again (only when an output change is intended) with
    RBEXPORT_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from isal import igzip

from rbexport.app.sample import TAXONOMY, nifti_bytes, write_sample_project
from rbexport.engine import run_export
from rbexport.nifti import GZIP_LEVEL
from rbexport.options import ExportOptions
from rbexport.storage import LocalStorage
from rbexport.variants import Preset, Variant

GOLDEN = Path(__file__).parent / "golden" / "exports.json"
VARIANTS = [*Preset, Variant(name="plain-raw", options=ExportOptions(compress=False, no_consensus=True))]


def overlapping_volume(shape=(40, 36, 24), instances=20, seed=7) -> tuple[np.ndarray, dict]:
    """A CT-like label map in miniature: 20 boxes, some overlapping (values 300+), int16."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.int16)
    segment_map = {}
    for instance in range(1, instances + 1):
        corner = [int(rng.integers(0, size - 6)) for size in shape]
        extent = [int(rng.integers(3, 12)) for _ in shape]
        region = tuple(slice(c, c + e) for c, e in zip(corner, extent, strict=False))
        overlapping = volume[region] != 0
        group = 299 + instance
        if instance % 3 == 0 and overlapping.any():
            owners = set(np.unique(volume[region][overlapping]).tolist())
            for owner in owners:
                if owner < 300:
                    segment_map[str(owner)].setdefault("overlappingGroups", []).append(group)
            segment_map[str(instance)] = {
                "category": ["Glioma", "Edema", "Abscess"][instance % 3],
                "overlappingGroups": [group],
            }
            patch = volume[region]
            patch[overlapping] = group
            patch[~overlapping] = instance
        else:
            volume[region] = instance
            segment_map[str(instance)] = {
                "category": ["Glioma", "Edema", "Abscess"][instance % 3],
                "attributes": {"n": instance},
            }
    return volume, segment_map


def write_cases(root: Path) -> dict[str, Path]:
    sample = root / "sample"
    write_sample_project(LocalStorage(sample))
    volume, segment_map = overlapping_volume()
    ct = root / "ct"
    (ct / "masks").mkdir(parents=True)
    (ct / "masks/ct.nii.gz").write_bytes(nifti_bytes(volume))
    four_d = np.stack([volume[:, :, :8] % 7, volume[:, :, 8:16] % 7], axis=-1).astype(np.uint8)
    (ct / "masks/4d.nii").write_bytes(nifti_bytes(four_d, compress=False))
    small_map = {str(value): {"category": "Edema"} for value in range(1, 7)}
    tasks = [
        {
            "taskId": "ct",
            "name": "CT",
            "series": [{"name": "AX", "segmentations": "masks/ct.nii.gz", "segmentMap": segment_map}],
        },
        {"taskId": "4d", "series": [{"segmentations": "masks/4d.nii", "segmentMap": small_map}]},
    ]
    (ct / "tasks.json").write_text(json.dumps(tasks))
    (ct / "taxonomy.json").write_text(json.dumps(TAXONOMY))
    return {"sample": sample, "ct": ct}


def payload(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(data)
        assert data == igzip.compress(raw, GZIP_LEVEL, mtime=0), (
            f"{path} is not ISA-L level {GZIP_LEVEL} of its payload"
        )
        return raw
    return data


def export_hashes(root: Path) -> dict[str, str]:
    hashes = {}
    for case, source in write_cases(root).items():
        destination = root / "out" / case
        reports = run_export(str(source), str(destination), ExportOptions(), variants=VARIANTS)
        assert all(report.succeeded for report in reports)
        for path in sorted(destination.rglob("*")):
            if path.is_file() and path.name != "export-report.json" and ".rbexport" not in path.parts:
                hashes[f"{case}/{path.relative_to(destination).as_posix()}"] = hashlib.sha256(payload(path)).hexdigest()
    return hashes


def test_outputs_match_the_recorded_hashes(tmp_path):
    hashes = export_hashes(tmp_path)
    if os.environ.get("RBEXPORT_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    assert sorted(hashes) == sorted(recorded)
    changed = [path for path in recorded if hashes[path] != recorded[path]]
    assert not changed, f"outputs changed: {changed[:10]}"
