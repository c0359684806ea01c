"""Schedules, proven by the runs they create on a real `prefect server start`.

The server's scheduler must create runs for every scheduled deployment of prefect.yaml,
deployed for a worker (`prefect deploy --all`) or served (`python -m rbexport.deployments.serve`);
a run it created, made due and picked up by a worker or a served runner, must complete
an export. With SQLAlchemy 2.1 the scheduler fails on every pass and creates no run: these
tests then time out waiting for one (and the server's traceback fails them too).
"""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pytest
from conftest import bucket_tree, copy_tree
from prefect_helpers import (
    delete_all_deployments,
    prefect_cli,
    read_flow_run,
    scheduled_runs_of,
    served,
    start_now,
    wait_for,
    worker,
)

NIGHTLY = "export-project/export-nightly"
WATCHER = "watch-source/watch-source"
MANUAL = "export-project/export-manual"


@pytest.fixture(autouse=True)
def no_schedules_left(prefect_api):
    yield
    delete_all_deployments()


def assert_nightly_times(runs) -> None:
    """export-nightly: cron 0 2 * * * in Europe/Amsterdam."""
    local = [run.expected_start_time.astimezone(ZoneInfo("Europe/Amsterdam")) for run in runs]
    assert all((moment.hour, moment.minute) == (2, 0) for moment in local), local
    days = sorted({moment.date() for moment in local})
    assert len(days) == len(local) >= 3  # one a night


def assert_every_minute(runs) -> None:
    """watch-source: every 60 s."""
    times = sorted(run.expected_start_time for run in runs)
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:], strict=False)]
    # A run left from an earlier deployment of the same name may precede the new ones.
    assert len(gaps) >= 3 and sum(gap == 60 for gap in gaps) >= len(gaps) - 2, gaps


def first_run_for(runs, source: str):
    """The earliest run with these parameters (runs of an earlier deployment of the name may remain)."""
    return min((run for run in runs if run.parameters.get("source") == source), key=lambda run: run.expected_start_time)


def run_to_completion(run, timeout: float = 240):
    start_now(run)
    finished = wait_for(
        lambda: (state := read_flow_run(run.id)).state.is_final() and state,
        timeout,
        f"scheduled run {run.name} to finish",
    )
    return finished.state


def test_deployed_schedules_create_runs_that_a_worker_completes(prefect_api, make_bucket, sample_source):
    source, destination = make_bucket("studies/brain"), make_bucket("exports/brain")
    copy_tree(sample_source, source)
    settings = {
        "RBEXPORT_SOURCE": source.url,
        "RBEXPORT_DESTINATION": destination.url,
        "RBEXPORT_ENDPOINT_URL": source.endpoint_url,
    }
    created = prefect_cli(prefect_api, "work-pool", "create", "rbexport", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli(prefect_api, "--no-prompt", "deploy", "--all", env=settings)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    nightly = wait_for(lambda: scheduled_runs_of(NIGHTLY), 60, "the scheduler to create export-nightly runs")
    assert_nightly_times(nightly)
    watcher = wait_for(lambda: scheduled_runs_of(WATCHER), 60, "the scheduler to create watch-source runs")
    assert_every_minute(watcher)

    with worker(prefect_api, "rbexport") as process:
        state = run_to_completion(first_run_for(nightly, source.url))
        assert state.is_completed(), (state, process.stdout.read1().decode(errors="replace")[-4000:])
        exported = bucket_tree(destination)
        for variant in ("standard", "semantic"):
            assert len(json.loads(exported[f"{variant}/tasks.json"])) == 6
        assert "semantic/segmentations/Brain_001/T1.nii.gz" in exported

        state = run_to_completion(first_run_for(watcher, source.url))
        assert state.is_completed(), state

        # From the UI's form only the source and destination are filled in; the endpoint
        # comes from the deployment, so the run reaches the store at its custom endpoint.
        from prefect.deployments import run_deployment

        manual = make_bucket("by-hand")
        flow_run = run_deployment(
            MANUAL, parameters={"source": source.url, "destination": manual.url}, timeout=240, poll_interval=1
        )
        assert flow_run.state.is_completed(), flow_run.state
        assert len(json.loads(manual.read("tasks.json"))) == 6


def test_served_schedules_create_runs_that_complete(prefect_api, sample_source, tmp_path):
    destination = tmp_path / "export"
    settings = {
        "RBEXPORT_SOURCE": str(sample_source),
        "RBEXPORT_DESTINATION": str(destination),
        "RBEXPORT_ENDPOINT_URL": "",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    with served(prefect_api, "export-nightly", "watch-source", env=settings) as server:
        nightly = wait_for(lambda: scheduled_runs_of(NIGHTLY), 60, "the scheduler to create export-nightly runs")
        assert_nightly_times(nightly)
        watcher = wait_for(lambda: scheduled_runs_of(WATCHER), 60, "the scheduler to create watch-source runs")
        assert_every_minute(watcher)

        state = run_to_completion(first_run_for(nightly, str(sample_source)))
        assert state.is_completed(), (state, server.stdout.read1().decode(errors="replace")[-4000:])
    for variant in ("standard", "semantic"):
        assert len(json.loads((destination / variant / "tasks.json").read_text())) == 6
