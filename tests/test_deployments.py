"""prefect.yaml as a user deploys it, and a run started the way the Prefect UI starts one."""

from __future__ import annotations

import json

import pytest
import yaml
from prefect_helpers import PROJECT, automations_of, prefect_cli, read_deployment, served

from rbexport.deployments.serve import deployment_specs, runner_deployment

SETTINGS = {
    "RBEXPORT_SOURCE": "s3://studies/brain",
    "RBEXPORT_DESTINATION": "s3://exports/brain",
    "RBEXPORT_ENDPOINT_URL": "http://127.0.0.1:8333",
}


@pytest.fixture
def no_schedules_left(prefect_api):
    yield
    from prefect_helpers import delete_all_deployments

    delete_all_deployments()


def test_prefect_deploy_all_creates_every_deployment(prefect_api, no_schedules_left):
    created = prefect_cli(prefect_api, "work-pool", "create", "rbexport", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli(prefect_api, "--no-prompt", "deploy", "--all", env=SETTINGS)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    located = {
        "source": "s3://studies/brain",
        "destination": "s3://exports/brain",
        "endpoint_url": "http://127.0.0.1:8333",
    }

    nightly = read_deployment("export-project/export-nightly")
    assert nightly.work_pool_name == "rbexport"
    assert nightly.entrypoint == "flows/export.py:export_project"
    assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}]
    [schedule] = nightly.schedules
    assert schedule.active
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Amsterdam")
    assert nightly.parameters == {**located, "variants": ["standard", "semantic"], "prune": True}

    manual = read_deployment("export-project/export-manual")
    assert manual.parameters == {"endpoint_url": "http://127.0.0.1:8333"} and not manual.schedules
    form = manual.parameter_openapi_schema
    assert set(form["required"]) == {"source", "destination"}
    assert all(field.get("description") for field in form["properties"].values())
    assert form["definitions"]["Preset"]["enum"] == ["standard", "binary", "single", "semantic", "semantic-binary"]
    assert all(field.get("description") for field in form["definitions"]["ExportOptions"]["properties"].values())

    on_upload = read_deployment("export-project/export-on-upload")
    assert on_upload.parameters == {**located, "variants": ["standard", "semantic"], "quiet_seconds": 10}
    assert on_upload.global_concurrency_limit.limit == 1
    assert on_upload.concurrency_options.collision_strategy == "ENQUEUE"
    [automation] = automations_of("export-project/export-on-upload")
    assert automation.trigger.expect == {"rbexport.object.created"}
    assert automation.trigger.match.model_dump()["prefect.resource.id"] == "s3://studies/brain/*"
    assert automation.trigger.within.total_seconds() == 10

    watcher = read_deployment("watch-source/watch-source")
    assert watcher.schedules[0].schedule.interval.total_seconds() == 60
    assert watcher.parameters == {"source": "s3://studies/brain", "endpoint_url": "http://127.0.0.1:8333"}


def test_serve_offers_every_deployment_of_prefect_yaml(monkeypatch):
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    specs = deployment_specs()
    names = [item["name"] for item in yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]]
    assert [spec["name"] for spec in specs] == names
    on_upload = runner_deployment(next(spec for spec in specs if spec["name"] == "export-on-upload"))
    assert on_upload.parameters["source"] == "s3://studies/brain"
    assert on_upload.triggers[0].match.model_dump() == {"prefect.resource.id": "s3://studies/brain/*"}
    assert on_upload.concurrency_options.collision_strategy == "ENQUEUE"


@pytest.mark.parametrize(
    "interrupt",
    [KeyboardInterrupt(), BaseExceptionGroup("unhandled errors in a TaskGroup", [KeyboardInterrupt()])],
    ids=["between tasks", "inside a task"],
)
def test_serve_ends_quietly_on_ctrl_c_wherever_the_runners_loop_was(interrupt, monkeypatch, capsys):
    """A Ctrl+C that lands while one of the runner's tasks runs (its poll's request) leaves
    the runner's task groups as an exception group; a clean-clone CI run printed its
    traceback. serve_flows ends on either as on Ctrl+C; anything else is not swallowed."""
    import prefect.runner

    from rbexport.deployments import serve

    class Runner:  # Prefect's runner, as far as serve_flows uses it, stopped by `interrupt`
        def __init__(self, **settings):
            pass

        def add_flow(self, flow, **arguments):
            pass

        async def start(self):
            raise interrupt

    monkeypatch.setattr(prefect.runner, "Runner", Runner)
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    runners = [serve.served_flow(spec) for spec in deployment_specs() if spec["name"] == "export-manual"]
    serve.serve_flows(runners)  # returns: main then pauses what it served
    assert "Traceback" not in capsys.readouterr().err

    def fails():
        raise BaseExceptionGroup("unhandled errors in a TaskGroup", [KeyboardInterrupt(), ValueError("a bug")])

    monkeypatch.setattr(Runner, "start", lambda self: fails())
    with pytest.raises(BaseExceptionGroup) as raised:
        serve.serve_flows(runners)
    assert [type(error) for error in raised.value.exceptions] == [ValueError]


