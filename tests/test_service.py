"""The export flow run as a service: by a process worker and by `python -m rbexport.deployments.serve`.

Failed runs look failed, not broken: an expected failure ends the run Failed with one line
in its state and its log (read back from the API, as the UI shows it), never a traceback;
failed source tasks are failed task runs; the failures artifact counts tasks. Runs say what
they export in their name and tags.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager

import pytest
from prefect_helpers import (
    delete_all_deployments,
    log_messages_of,
    prefect_cli,
    served,
    worker,
)

MANUAL = "export-project/export-manual"


@pytest.fixture(autouse=True)
def no_deployments_left(prefect_api):
    yield
    delete_all_deployments()


@contextmanager
def executor(kind: str, prefect_api: str):
    """A process worker with `prefect deploy --all`, or a served runner: what runs the flow."""
    if kind == "worker":
        created = prefect_cli(prefect_api, "work-pool", "create", "rbexport", "--type", "process", "--overwrite")
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = prefect_cli(
            prefect_api, "--no-prompt", "deploy", "--name", "export-manual", env={"RBEXPORT_ENDPOINT_URL": ""}
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with worker(prefect_api, "rbexport") as process:
            yield process
    else:
        with served(prefect_api, "export-manual", env={"PREFECT_RUNNER_POLL_FREQUENCY": "1"}) as process:
            yield process


def task_runs_of(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return asyncio.run(read())


def artifacts_of(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return {artifact.key: artifact for artifact in asyncio.run(read())}


def full_log(flow_run) -> str:
    """The run's log once the run has sent it all: its last record is the final state's, which
    holds the state's message (task runs log "Finished in state" too, so that alone is not the end)."""
    from prefect_helpers import wait_for

    final = (flow_run.state.message or "")[:40]
    return wait_for(
        lambda: (text := log_messages_of(flow_run.id)) and "Finished in state" in text and final in text and text,
        60,
        "the run's log",
    )


def assert_one_line_failure(flow_run, log: str, expected: str) -> None:
    assert flow_run.state.is_failed(), flow_run.state
    assert "\n" not in flow_run.state.message and expected in flow_run.state.message, flow_run.state.message
    assert expected in log
    assert "Traceback" not in log and "unexpected exception" not in log, log[-3000:]


@pytest.mark.parametrize("kind", ["worker", "served"])
def test_failed_runs_end_failed_with_one_line_and_no_traceback(kind, prefect_api, sample_source, tmp_path):
    from prefect.deployments import run_deployment

    (sample_source / "masks/brain-001.nii.gz").unlink()  # one bad task among good ones
    with executor(kind, prefect_api) as process:
        missing = run_deployment(
            MANUAL,
            parameters={"source": str(tmp_path / "not-there"), "destination": str(tmp_path / "a")},
            timeout=240,
            poll_interval=1,
        )
        output = lambda: process.stdout.read1().decode(errors="replace")[-4000:]  # noqa: E731
        assert missing.state.is_final(), (missing.state, output())
        assert_one_line_failure(missing, full_log(missing), "not-there")

        bad_task = run_deployment(
            MANUAL,
            parameters={
                "source": str(sample_source),
                "destination": str(tmp_path / "b"),
                "variants": ["standard", "semantic"],
                "batch_size": 1,
            },
            timeout=240,
            poll_interval=1,
        )
        assert bad_task.state.is_final(), (bad_task.state, output())
        log = full_log(bad_task)
        assert_one_line_failure(bad_task, log, "1 of 6 tasks failed")
        assert log.count("brain-001.nii.gz") == 1, log  # the failure, logged once

        batches = [run for run in task_runs_of(bad_task.id) if run.name.startswith("export-")]
        failed = [run for run in batches if run.state.is_failed()]
        assert len(batches) == 6 and len(failed) == 1, [(run.name, run.state.name) for run in batches]
        assert failed[0].state.message.startswith("1 of 1 failed: "), failed[0].state.message

        artifacts = artifacts_of(bad_task.id)
        failures = artifacts["export-failures"]
        assert failures.description == "1 task failed"
        [row] = failures.data if isinstance(failures.data, list) else json.loads(failures.data)
        assert row["variants"] == "standard, semantic" and "brain-001.nii.gz" in row["reason"]
        progress = artifacts["export-progress"]
        assert progress.description.startswith("6 of 6 tasks done, 1 failed"), progress.description

        assert bad_task.name.startswith("export-b-standard-semantic-"), bad_task.name
        assert f"destination:{tmp_path / 'b'}" in wait_for_tags(bad_task.id)
    terminal = process.stdout.read().decode(errors="replace")  # what the worker's or serve's terminal shows
    assert "Traceback" not in terminal, terminal[-4000:]


