"""prefect.yaml as a user deploys it, and a run started the way the Prefect UI starts one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.serve import deployments_of

PROJECT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_cli(prefect_api: str, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_CLI_PROMPT": "false"}
    return subprocess.run(
        [PREFECT, *arguments], capture_output=True, text=True, timeout=300, env=environment, cwd=PROJECT
    )


def read_deployment(name: str):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    return asyncio.run(read())


def test_prefect_deploy_all_creates_the_manual_deployment(prefect_api):
    created = prefect_cli(prefect_api, "work-pool", "create", "rbexport", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli(prefect_api, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    deployment = read_deployment("export-project/export-manual")
    assert deployment.entrypoint == "flows/export.py:export_project"
    assert deployment.work_pool_name == "rbexport"
    assert "manual" in deployment.tags
    assert set(deployment.parameter_openapi_schema["required"]) == {"source", "destination"}
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}
    ]


def test_serve_offers_every_deployment_of_prefect_yaml():
    import yaml

    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    assert [runner.name for runner in deployments_of()] == [item["name"] for item in spec["deployments"]]


def test_a_run_started_like_the_ui_does_exports(prefect_api, sample_source, tmp_path):
    """`python -m deployments.serve` picks up a run created through the API and exports."""
    from prefect.deployments import run_deployment

    environment = {**os.environ, "PREFECT_API_URL": prefect_api}
    server = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"], cwd=PROJECT, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # served once the deployment exists without a work pool
            try:
                if read_deployment("export-project/export-manual").work_pool_name is None:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.5)
        destination = tmp_path / "export"
        flow_run = run_deployment(
            "export-project/export-manual",
            parameters={"source": str(sample_source), "destination": str(destination),
                        "options": {"semantic_mask": True}},
            timeout=180,
        )
        if not flow_run.state.is_completed():
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"{flow_run.state}\n{server.stdout.read().decode()[-5000:]}")
        tasks = json.loads((destination / "tasks.json").read_text())
        assert len(tasks) == 6 and tasks[0]["series"][0]["semanticMask"] is True
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