def test_a_placeholder_left_unresolved_is_a_clear_error(prefect_api, tmp_path):
    import pytest

    from rbexport.errors import ConfigurationError
    from rbexport.flows.export import export_project

    with pytest.raises(
        ConfigurationError, match=r"parameter source is the unresolved placeholder '\{\{ \$RBEXPORT_SOURCE \}\}'"
    ):
        export_project("{{ $RBEXPORT_SOURCE }}", str(tmp_path / "export"))


def test_a_run_started_like_the_ui_does_exports(prefect_api, sample_source, tmp_path):
    """`python -m rbexport.deployments.serve` picks up a run created through the API and exports."""
    from prefect.deployments import run_deployment

    with served(prefect_api, "export-manual") as server:
        destination = tmp_path / "export"
        flow_run = run_deployment(
            "export-project/export-manual",
            parameters={
                "source": str(sample_source),
                "destination": str(destination),
                "variants": ["standard"],
                "custom_variants": [{"name": "mine", "options": {"semantic_mask": True}}],
            },
            timeout=180,
            poll_interval=1,
        )
        assert flow_run.state.is_completed(), (flow_run.state, server.stdout.read1().decode()[-3000:])
    tasks = json.loads((destination / "mine/tasks.json").read_text())
    assert len(tasks) == 6 and tasks[0]["series"][0]["semanticMask"] is True
    assert (destination / "standard/segmentations/Brain_004/T2/instance-3.nii.gz").exists()


def test_serve_stops_on_ctrl_c_with_a_run_in_flight(prefect_api, sample_source, tmp_path):
    """Ctrl+C (SIGINT to the terminal's process group) ends `rbexport.deployments.serve` and its run."""
    import os
    import signal
    import subprocess

    from prefect.deployments import run_deployment
    from prefect_helpers import read_flow_run, wait_for

    # A task naming a mask that is not there keeps the run waiting out its quiet period
    # (a complete source exports at once, and the run could end before it is seen Running).
    (sample_source / "masks/brain-001.nii.gz").unlink()
    with served(prefect_api, "export-manual", env={"PREFECT_RUNNER_POLL_FREQUENCY": "1"}) as server:
        flow_run = run_deployment(
            "export-project/export-manual",
            timeout=0,
            parameters={"source": str(sample_source), "destination": str(tmp_path / "export"), "quiet_seconds": 600},
        )
        try:
            wait_for(lambda: read_flow_run(flow_run.id).state.is_running(), 60, "the run to start")
        except AssertionError as timeout:  # say what the run and the runner were doing
            state = read_flow_run(flow_run.id).state
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=60)
            log = server.stdout.read().decode(errors="replace")[-4000:]
            raise AssertionError(
                f"{timeout}; the run is {state.name} ({state.message}); serve printed:\n{log}"
            ) from None
        os.killpg(server.pid, signal.SIGINT)
        # Stops in 1-3 s here (README); the bound is generous because the child run reports
        # its end to a SQLite test server that the other xdist worker may be loading.
        # (No timing assertion: how fast is a benchmark's question.)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
        output = server.stdout.read1().decode(errors="replace")[-4000:] if server.poll() is not None else "(running)"
        assert server.returncode == 0, f"serve did not stop on Ctrl+C (code {server.returncode}):\n{output}"
    assert not read_flow_run(flow_run.id).state.is_running()


def test_a_stuck_shutdown_still_ends_after_the_grace_period(tmp_path):
    """If Prefect's runner never finishes shutting down after Ctrl+C, serve's watchdog
    marks the runs and exits once the grace period is over."""
    import signal
    import subprocess
    import sys

    from prefect_helpers import PROJECT

    script = tmp_path / "stuck.py"
    script.write_text(
        "import sys, time\n"
        "from rbexport.deployments.serve import stop_within\n"
        "stop_within(2, lambda: print('runs marked', flush=True))\n"
        "try:\n    print('serving', flush=True)\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    time.sleep(60)  # a shutdown that never ends\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "serving\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.endswith("runs marked\n")
    assert "still shutting down 2 s after Ctrl+C; stopping now" in err and "Thread" in err  # where it hung
