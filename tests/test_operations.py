"""Running rbexport as a service (issue 12): live progress, the failures table and the
completion events a downstream deployment can trigger on, read back from a real Prefect API."""

from __future__ import annotations

import json
import time

from rbexport.flows.export import EXPORT_COMPLETED, EXPORT_FAILED, export_project


def artifacts_of(flow_run_id, key: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )


def export_events(destination: str, timeout: float = 30) -> list:
    """The rbexport.export.* events about `destination`, once the events worker has sent them."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(prefix=["rbexport.export."]),
        resource=EventResourceFilter(id=[f"rbexport.destination.{destination}"]),
    )
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events  # the server allows 50
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_a_run_shows_progress_failures_and_emits_its_outcome(prefect_api, sample_source, tmp_path):
    (sample_source / "masks/brain-004.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    destination = str(tmp_path / "export")
    state = export_project(str(sample_source), destination, batch_size=2, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id

    [progress] = artifacts_of(flow_run_id, "export-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert progress.description == "6 of 6 tasks done, 1 failed, 0 unchanged"  # moved with the run
    [failures] = artifacts_of(flow_run_id, "export-failures")
    rows = json.loads(failures.data) if isinstance(failures.data, str) else failures.data
    assert failures.description == "1 task failed"
    assert rows == [{"task": "task-004", "variants": "export", "reason": rows[0]["reason"]}]
    assert rows[0]["reason"].startswith("masks/brain-004.nii.gz: ") and "gzip" in rows[0]["reason"]

    [event] = export_events(destination)
    assert event.event == EXPORT_FAILED
    assert event.payload == {
        "variant": "export",
        "destination": destination,
        "exported": 5,
        "skipped": 0,
        "failed": 1,
        "report": destination + "/export-report.json",
    }


def test_a_completed_run_emits_completed_per_variant(prefect_api, sample_source, tmp_path):
    destination = str(tmp_path / "export")
    state = export_project(str(sample_source), destination, variants=("standard", "semantic"), return_state=True)
    assert state.is_completed()
    assert not artifacts_of(state.state_details.flow_run_id, "export-failures")
    for variant in ("standard", "semantic"):
        [event] = export_events(f"{destination}/{variant}")
        assert event.event == EXPORT_COMPLETED
        assert event.payload["variant"] == variant and event.payload["exported"] == 6


def test_a_run_that_cannot_start_emits_failed_with_the_reason(prefect_api, tmp_path):
    destination = str(tmp_path / "export")
    state = export_project(str(tmp_path / "no-such-source"), destination, return_state=True)
    assert state.is_failed()
    [event] = export_events(destination)
    assert event.event == EXPORT_FAILED and "no-such-source" in event.payload["error"]


def test_a_completed_export_triggers_the_verify_deployment(prefect_api, sample_source, tmp_path):
    """The chain a downstream deployment builds on the completion event: the shipped
    verify-after-export deployment, served, checks each export as it is published."""
    from prefect_helpers import flow_runs_of, served, wait_for

    destination = tmp_path / "export"
    settings = {
        "RBEXPORT_DESTINATION": str(destination),
        "RBEXPORT_ENDPOINT_URL": "",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }

    def finished_verify_runs() -> list:
        return [run for run in flow_runs_of("verify-export/verify-after-export") if run.state and run.state.is_final()]

    with served(prefect_api, "verify-after-export", env=settings):
        export_project(str(sample_source), str(destination), variants=("standard", "semantic"))
        runs = wait_for(lambda: len(finished_verify_runs()) == 2 and finished_verify_runs(), 120, "two verify runs")
        assert sorted(run.parameters["destination"] for run in runs) == [
            str(destination / "semantic"),
            str(destination / "standard"),
        ]
        assert all(run.state.is_completed() for run in runs), [run.state for run in runs]

        # A byte flipped in a published mask: the next (incremental, unchanged) export
        # completes, and the verify run it triggers fails naming the file.
        damaged = destination / "standard/segmentations/Brain_001/T1.nii.gz"
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        export_project(str(sample_source), str(destination), variants=("standard", "semantic"))
        runs = wait_for(lambda: len(finished_verify_runs()) == 4 and finished_verify_runs(), 120, "two more runs")
    [failed] = [run for run in runs if run.state.is_failed()]
    assert failed.parameters["destination"] == str(destination / "standard")
    assert "1 changed" in failed.state.message
    [problems] = artifacts_of(failed.id, "verify-problems")
    rows = json.loads(problems.data) if isinstance(problems.data, str) else problems.data
    assert [(row["problem"], row["file"]) for row in rows] == [("changed", "segmentations/Brain_001/T1.nii.gz")]
