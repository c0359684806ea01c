"""Incremental exports: unchanged tasks are skipped, changed ones exported, removed ones pruned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from conftest import bucket_tree, tree

from rbexport.app.sample import box, nifti_bytes, write_sample_project
from rbexport.engine import run_export
from rbexport.incremental import STATE_KEY
from rbexport.options import ExportOptions
from rbexport.storage import LocalStorage

ALL = ["task-001", "task-002", "task-003", "task-004", "task-005", "task-006"]


def export(source: Path | str, destination: Path | str, **arguments):
    [report] = run_export(str(source), str(destination), ExportOptions(), **arguments)
    return report


def modification_times(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_mtime_ns
        for path in root.rglob("*")
        if path.is_file() and path.name != "export-report.json"
    }


def edit_tasks(source: Path, edit) -> None:
    tasks = json.loads((source / "tasks.json").read_text())
    edit(tasks)
    (source / "tasks.json").write_text(json.dumps(tasks, indent=2))


def test_a_second_run_over_an_unchanged_source_skips_every_task_and_rewrites_no_file(sample_source, tmp_path):
    destination = tmp_path / "export"
    first = export(sample_source, destination)
    assert first.exported == ALL and first.skipped == []
    before = modification_times(destination)

    second = export(sample_source, destination)
    assert second.skipped == ALL and second.exported == [] and second.files == []
    assert modification_times(destination) == before
    assert json.loads((destination / "export-report.json").read_text())["skipped"] == ALL


def test_only_the_changed_task_is_exported_again(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)
    before = modification_times(destination)

    def rename_first_series(tasks):
        tasks[1]["series"][0]["segmentMap"]["1"]["attributes"] = {"grade": "IV"}

    edit_tasks(sample_source, rename_first_series)
    report = export(sample_source, destination)
    assert report.exported == ["task-002"]
    assert report.skipped == [task for task in ALL if task != "task-002"]
    after = modification_times(destination)
    changed = sorted(path for path in after if after[path] != before.get(path))
    assert changed == [
        STATE_KEY,
        "segmentations/Brain_002/FLAIR.nii.gz",
        "segmentations/Brain_002/T1.nii.gz",
        "tasks.json",
    ]
    tasks = json.loads((destination / "tasks.json").read_text())
    assert tasks[1]["series"][0]["segmentMap"]["1"]["attributes"] == {"grade": "IV"}
    assert [task["taskId"] for task in tasks] == ALL


def test_a_changed_mask_object_exports_its_task_again(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)
    bigger = box((48, 48, 16), 1, (2, 2, 2), (20, 20, 8))
    (sample_source / "masks/brain-003.nii.gz").write_bytes(nifti_bytes(bigger))
    report = export(sample_source, destination)
    assert report.exported == ["task-003"]
    exported = LocalStorage(destination).read("segmentations/task-003/A.nii.gz")
    from rbexport.nifti import read_label_map

    assert np.array_equal(read_label_map(exported).values, bigger)


def test_other_options_or_a_full_run_export_everything_again(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)
    [report] = run_export(str(sample_source), str(destination), ExportOptions(binary_mask=True))
    assert report.exported == ALL
    assert export(sample_source, destination, incremental=False).exported == ALL


def test_a_deleted_output_file_exports_its_task_again(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)
    (destination / "segmentations/Brain_004/T2/instance-2.nii.gz").unlink()
    report = export(sample_source, destination)
    assert report.exported == ["task-004"]
    assert (destination / "segmentations/Brain_004/T2/instance-2.nii.gz").exists()


def test_a_removed_task_leaves_tasks_json_and_prune_deletes_its_files(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)
    edit_tasks(sample_source, lambda tasks: tasks.pop(3))  # task-004, the overlapping one

    kept = export(sample_source, destination)
    assert kept.exported == [] and kept.pruned == []
    assert "task-004" not in [task["taskId"] for task in json.loads((destination / "tasks.json").read_text())]
    assert (destination / "segmentations/Brain_004/T2/instance-1.nii.gz").exists()  # without prune: kept

    pruned = export(sample_source, destination, prune=True)
    assert pruned.pruned == [
        "segmentations/Brain_004/T2.nii.gz",
        "segmentations/Brain_004/T2/instance-1.nii.gz",
        "segmentations/Brain_004/T2/instance-2.nii.gz",
        "segmentations/Brain_004/T2/instance-3.nii.gz",
    ]
    assert not any("Brain_004" in path for path in tree(destination))
    assert "task-004" not in json.loads((destination / STATE_KEY).read_text())["tasks"]


def test_files_an_export_no_longer_writes_are_pruned(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)

    def drop_instance_one(tasks):
        del tasks[3]["series"][0]["segmentMap"]["1"]  # value 1 stays in the mask, now unclaimed

    edit_tasks(sample_source, drop_instance_one)
    report = export(sample_source, destination)
    assert report.exported == ["task-004"]
    assert (destination / "segmentations/Brain_004/T2/instance-1.nii.gz").exists()  # remembered, not deleted
    report = export(sample_source, destination, prune=True)
    assert report.pruned == ["segmentations/Brain_004/T2/instance-1.nii.gz"]
    assert not (destination / "segmentations/Brain_004/T2/instance-1.nii.gz").exists()
    assert (destination / "segmentations/Brain_004/T2/instance-2.nii.gz").exists()


def test_a_failed_task_is_tried_again_next_run(sample_source, tmp_path):
    destination = tmp_path / "export"
    export(sample_source, destination)
    mask = sample_source / "masks/brain-001.nii.gz"
    good = mask.read_bytes()
    mask.write_bytes(good[: len(good) // 2])
    failed = export(sample_source, destination)
    assert failed.failed == ["task-001"]
    mask.write_bytes(good)
    os.utime(mask, ns=(1, 1))  # even with a timestamp older than the failed run's
    assert export(sample_source, destination).exported == ["task-001"]


def test_incremental_on_s3_keeps_its_state_in_the_destination(seaweed, make_bucket):
    source, destination = make_bucket("project"), make_bucket("export")
    write_sample_project(source)
    first = export(source.url, destination.url, endpoint_url=seaweed.endpoint_url)
    assert first.exported == ALL
    stored = bucket_tree(destination)
    assert STATE_KEY in stored

    second = export(source.url, destination.url, endpoint_url=seaweed.endpoint_url)
    assert second.skipped == ALL and second.files == []
    after = bucket_tree(destination)
    del stored["export-report.json"], after["export-report.json"]
    assert after == stored
    # Re-uploading the same bytes keeps the ETag: still unchanged.
    source.write("masks/brain-002-T1.nii.gz", source.read("masks/brain-002-T1.nii.gz"))
    assert export(source.url, destination.url, endpoint_url=seaweed.endpoint_url).exported == []
