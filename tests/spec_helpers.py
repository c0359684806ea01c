"""Small builders for the SPEC tests: NIfTI bytes, a source folder, one export run read back.

Plain functions (no fixtures), so they never clash with tests/conftest.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rbexport.engine import run_export
from rbexport.options import ExportOptions

# An oblique affine with anisotropic voxels, so "preserved exactly" means something.
AFFINE = np.array(
    [
        [-0.75, 0.05, 0.0, 91.5],
        [0.0, 0.8, 0.1, -120.25],
        [0.02, 0.0, 2.5, -70.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# Instances 1 (Glioma), 2 (Glioma, group 5) and 3 (Abscess, group 5): 5 is where 2 and 3 overlap.
OVERLAP_MAP = np.array(
    [
        [[1, 1], [0, 0], [0, 0]],
        [[1, 0], [2, 2], [0, 0]],
        [[0, 0], [2, 5], [3, 0]],
        [[0, 0], [5, 3], [3, 3]],
    ],
    dtype=np.uint8,
)
OVERLAP_SEGMENT_MAP = {
    "1": {"category": "Glioma", "attributes": {"grade": "II"}},
    "2": {"category": "Glioma", "overlappingGroups": [5]},
    "3": {"category": "Abscess", "overlappingGroups": [5]},
}

# Two instances, no overlaps.
PLAIN_MAP = np.array(
    [
        [[1, 1], [0, 0], [0, 0]],
        [[1, 0], [0, 0], [0, 2]],
        [[0, 0], [0, 0], [2, 2]],
        [[0, 0], [0, 0], [0, 2]],
    ],
    dtype=np.uint8,
)
PLAIN_SEGMENT_MAP = {"1": {"category": "Glioma"}, "2": {"category": "Edema"}}

# Category numbers are classId + 1, whatever the order here: Glioma 1, Edema 2, Abscess 3.
TAXONOMY = {
    "name": "Brain",
    "objectTypes": [
        {"category": "Abscess", "classId": 2, "labelType": "SEGMENTATION", "color": "#0000ff"},
        {"category": "Glioma", "classId": 0, "labelType": "SEGMENTATION", "color": "#ff0000"},
        {"category": "Edema", "classId": 1, "labelType": "SEGMENTATION", "color": "#00ff00"},
    ],
}


def nifti_bytes(voxels: np.ndarray, affine: np.ndarray = AFFINE, compress: bool = True) -> bytes:
    explicit = {"dtype": voxels.dtype} if voxels.dtype == np.int64 else {}  # nibabel wants int64 asked for
    image = nib.Nifti1Image(voxels, affine, **explicit)
    image.header.set_xyzt_units("mm", "sec")
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if compress else raw


def decode(data: bytes) -> nib.Nifti1Image:
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return nib.Nifti1Image.from_bytes(raw)


def write_source(
    folder: Path,
    tasks: object,
    masks: dict[str, np.ndarray | bytes],
    taxonomy: dict | None = None,
    raw_tasks_json: bytes | None = None,
) -> Path:
    """A source folder: tasks.json, masks (arrays become .nii/.nii.gz by their name), taxonomy."""
    folder.mkdir(parents=True, exist_ok=True)
    if raw_tasks_json is not None:
        (folder / "tasks.json").write_bytes(raw_tasks_json)
    elif tasks is not None:
        (folder / "tasks.json").write_text(json.dumps(tasks))
    for path, content in masks.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, np.ndarray):
            content = nifti_bytes(content, compress=path.endswith(".gz"))
        target.write_bytes(content)
    if taxonomy is not None:
        (folder / "taxonomy.json").write_text(json.dumps(taxonomy))
    return folder


@dataclass
class Export:
    """An export root read back."""

    root: Path
    report_object: object

    @property
    def tasks(self) -> list[dict]:
        return json.loads((self.root / "tasks.json").read_text())

    @property
    def report(self) -> dict:
        return json.loads((self.root / "export-report.json").read_text())

    def image(self, path: str) -> nib.Nifti1Image:
        return decode((self.root / path).read_bytes())

    def voxels(self, path: str) -> np.ndarray:
        return np.asanyarray(self.image(path).dataobj)

    def mask_files(self) -> list[str]:
        """Every file under segmentations/, relative to the root, sorted."""
        return sorted(
            p.relative_to(self.root).as_posix() for p in (self.root / "segmentations").rglob("*") if p.is_file()
        )

    def all_files(self) -> dict[str, bytes]:
        return {p.relative_to(self.root).as_posix(): p.read_bytes() for p in self.root.rglob("*") if p.is_file()}


def export(
    tmp_path: Path,
    tasks: object,
    masks: dict[str, np.ndarray | bytes],
    taxonomy: dict | None = None,
    out: str = "out",
    **options,
) -> Export:
    """Write a source under tmp_path/src, export it to tmp_path/<out>, and read it back."""
    source = tmp_path / "src"
    if not source.exists():
        write_source(source, tasks, masks, taxonomy)
    destination = tmp_path / out
    [report] = run_export(str(source), str(destination), ExportOptions(**options))
    return Export(destination, report)


def series_task(series: list[dict], task_id: str = "t1", name: str | None = "Task_1", **fields) -> dict:
    task = {"taskId": task_id, "series": series, **fields}
    if name is not None:
        task["name"] = name
    return task


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The training-layout options (SPEC 6) of a RedBrick export.
NO_DATASET = {
    "layout": "redbrick",
    "channels": None,
    "modality": None,
    "group_by": None,
    "dataset_name": None,
    "description": None,
}
