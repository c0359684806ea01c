"""The export flow on a real Prefect server: states, artifact, retries."""

from __future__ import annotations

import json

import pytest

import rbexport.engine
from rbexport.errors import ConfigurationError, TaskDataError, TransientStorageError
from rbexport.flows.export import export_project
from rbexport.options import ExportOptions


@pytest.fixture
def api(prefect_api):
    return prefect_api


def test_flow_exports_and_leaves_the_report_artifact(api, sample_source, tmp_path):
    from prefect.artifacts import Artifact

    destination = tmp_path / "export"
    state = export_project(str(sample_source), str(destination), ExportOptions(semantic_mask=True), return_state=True)
    assert state.is_completed()
    [report] = state.result()
    assert report.exported == ["task-001", "task-002", "task-003", "task-004", "task-005", "task-006"]
    artifact = Artifact.get("export-report")
    assert artifact is not None
    assert "# Export completed" in artifact.data
    assert f"| 6 | 0 | 0 | 0 | {len(report.files)} |" in artifact.data  # exported, skipped, failed, warnings, files
    assert "`semantic_mask=true`" in artifact.data
    assert json.loads((destination / "export-report.json").read_text())["exported"] == report.exported


def test_flow_ends_failed_with_the_count_when_a_task_fails(api, sample_source, tmp_path):
    from prefect.artifacts import Artifact

    (sample_source / "masks/brain-004.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    destination = tmp_path / "export"
    state = export_project(str(sample_source), str(destination), return_state=True)
    assert state.is_failed()
    assert "1 of 6 tasks failed" in state.message
    tasks_json = json.loads((destination / "tasks.json").read_text())
    assert "task-004" not in [task["taskId"] for task in tasks_json] and len(tasks_json) == 5
    artifact = Artifact.get("export-report")
    assert "**1 task(s) failed**" in artifact.data
    assert "| task-004 | masks/brain-004.nii.gz |" in artifact.data


def test_configuration_errors_fail_the_run_before_anything_is_written(api, tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "source/tasks.json").write_text("[1, 2")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        export_project(str(tmp_path / "source"), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


def test_a_configuration_error_is_one_line_in_the_log_without_traceback(api, tmp_path):
    from prefect_helpers import log_messages_of, wait_for

    (tmp_path / "source").mkdir()
    (tmp_path / "source/tasks.json").write_text("{}")
    state = export_project(str(tmp_path / "source"), str(tmp_path / "export"), return_state=True)
    assert state.is_failed() and "not a list of tasks" in state.message
    logged = wait_for(
        lambda: (text := log_messages_of(state.state_details.flow_run_id)) and "cannot export" in text and text,
        30,
        "the run's logs",
    )
    assert "cannot export: " in logged and "not a list of tasks" in logged
    assert "Traceback" not in logged, logged


def test_an_unreachable_store_is_named_with_its_endpoint(api, tmp_path, s3_credentials):
    with pytest.raises(ConfigurationError, match=r"cannot reach s3://scans at http://127.0.0.1:9: cannot connect"):
        export_project("s3://scans/brain", str(tmp_path / "export"), endpoint_url="http://127.0.0.1:9")


def test_without_an_endpoint_the_message_says_aws(monkeypatch):
    from rbexport.storage import S3Storage

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    assert S3Storage("scans").endpoint_description() == "AWS S3 (no endpoint_url set)"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://store.internal:9000")
    assert S3Storage("scans").endpoint_description() == "http://store.internal:9000"


@pytest.fixture
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(rbexport.engine, "BACKOFF_SECONDS", 0)


def failing_first(monkeypatch, task_id: str, error: Exception, times: int) -> list[str]:
    """Make exporting `task_id` raise `error` the first `times` attempts; returns the attempt log."""
    attempts: list[str] = []
    real_export = rbexport.engine.export_task

    def flaky_export(job, settings):
        if job.task_id == task_id:
            attempts.append(job.task_id)
            if len(attempts) <= times:
                raise error
        return real_export(job, settings)

    monkeypatch.setattr(rbexport.engine, "export_task", flaky_export)
    return attempts


def test_transient_storage_errors_are_retried(api, sample_source, tmp_path, monkeypatch, no_retry_delay):
    attempts = failing_first(monkeypatch, "task-003", TransientStorageError("s3://x: the store answered 503"), times=2)
    [report] = export_project(str(sample_source), str(tmp_path / "export"))
    assert attempts == ["task-003"] * 3
    assert "task-003" in report.exported and not report.failures


def test_storage_errors_that_outlast_the_retries_fail_only_that_task(
    api, sample_source, tmp_path, monkeypatch, no_retry_delay
):
    attempts = failing_first(monkeypatch, "task-003", TransientStorageError("s3://x: the store answered 503"), times=99)
    state = export_project(str(sample_source), str(tmp_path / "export"), return_state=True)
    assert state.is_failed()
    assert len(attempts) == 1 + rbexport.engine.STORAGE_RETRIES
    report = json.loads((tmp_path / "export/export-report.json").read_text())
    assert report["failed"] == ["task-003"]
    assert "storage kept failing after retries" in report["failures"][0]["reason"]
    assert len(report["exported"]) == 5


def test_data_errors_fail_at_once_without_retries(api, sample_source, tmp_path, monkeypatch, no_retry_delay):
    attempts = failing_first(monkeypatch, "task-003", TaskDataError("corrupt", "masks/x.nii.gz"), times=99)
    state = export_project(str(sample_source), str(tmp_path / "export"), return_state=True)
    assert state.is_failed()
    assert attempts == ["task-003"]
    report = json.loads((tmp_path / "export/export-report.json").read_text())
    assert report["failures"] == [{"taskId": "task-003", "file": "masks/x.nii.gz", "reason": "corrupt"}]


def test_flow_parameters_form_shows_every_option(api):
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(export_project.fn).model_dump()
    properties = schema["properties"]
    assert {"source", "destination", "options", "endpoint_url", "allowed_buckets", "workers"} <= set(properties)
    assert "s3://bucket/prefix" in properties["source"]["description"]
    options = schema["definitions"]["ExportOptions"]["properties"]
    assert set(options) == {
        "semantic_mask",
        "binary_mask",
        "no_consensus",
        "compress",
        "with_images",
        "image_format",
        "layout",
        "channels",
        "modality",
        "group_by",
        "dataset_name",
        "description",
        "mask_format",
        "seg_type",
        "seg_compression",
    }
    assert options["layout"]["enum"] == ["redbrick", "nnunet", "msd"]
    assert options["mask_format"]["enum"] == ["nifti", "png", "mhd", "dicom-seg", "rtstruct"]  # a drop-down in the form
    assert all(option.get("description") for option in options.values())