def wait_for_tags(flow_run_id) -> list[str]:
    from prefect_helpers import read_flow_run

    return read_flow_run(flow_run_id).tags


SETTINGS = {
    "RBEXPORT_SOURCE": "s3://studies/brain",
    "RBEXPORT_DESTINATION": "s3://exports/brain",
    "RBEXPORT_ENDPOINT_URL": "http://127.0.0.1:8333",
}


def every_automation() -> list:
    from prefect_helpers import _run

    return _run(lambda client: client.read_automations())


def deployment_exists(deployment_id) -> bool:
    from prefect.exceptions import ObjectNotFound
    from prefect_helpers import _run

    try:
        _run(lambda client: client.read_deployment(deployment_id))
    except ObjectNotFound:
        return False
    return True


def test_serving_after_deploying_leaves_no_automation_of_a_deleted_deployment_and_ctrl_c_pauses(prefect_api):
    from prefect.events.actions import RunDeployment
    from prefect_helpers import read_deployment

    created = prefect_cli(prefect_api, "work-pool", "create", "rbexport", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli(prefect_api, "--no-prompt", "deploy", "--all", env=SETTINGS)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployed_automations = {automation.id for automation in every_automation()}
    assert len(deployed_automations) >= 2  # export-on-upload's and verify-after-export's

    served_names = ("export-nightly", "export-on-upload", "verify-after-export")
    with served(prefect_api, *served_names, env={**SETTINGS, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}) as process:
        automations = every_automation()
        assert not deployed_automations & {automation.id for automation in automations}
        targets = [action.deployment_id for item in automations for action in item.actions]
        assert targets and all(deployment_exists(target) for target in targets if target)
        assert any(isinstance(action, RunDeployment) for item in automations for action in item.actions)
        assert not read_deployment("export-project/export-nightly").paused
    output = process.stdout.read().decode(errors="replace")
    assert process.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "CancelledError" not in output, output[-4000:]
    for name in served_names:
        flow = "verify-export" if name == "verify-after-export" else "export-project"
        assert read_deployment(f"{flow}/{name}").paused, name


def test_ctrl_c_while_serve_registers_its_deployments_ends_cleanly_and_pauses_what_it_registered(prefect_api):
    """Ctrl+C as soon as the first of three deployments is registered, while serve() still
    registers the others (before its loop takes Ctrl+C over): no traceback, exit 0, and
    whatever it registered paused (a CI run once printed a KeyboardInterrupt traceback)."""
    import os
    import signal
    import subprocess
    import sys

    from prefect_helpers import PROJECT, assert_group_ends, read_deployment, wait_for

    names = {
        "export-nightly": "export-project",
        "export-on-upload": "export-project",
        "verify-after-export": "verify-export",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "rbexport.deployments.serve", *names],
        cwd=PROJECT,
        env={**os.environ, "PREFECT_API_URL": prefect_api, **SETTINGS},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: read_deployment("export-project/export-nightly"), 120, "the first deployment", every=0.05)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = process.stdout.read().decode(errors="replace")
    assert process.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-4000:]
    assert_group_ends(process.pid)  # the fork server it started for flow runs is gone too
    registered = []
    for name, flow in names.items():
        try:
            deployment = read_deployment(f"{flow}/{name}")
        except Exception:  # Ctrl+C came before serve() registered it
            continue
        registered.append(name)
        assert deployment.paused, name
    assert "export-nightly" in registered


