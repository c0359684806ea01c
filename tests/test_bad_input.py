"""Bad input (SPEC 3): the task at fault fails with a one-line reason naming its file; the
other tasks export; the report lists it; the CLI exits 1. Nothing escapes the destination."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rbexport.app.sample import TAXONOMY, nifti_bytes
from rbexport.engine import run_export
from rbexport.options import ExportOptions

GOOD_MAP = np.zeros((6, 5, 4), dtype=np.uint8)
GOOD_MAP[1:3, 1:3, 1:3] = 1


def huge_header(shape) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint16)
    header.set_data_shape(shape)
    return gzip.compress(header.binaryblock + bytes(4) + bytes(2000))


def overlapping_map() -> np.ndarray:
    volume = GOOD_MAP.copy()
    volume[3:5, 1:3, 1:3] = 2
    return volume


# (name, mask bytes or None for "no file", segmentMap, the reason the report must give)
BAD_MASKS = [
    ("missing", None, {"1": {"category": "Glioma"}}, "mask file not found"),
    ("truncated", nifti_bytes(GOOD_MAP)[:-30], {"1": {"category": "Glioma"}}, "truncated"),
    ("not-nifti", b"\x89PNG\r\n\x1a\n" + bytes(600), {"1": {"category": "Glioma"}}, "not a NIfTI file"),
    ("gigabytes", huge_header((4096, 4096, 4096)), {}, "header announces 128.0 GiB of voxels (4096x4096x4096)"),
    ("complex", nifti_bytes(np.zeros((3, 3, 3), np.complex64)), {}, "voxel type complex64 is not a label map type"),
    (
        "rgb",
        nifti_bytes(np.zeros((3, 3, 3), [("R", "u1"), ("G", "u1"), ("B", "u1")])),
        {},
        "voxel type RGB is not a label map type",
    ),
    ("five-d", nifti_bytes(np.zeros((2, 2, 2, 2, 2), np.uint8)), {}, "5-dimensional image (2x2x2x2x2)"),
    ("nan", nifti_bytes(np.full((3, 3, 3), np.nan, np.float32)), {}, "the label map holds NaN or infinite values"),
    ("negative", nifti_bytes(np.full((3, 3, 3), -4, np.int16)), {}, "negative value -4"),
    (
        "key",
        nifti_bytes(GOOD_MAP),
        {"one": {"category": "Glioma"}},
        "segmentMap key 'one' is not an integer label value",
    ),
    (
        "group",
        nifti_bytes(overlapping_map()),
        {"1": {"category": "Glioma", "overlappingGroups": [9]}, "2": {"category": "Edema", "overlappingGroups": [9]}},
        "overlappingGroups of instance 1 name value 9, which the mask does not hold",
    ),
    (
        "category",
        nifti_bytes(GOOD_MAP),
        {"1": {"category": "Tumour"}},
        "category 'Tumour' of instance 1 is not in taxonomy.json",
    ),
]


def bad_source(root: Path) -> Path:
    """One task per bad mask, a good task first and last, a duplicate taskId, paths that leave."""
    masks = root / "masks"
    masks.mkdir(parents=True)
    (masks / "good.nii.gz").write_bytes(nifti_bytes(GOOD_MAP))
    (root.parent / "outside.nii.gz").write_bytes(nifti_bytes(GOOD_MAP))
    good = {
        "taskId": "good-1",
        "series": [{"segmentations": "masks/good.nii.gz", "segmentMap": {"1": {"category": "Glioma"}}}],
    }
    tasks = [good]
    for name, data, segment_map, _ in BAD_MASKS:
        if data is not None:
            (masks / f"{name}.nii.gz").write_bytes(data)
        tasks.append(
            {"taskId": f"bad-{name}", "series": [{"segmentations": f"masks/{name}.nii.gz", "segmentMap": segment_map}]}
        )
    tasks.append({"taskId": "bad-escape", "series": [{"segmentations": "../outside.nii.gz"}]})
    tasks.append({"taskId": "bad-absolute", "series": [{"segmentations": str(root.parent / "outside.nii.gz")}]})
    tasks.append({**good, "name": "a duplicate"})
    tasks.append({**good, "taskId": "good-2"})
    (root / "tasks.json").write_text(json.dumps(tasks))
    (root / "taxonomy.json").write_text(json.dumps(TAXONOMY))
    return root


EXPECTED = {f"bad-{name}": (f"masks/{name}.nii.gz", reason) for name, _, _, reason in BAD_MASKS} | {
    "bad-escape": ("../outside.nii.gz", "path leaves the source prefix"),
    "good-1": ("tasks.json[15]", "duplicate taskId: first seen at tasks.json[0]"),
}


@pytest.mark.parametrize("task_id", [*EXPECTED, "bad-absolute"])
def test_a_bad_input_fails_only_its_task_with_a_reason_naming_the_file(tmp_path, task_id):
    source = bad_source(tmp_path / "source")
    tasks = json.loads((source / "tasks.json").read_text())
    good = [task for task in tasks if task["taskId"].startswith("good") and task.get("name") != "a duplicate"]
    bad = [task for task in tasks if task["taskId"] == task_id and task not in good]
    if task_id == "good-1":  # the duplicate comes after the first good-1
        bad = [task for task in tasks if task.get("name") == "a duplicate"]
    (source / "tasks.json").write_text(json.dumps([good[0], *bad, good[1]]))

    [report] = run_export(str(source), str(tmp_path / "export"), ExportOptions(semantic_mask=True))
    assert report.exported == ["good-1", "good-2"]
    [failure] = report.failures
    assert failure.taskId == task_id and report.failed == [task_id]
    file, reason = EXPECTED.get(task_id, (str(tmp_path / "outside.nii.gz"), "path leaves the source prefix"))
    if task_id == "good-1":
        file = "tasks.json[1]"
    assert failure.file == file
    assert reason in failure.reason and "\n" not in failure.reason
    stored = json.loads((tmp_path / "export/export-report.json").read_text())
    assert stored["failures"] == [{"taskId": task_id, "file": failure.file, "reason": failure.reason}]
    written = sorted(
        path.relative_to(tmp_path / "export").as_posix() for path in (tmp_path / "export").rglob("*") if path.is_file()
    )
    assert written == [
        ".rbexport/state.json",
        "export-report.json",
        "segmentations/good-1/A.nii.gz",
        "segmentations/good-2/A.nii.gz",
        "tasks.json",
    ]


def test_the_cli_reports_every_bad_input_and_exits_1(run_cli, tmp_path):
    source = bad_source(tmp_path / "source")
    result = run_cli("run", "--source", str(source), "--dest", str(tmp_path / "export"), "--semantic")
    assert result.returncode == 1, result.stderr
    assert "2 tasks exported, 15 failed" in result.stdout
    lines = result.stdout.splitlines()
    for task_id, (file, reason) in EXPECTED.items():
        [line] = [line for line in lines if line.startswith(f"  failed {task_id}: {file}: ")]
        assert reason in line, (task_id, line)
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("../../etc", "..-..-etc"),
        ("a/b\\c\0d", "a-b-c-d"),
        ("..", "t-dots"),
        ("x" * 300, "x" * 191 + "-"),
        ("Ω" * 200, "Ω" * 95 + "-"),
    ],
)
def test_task_and_series_names_are_made_safe_and_stay_inside(tmp_path, name, folder):
    source = tmp_path / "source"
    (source / "masks").mkdir(parents=True)
    (source / "masks/m.nii.gz").write_bytes(nifti_bytes(GOOD_MAP))
    task = {
        "taskId": "t-dots",
        "name": name,
        "series": [{"name": name, "segmentations": "masks/m.nii.gz", "segmentMap": {"1": {"category": "Glioma"}}}],
    }
    (source / "tasks.json").write_text(json.dumps([task]))
    destination = tmp_path / "deep" / "export"
    [report] = run_export(str(source), str(destination), ExportOptions())
    assert report.exported == ["t-dots"]
    [written] = [path for path in destination.rglob("*.nii.gz")]
    relative = written.relative_to(destination)  # raises if it escaped
    task_folder, series_file = relative.parts[1], relative.parts[2]
    assert task_folder.startswith(folder)
    assert len(task_folder.encode()) <= 200 and len(series_file.encode()) <= 255
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["export"]
    if len(name.encode()) > 200:  # shortened with a stable hash of the whole name
        again = run_export(str(source), str(tmp_path / "again"), ExportOptions())[0]
        assert again.files[0].path == report.files[0].path


def test_ten_thousand_tasks_export_in_bounded_memory(tmp_path):
    source = tmp_path / "source"
    (source / "masks").mkdir(parents=True)
    (source / "masks/tiny.nii.gz").write_bytes(nifti_bytes(np.eye(4, dtype=np.uint8), np.eye(4)))
    series = [{"name": "XR", "segmentations": "masks/tiny.nii.gz", "segmentMap": {"1": {"category": "Edema"}}}]
    tasks = [{"taskId": f"t{number:05d}", "series": series, "note": "x" * 100} for number in range(10_000)]
    (source / "tasks.json").write_text(json.dumps(tasks))
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak RSS (VmHWM) from here
    before = resident("VmRSS")
    [report] = run_export(str(source), str(tmp_path / "export"), ExportOptions(), workers=4)
    assert len(report.exported) == 10_000 and not report.failures
    assert len(json.loads((tmp_path / "export/tasks.json").read_text())) == 10_000
    assert resident("VmHWM") - before < 200 * 1024**2  # task JSON and file records, not volumes


def resident(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")
