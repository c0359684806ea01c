"""A small generated project in the source format, for the demo, tests and benchmarks.

Six tasks, one per situation a real project has: a single series, several named series,
unnamed series, overlapping instances, a consensus task with a super truth, and a 2D map.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np

from rbexport.storage import Storage

TAXONOMY = {
    "name": "Brain",
    "objectTypes": [
        {"category": "Glioma", "classId": 0, "labelType": "SEGMENTATION", "color": "#ff0000"},
        {"category": "Edema", "classId": 1, "labelType": "SEGMENTATION", "color": "#00ff00"},
        {"category": "Abscess", "classId": 2, "labelType": "SEGMENTATION", "color": "#0000ff"},
        {"category": "Lesion", "classId": 3, "labelType": "BOUNDING_BOX", "color": "#ffff00"},
    ],
}

AFFINE = np.array([[-0.9, 0.0, 0.0, 90.0], [0.0, 0.9, 0.0, -126.0], [0.0, 0.0, 2.5, -72.0], [0.0, 0.0, 0.0, 1.0]])


def nifti_bytes(voxels: np.ndarray, affine: np.ndarray = AFFINE, compress: bool = True) -> bytes:
    """A label map as .nii (or .nii.gz) bytes, as an annotation tool would save it."""
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_xyzt_units("mm", "sec")
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def box(shape: tuple[int, ...], value: int, corner: tuple[int, ...], size: tuple[int, ...], out=None, dtype=np.uint16):
    """Fill a box with `value` (in `out`, or a new zero array)."""
    out = np.zeros(shape, dtype=dtype) if out is None else out
    out[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=False))] = value
    return out


def sample_project(shape: tuple[int, int, int] = (48, 48, 16)) -> tuple[list[dict], dict[str, bytes]]:
    """The tasks and the mask files (path -> bytes) of the sample project."""
    files: dict[str, bytes] = {}
    tasks: list[dict] = []

    # 1. One series, two instances, no overlaps.
    single = box(shape, 1, (4, 4, 2), (10, 10, 4))
    box(shape, 2, (20, 20, 6), (8, 8, 4), out=single)
    files["masks/brain-001.nii.gz"] = nifti_bytes(single)
    tasks.append(
        {
            "taskId": "task-001",
            "name": "Brain_001",
            "series": [
                {
                    "name": "T1",
                    "items": ["brain-001/t1/0001.dcm", "brain-001/t1/0002.dcm"],
                    "segmentations": "masks/brain-001.nii.gz",
                    "segmentMap": {
                        "1": {"category": "Glioma", "attributes": {"grade": "II"}},
                        "2": {"category": "Edema"},
                    },
                }
            ],
        }
    )

    # 2. Several named series.
    for name, value in (("T1", 1), ("FLAIR", 2)):
        files[f"masks/brain-002-{name}.nii.gz"] = nifti_bytes(box(shape, value, (6, 6, 3), (12, 9, 5)))
    tasks.append(
        {
            "taskId": "task-002",
            "name": "Brain_002",
            "series": [
                {
                    "name": "T1",
                    "items": ["brain-002/t1.dcm"],
                    "segmentations": "masks/brain-002-T1.nii.gz",
                    "segmentMap": {"1": {"category": "Glioma"}},
                },
                {
                    "name": "FLAIR",
                    "items": ["brain-002/flair.dcm"],
                    "segmentations": "masks/brain-002-FLAIR.nii.gz",
                    "segmentMap": {"2": {"category": "Edema"}},
                },
            ],
        }
    )

    # 3. Unnamed series (named A, B by position), one without masks.
    files["masks/brain-003.nii.gz"] = nifti_bytes(box(shape, 1, (10, 10, 5), (5, 5, 5)))
    tasks.append(
        {
            "taskId": "task-003",
            "series": [
                {
                    "items": ["brain-003/a.dcm"],
                    "segmentations": "masks/brain-003.nii.gz",
                    "segmentMap": {"1": {"category": "Abscess"}},
                },
                {"items": ["brain-003/b.dcm"]},
            ],
        }
    )

    # 4. Overlapping instances: 2 and 3 overlap where the value is 5.
    overlap = box(shape, 1, (2, 2, 1), (8, 8, 4))
    box(shape, 2, (14, 14, 4), (12, 12, 6), out=overlap)
    box(shape, 3, (26, 14, 4), (12, 12, 6), out=overlap)
    box(shape, 5, (22, 14, 4), (4, 12, 6), out=overlap)
    files["masks/brain-004.nii.gz"] = nifti_bytes(overlap)
    tasks.append(
        {
            "taskId": "task-004",
            "name": "Brain_004",
            "series": [
                {
                    "name": "T2",
                    "segmentations": "masks/brain-004.nii.gz",
                    "segmentMap": {
                        "1": {"category": "Glioma", "attributes": {"grade": "III"}},
                        "2": {"category": "Glioma", "overlappingGroups": [5]},
                        "3": {"category": "Abscess", "overlappingGroups": [5]},
                    },
                }
            ],
        }
    )

    # 5. Consensus: two annotators and a super truth.
    segment_map = {"1": {"category": "Glioma"}}
    for who, corner in (("a", (5, 5, 2)), ("b", (6, 5, 2)), ("truth", (5, 6, 2))):
        files[f"masks/brain-005-{who}.nii.gz"] = nifti_bytes(box(shape, 1, corner, (10, 10, 6)))
    tasks.append(
        {
            "taskId": "task-005",
            "name": "Brain_005",
            "series": [{"name": "T1", "items": ["brain-005/t1.dcm"]}],
            "consensus": True,
            "consensusScore": 0.87,
            "consensusTasks": [
                {
                    "updatedBy": "ana@example.org",
                    "series": [{"name": "T1", "segmentations": "masks/brain-005-a.nii.gz", "segmentMap": segment_map}],
                    "scores": [{"secondaryUser": "ben@example.org", "score": 0.87}],
                },
                {
                    "updatedBy": "ben@example.org",
                    "series": [{"name": "T1", "segmentations": "masks/brain-005-b.nii.gz", "segmentMap": segment_map}],
                    "scores": [{"secondaryUser": "ana@example.org", "score": 0.87}],
                },
            ],
            "superTruth": {
                "updatedBy": "lead@example.org",
                "series": [{"name": "T1", "segmentations": "masks/brain-005-truth.nii.gz", "segmentMap": segment_map}],
            },
        }
    )

    # 6. A 2D map (an X-ray).
    xray = box((64, 48), 1, (10, 10), (20, 12), dtype=np.uint8)
    box((64, 48), 2, (35, 20), (15, 15), out=xray)
    files["masks/chest-006.nii.gz"] = nifti_bytes(xray, np.diag([0.2, 0.2, 1.0, 1.0]))
    tasks.append(
        {
            "taskId": "task-006",
            "name": "Chest_006",
            "series": [
                {
                    "name": "PA",
                    "segmentations": "masks/chest-006.nii.gz",
                    "segmentMap": {"1": {"category": "Abscess"}, "2": {"category": "Edema"}},
                }
            ],
        }
    )
    return tasks, files


def write_sample_project(storage: Storage, with_images: bool = False) -> list[dict]:
    """Write the sample project (tasks.json, taxonomy.json, masks) into `storage`.

    With `with_images`, every series also gets a small generated DICOM series on its
    label map's grid (`images/<task>/<series>/slice-NNNN.dcm`), named in its items.
    """
    tasks, files = sample_project()
    if with_images:
        files.update(sample_images(tasks, files))
    for path, data in files.items():
        storage.write(path, data)
    storage.write("taxonomy.json", json.dumps(TAXONOMY, indent=2).encode())
    storage.write("tasks.json", json.dumps(tasks, indent=2).encode())
    return tasks


def sample_images(tasks: list[dict], files: dict[str, bytes]) -> dict[str, bytes]:
    """A DICOM series for every series, CT-like values on its label's grid.

    The tasks' `items` are replaced by the new files' paths (a consensus task's are its
    top-level series', on its super truth's grid).
    """
    from rbexport.app.sample_images import dicom_series_on_grid

    images: dict[str, bytes] = {}
    for task in tasks:
        labelled = (task.get("superTruth") or task)["series"]
        for position, series in enumerate(task["series"]):
            reference = labelled[position].get("segmentations")
            if reference is None:  # an image nobody labelled, on the sample's usual grid
                values, affine = np.zeros((48, 48, 16), np.uint16), AFFINE
            else:
                label = nib.Nifti1Image.from_bytes(gzip.decompress(files[reference]))
                values, affine = np.asarray(label.dataobj), label.affine
            # Soft tissue at about 40 HU, each label a little brighter; stored as HU + 1024.
            pixels = (1064 + 30 * values.astype(np.int32) + (np.indices(values.shape).sum(axis=0) % 7)).astype(np.int16)
            folder = f"images/{task['taskId']}/{series.get('name') or position}"
            modality = "DX" if values.ndim == 2 else "CT"
            slices = dicom_series_on_grid(
                pixels, affine, rescale=(1.0, -1024.0), modality=modality, patient_id=task["taskId"]
            )
            series["items"] = [f"{folder}/{name}" for name, _ in slices]
            images.update((f"{folder}/{name}", data) for name, data in slices)
    return images


def write_training_project(
    storage: Storage,
    tasks: int = 10,
    channels: tuple[str, ...] = ("T1", "FLAIR"),
    modality: str = "MR",
    shape: tuple[int, int, int] = (40, 36, 12),
) -> list[dict]:
    """A project made for training layouts (SPEC 6): every task is a study of `channels`
    (DICOM series of `modality`, each on the label's grid), the first channel annotated,
    two studies per patient (`metaData.patientId`). Tasks alternate between two grids, the
    second with its slices stored the other way round (the DICOM stacks them upwards)."""
    from rbexport.app.sample_images import dicom_series_on_grid

    flipped = AFFINE @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, shape[2] - 1], [0, 0, 0, 1.0]])
    written: list[dict] = []
    for number in range(1, tasks + 1):
        affine = AFFINE if number % 2 else flipped
        label = box(shape, 1, (4 + number % 5, 5, 2), (12, 10, 5), dtype=np.uint8)
        box(shape, 2, (20, 18 - number % 4, 5), (9, 8, 4), out=label)
        if number % 3 == 0:  # an Edema instance reaching into the Glioma: overlaps (value 3)
            label[10:14, 10:13, 4:6] = 3
        mask = f"masks/study-{number:03d}.nii.gz"
        storage.write(mask, nifti_bytes(label, affine))
        segment_map: dict[str, dict[str, object]] = {"1": {"category": "Glioma"}, "2": {"category": "Edema"}}
        if number % 3 == 0:
            segment_map = {
                "1": {"category": "Glioma", "overlappingGroups": [3]},
                "2": {"category": "Edema", "overlappingGroups": [3]},
            }
        series = []
        for position, channel in enumerate(channels):
            pixels = (200 + 40 * position + 25 * label.astype(np.int32) + np.indices(shape).sum(axis=0) % 9).astype(
                np.int16
            )
            folder = f"images/study-{number:03d}/{channel}"
            slices = dicom_series_on_grid(pixels, affine, modality=modality, patient_id=f"patient-{(number + 1) // 2}")
            for name, data in slices:
                storage.write(f"{folder}/{name}", data)
            entry: dict = {"name": channel, "items": [f"{folder}/{name}" for name, _ in slices]}
            if position == 0:
                entry.update(segmentations=mask, segmentMap=segment_map)
            series.append(entry)
        written.append(
            {
                "taskId": f"study-{number:03d}",
                "name": f"Study_{number:03d}",
                "metaData": {"patientId": f"patient-{(number + 1) // 2}"},
                "series": series,
            }
        )
    storage.write("taxonomy.json", json.dumps(TAXONOMY, indent=2).encode())
    storage.write("tasks.json", json.dumps(written, indent=2).encode())
    return written
