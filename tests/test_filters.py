"""Filters (SPEC 8): which tasks an export holds, through the CLI, the local engine and the flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bucket_tree, copy_tree

from rbexport.app.sample import write_training_project
from rbexport.engine import run_export
from rbexport.filters import TaskFilter
from rbexport.options import ExportOptions
from rbexport.storage import LocalStorage

# Stages and update times given to the sample project's six tasks.
STAGES = ["END", "Label", "END", "Review_1", "END", "Label"]
UPDATED = [
    "2026-01-10T08:00:00Z",
    "2026-02-01T00:00:00Z",
    "2026-02-28T23:59:59+00:00",
    "2026-03-01T00:00:00Z",
    "2026-03-02T10:00:00.123+01:00",
    None,
]


def stage_tasks(source: Path) -> None:
    tasks = json.loads((source / "tasks.json").read_text())
    for task, stage, updated in zip(tasks, STAGES, UPDATED, strict=True):
        task["currentStageName"] = stage
        if updated:
            task["updatedAt"] = updated
    (source / "tasks.json").write_text(json.dumps(tasks))


@pytest.fixture
def staged(sample_source) -> Path:
    stage_tasks(sample_source)
    return sample_source


def ids(destination: Path) -> list[str]:
    return [task["taskId"] for task in json.loads((destination / "tasks.json").read_text())]


def report_of(destination: Path) -> dict:
    return json.loads((destination / "export-report.json").read_text())


def test_several_filters_keep_the_tasks_that_match_all_and_missing_fields_never_match():
    tasks = [
        {"taskId": f"t{n}", "currentStageName": s, "updatedAt": u}
        for n, (s, u) in enumerate(zip(STAGES, UPDATED, strict=True))
    ]
    keep = TaskFilter(stages=("END", "Label"), updated_since="2026-02-01")
    assert [task["taskId"] for task in tasks if keep.keeps(task)] == ["t1", "t2", "t4"]
    assert not TaskFilter(ground_truth=True).keeps({"taskId": "x"})  # no currentStageName
    assert not TaskFilter(updated_since="2026-01-01").keeps({"taskId": "x", "updatedAt": "yesterday"})
    # A date alone is midnight UTC; a time is compared with its zone.
    assert TaskFilter(updated_since="2026-03-02").updated_since.isoformat() == "2026-03-02T00:00:00+00:00"
    assert TaskFilter(updated_since="2026-03-02T09:00:00Z").keeps(tasks[4])  # 10:00+01:00 is 09:00Z
    assert not TaskFilter(updated_since="2026-03-02T09:00:01Z").keeps(tasks[4])
    assert TaskFilter(task_ids="t1, t3").task_ids == ("t1", "t3")  # a form field's text


def test_the_cli_keeps_the_ground_truth_and_counts_the_others_as_filtered(run_cli, staged, tmp_path):
    destination = tmp_path / "export"
    result = run_cli("run", "--engine", "local", "--source", str(staged), "--dest", str(destination), "--ground-truth")
    assert result.returncode == 0, result.stderr
    assert "3 tasks exported, 3 filtered out, 0 failed" in result.stdout
    assert ids(destination) == ["task-001", "task-003", "task-005"]
    report = report_of(destination)
    assert report["filtered"] == ["task-002", "task-004", "task-006"]
    assert report["filters"] == {"ground_truth": True}
    assert not (destination / "segmentations/Brain_002").exists()

    both = tmp_path / "both"
    result = run_cli(
        "run", "--engine", "local", "--source", str(staged), "--dest", str(both),
        "--stage", "Label", "--stage", "Review_1", "--since", "2026-02-01", "--task-id", "task-002",
        "--task-id", "task-004", "--task-id", "task-006",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ids(both) == ["task-002", "task-004"]  # task-006 has no updatedAt


def test_a_task_that_no_longer_matches_leaves_tasks_json_and_with_prune_its_files(staged, tmp_path):
    destination = tmp_path / "export"
    [first] = run_export(str(staged), str(destination))
    assert len(first.exported) == 6
    [second] = run_export(str(staged), str(destination), filters=TaskFilter(ground_truth=True))
    assert ids(destination) == ["task-001", "task-003", "task-005"]
    assert sorted(second.skipped) == ["task-001", "task-003", "task-005"] and not second.exported
    assert (destination / "segmentations/Brain_002").exists()  # kept until --prune
    [third] = run_export(str(staged), str(destination), prune=True, filters=TaskFilter(ground_truth=True))
    assert not (destination / "segmentations/Brain_002").exists()
    assert any(path.startswith("segmentations/Brain_004/") for path in third.pruned)
    assert (destination / "segmentations/Brain_001").exists()
    state = json.loads((destination / ".rbexport/state.json").read_text())
    assert sorted(state["tasks"]) == ["task-001", "task-003", "task-005"]


def test_a_since_that_is_not_a_time_exits_2_with_one_line(run_cli, staged, tmp_path):
    destination = tmp_path / "export"
    result = run_cli(
        "run", "--engine", "local", "--source", str(staged), "--dest", str(destination), "--since", "March"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rbexport: error: --since 'March' is not a time: give ISO 8601, such as 2026-03-01 or 2026-03-01T12:00:00Z"
    ]
    assert not destination.exists()


def test_a_filter_that_keeps_no_task_exits_0_with_a_warning_and_an_empty_export(run_cli, staged, tmp_path):
    destination = tmp_path / "export"
    result = run_cli("run", "--engine", "local", "--source", str(staged), "--dest", str(destination), "--stage", "QA")
    assert result.returncode == 0, result.stderr
    assert "warning: the filters keep none of the source's 6 tasks: the export is empty" in result.stdout
    assert ids(destination) == []
    assert len(report_of(destination)["filtered"]) == 6


def test_without_masks_writes_tasks_json_and_the_report_only(run_cli, staged, tmp_path):
    destination = tmp_path / "export"
    result = run_cli(
        "run", "--engine", "local", "--source", str(staged), "--dest", str(destination), "--without-masks",
        "--ground-truth",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(path.relative_to(destination).as_posix() for path in destination.rglob("*") if path.is_file())
    assert [file for file in files if not file.startswith(".rbexport/")] == ["export-report.json", "tasks.json"]
    entries = json.loads((destination / "tasks.json").read_text())
    assert [entry["taskId"] for entry in entries] == ["task-001", "task-003", "task-005"]
    assert all("segmentations" not in series for entry in entries for series in entry["series"])
    assert entries[0]["series"][0]["segmentMap"]  # the rest of the task is passed through
    # A later run with masks exports them (the tasks.json entries without masks are not "unchanged").
    [report] = run_export(str(staged), str(destination), filters=TaskFilter(ground_truth=True))
    assert sorted(report.exported) == ["task-001", "task-003", "task-005"]


def test_the_flow_filters_an_nnunet_dataset_on_s3(prefect_api, make_bucket, tmp_path):
    from rbexport.flows.export import export_project

    project = tmp_path / "training"
    write_training_project(LocalStorage(project), tasks=6)
    tasks = json.loads((project / "tasks.json").read_text())
    for task, stage in zip(tasks, STAGES, strict=True):
        task["currentStageName"] = stage
    (project / "tasks.json").write_text(json.dumps(tasks))
    origin, destination = make_bucket("studies"), make_bucket("nnUNet_raw/Dataset501_Brain")
    copy_tree(project, origin)
    options = ExportOptions(layout="nnunet", channels=("T1", "FLAIR"))
    reports = export_project(
        origin.url,
        destination.url,
        options=options,
        endpoint_url=origin.endpoint_url,
        filters=TaskFilter(ground_truth=True),
    )
    [report] = reports
    assert report.succeeded and len(report.filtered) == 3
    written = bucket_tree(destination)
    dataset = json.loads(written["dataset.json"])
    assert dataset["numTraining"] == 3
    kept = [task["name"] for task, stage in zip(tasks, STAGES, strict=True) if stage == "END"]
    assert sorted(key for key in written if key.startswith("labelsTr/")) == sorted(
        f"labelsTr/{name}.nii.gz" for name in kept
    )