def test_the_run_form_says_what_applies_and_shows_plain_optional_fields(prefect_api):
    """The export-manual form, as the UI reads it from the API after `prefect deploy`."""
    from prefect_helpers import read_deployment

    created = prefect_cli(prefect_api, "work-pool", "create", "rbexport", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli(prefect_api, "--no-prompt", "deploy", "--name", "export-manual", env=SETTINGS)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    form = read_deployment(MANUAL).parameter_openapi_schema
    options = form["definitions"]["ExportOptions"]["properties"]

    def switches(properties: dict) -> list[str]:  # Prefect's `Property is type "None"` toggle
        return [name for name, field in properties.items() if {"type": "null"} in field.get("anyOf", [])]

    assert switches(form["properties"]) == []
    assert switches(options) == ["binary_mask"]  # None is its "auto", on purpose
    for name in ("endpoint_url", "credentials_block", "dask_address"):
        assert form["properties"][name]["default"] == "" and form["properties"][name]["type"] == "string"
    description = form["properties"]["options"]["description"]
    assert all(name in description for name in ("mask_format", "with_images", "image_format", "no_consensus"))
    layout = ["layout", "channels", "modality", "group_by", "dataset_name", "description"]
    assert list(options)[-len(layout) :] == layout
    assert all(options[name]["title"].startswith("Training layout: ") for name in layout)
    assert not any(
        field.get("title", "").startswith("Training layout") for field in list(options.values())[: -len(layout)]
    )


WHERE_A_RUN_STARTS = """
import json, os, signal, sys
from prefect import flow
from prefect.flow_engine import run_flow_in_subprocess
from rbexport.deployments.flow_processes import start_flow_runs_warm

@flow
def where(path: str) -> None:
    facts = {
        "parent": os.getppid(),
        "flows_imported_already": "rbexport.flows.export" in sys.modules,
        "takes_ctrl_c": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }
    with open(path, "w") as file:
        json.dump(facts, file)

if __name__ == "__main__":
    cold = start_flow_runs_warm(["rbexport.flows.export"]) if sys.argv[2] == "warm" else "not asked"
    process = run_flow_in_subprocess(where, parameters={"path": sys.argv[1]})
    process.join()
    print(json.dumps({"runner": os.getpid(), "exitcode": process.exitcode, "cold": cold}))
"""


@pytest.mark.parametrize("start", ["warm", "as Prefect does"])
def test_a_served_run_starts_in_a_fork_of_a_warm_process_and_takes_ctrl_c(start, prefect_api, tmp_path):
    """What serve does before serving (flow_processes.start_flow_runs_warm): Prefect's
    run_flow_in_subprocess, which the runner starts every served run with, then forks the
    run from a process that imported the flows already, not a new interpreter (1.7 s less
    from upload to export, benchmarks/latency.py), and the run still takes Ctrl+C. Without it,
    the same checks see Prefect's own start: the run's parent is the runner, nothing warm."""
    import os
    import subprocess
    import sys

    from prefect_helpers import PROJECT

    script, facts = tmp_path / "where.py", tmp_path / "facts.json"
    script.write_text(WHERE_A_RUN_STARTS)
    ran = subprocess.run(
        [sys.executable, str(script), str(facts), "warm" if start == "warm" else "cold"],
        cwd=PROJECT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    runner = json.loads(ran.stdout.strip().splitlines()[-1])
    run = json.loads(facts.read_text())
    assert runner["exitcode"] == 0 and run["takes_ctrl_c"], (runner, run)
    if start == "warm":
        assert runner["cold"] is None, runner
        assert run["parent"] != runner["runner"] and run["flows_imported_already"], (runner, run)
    else:
        assert run["parent"] == runner["runner"] and not run["flows_imported_already"], (runner, run)
