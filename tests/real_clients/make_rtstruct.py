"""Export generated cases as RT-STRUCT with the `rbexport` command, for check_rtstruct.py.

    python tests/real_clients/make_rtstruct.py OUT

OUT/<case>/source is a generated project with DICOM series, exported with
`rbexport run --variant nifti:binary_mask=true --variant rt:mask_format=rtstruct` to
OUT/<case>/export. Cases: the sample project (overlaps, consensus), and the structures of
issue 22 (a ring, an instance overlapping another, a structure on two non-adjacent
slices, a 3x3 one, a single voxel) on 0.8 x 0.9 mm pixels, on a tilted series and on a
series stored the other way round. OUT/manifest.json lists every structure set with its
DICOM folder and, by ROI number, the NIfTI instance file it must fill back to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from rbexport.app.sample import nifti_bytes, write_sample_project
from rbexport.app.sample_images import dicom_series_on_grid
from rbexport.storage import LocalStorage

RBEXPORT = str(Path(sys.executable).with_name("rbexport"))
SEGMENT_MAP = {
    "1": {"category": "Ring"},
    "2": {"category": "Tumour", "overlappingGroups": [9]},
    "3": {"category": "Oedema", "overlappingGroups": [9]},
    "4": {"category": "Apart"},
    "5": {"category": "Square"},
    "6": {"category": "Dot"},
}


def structures(shape=(64, 60, 20)) -> np.ndarray:
    volume = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    disc = (xx - 20) ** 2 + (yy - 22) ** 2
    for k in range(4, 12):
        volume[:, :, k][(disc <= 144) & (disc > 36)] = 1  # a ring: a hole through eight slices
    volume[35:50, 30:45, 6:10] = 2
    volume[42:58, 38:52, 8:12] = 3
    volume[42:50, 38:45, 8:10] = 9  # where 2 and 3 overlap
    volume[5:12, 45:55, [3, 9]] = 4  # two slices, none between
    volume[30:33, 5:8, 14] = 5  # 3x3
    volume[60, 2, 16] = 6  # one voxel
    return volume


def rotated(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def issue_case(folder: Path, turn: np.ndarray, reversed_slices: bool) -> None:
    storage = LocalStorage(folder)
    volume = structures()
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, -1.0 if reversed_slices else 1.0]) @ turn @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [120.4, -90.3, 15.0]
    storage.write("masks/ct.nii.gz", nifti_bytes(volume, affine))
    items = []
    for name, raw in dicom_series_on_grid(np.zeros(volume.shape, np.int16), affine, patient_id="RT^CHECK"):
        storage.write(f"images/ct/{name}", raw)
        items.append(f"images/ct/{name}")
    task = {
        "taskId": "rt-check",
        "name": "RT_Check",
        "series": [{"name": "CT", "items": items, "segmentations": "masks/ct.nii.gz", "segmentMap": SEGMENT_MAP}],
    }
    storage.write("tasks.json", json.dumps([task]).encode())


def series_lists(task: dict) -> list[list[dict]]:
    lists = [task["series"]] + [annotator["series"] for annotator in task.get("consensusTasks", [])]
    if "superTruth" in task:
        lists.append(task["superTruth"]["series"])
    return lists


def manifest_of(case: Path) -> list[dict]:
    export, source = case / "export", case / "source"
    rt_tasks = json.loads((export / "rt/tasks.json").read_text())
    nifti_tasks = {task["taskId"]: task for task in json.loads((export / "nifti/tasks.json").read_text())}
    source_tasks = {task["taskId"]: task for task in json.loads((source / "tasks.json").read_text())}
    entries = []
    for task in rt_tasks:
        nifti_lists = series_lists(nifti_tasks[task["taskId"]])
        for rt_list, nifti_list in zip(series_lists(task), nifti_lists, strict=True):
            for position, (series, nifti) in enumerate(zip(rt_list, nifti_list, strict=True)):
                if not isinstance(series.get("segmentations"), str):
                    continue
                item = source_tasks[task["taskId"]]["series"][position]["items"][0]
                masks = {
                    str(entry["roiNumber"]): str(export / "nifti" / nifti["segmentMap"][key]["mask"])
                    for key, entry in series["segmentMap"].items()
                    if "roiNumber" in entry
                }
                entries.append(
                    {
                        "rtstruct": str(export / "rt" / series["segmentations"]),
                        "dicom": str((source / item).parent),
                        "masks": masks,
                    }
                )
    return entries


def run(*arguments: str) -> None:
    print("$ rbexport " + " ".join(arguments), flush=True)
    subprocess.run([RBEXPORT, *arguments], check=True)


def main() -> int:
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    write_sample_project(LocalStorage(out / "sample/source"), with_images=True)
    issue_case(out / "pixels-0.8x0.9/source", np.eye(3), False)
    issue_case(out / "tilted/source", rotated(20.0), False)
    issue_case(out / "reversed/source", np.eye(3), True)
    manifest = []
    for case in ("sample", "pixels-0.8x0.9", "tilted", "reversed"):
        run(
            "run",
            "--source",
            str(out / case / "source"),
            "--dest",
            str(out / case / "export"),
            "--engine",
            "local",
            "--variant",
            "nifti:binary_mask=true",
            "--variant",
            "rt:mask_format=rtstruct",
        )
        manifest += [{"case": case, **entry} for entry in manifest_of(out / case)]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{len(manifest)} structure sets in {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
