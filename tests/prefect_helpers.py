"""Helpers for tests that talk to the Prefect API: the CLI, served deployments, flow runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_cli(prefect_api: str, *arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_CLI_PROMPT": "false", **(env or {})}
    return subprocess.run(
        [PREFECT, *arguments], capture_output=True, text=True, timeout=300, env=environment, cwd=PROJECT
    )


def _run(coroutine_function):
    from prefect.client.orchestration import get_client

    async def run():
        async with get_client() as client:
            return await coroutine_function(client)

    return asyncio.run(run())


def read_deployment(name: str):
    return _run(lambda client: client.read_deployment_by_name(name))


def flow_runs_of(deployment_name: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment = read_deployment(deployment_name)
    return _run(
        lambda client: client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    )


def automations_of(deployment_name: str) -> list:
    deployment = read_deployment(deployment_name)
    return _run(lambda client: client.read_resource_related_automations(f"prefect.deployment.{deployment.id}"))


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """Poll until `condition()` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # not there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@contextmanager
def served(prefect_api: str, *names: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """`python -m rbexport.deployments.serve NAMES`, until its deployments are registered."""
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "rbexport.deployments.serve", *names],
        cwd=PROJECT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for name in names:
            wait_for(
                lambda name=name: (
                    process.poll() is None and read_deployment(f"{_flow_of(name)}/{name}").work_pool_name is None
                ),
                120,
                f"deployment {name} to be served",
            )
        yield process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Ctrl+C to the process's group, as a terminal sends it; SIGKILL after 30 s. Serve
    must leave no process of its group behind (its fork server, a flow run's process)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert_group_ends(process.pid)


def assert_group_ends(group: int, timeout: float = 15) -> None:
    """Every process of process group `group` ends within `timeout` (zombies count as ended:
    this container's init does not reap them); else kill them and fail, naming them."""
    deadline = time.monotonic() + timeout
    while (left := live_members(group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        os.killpg(group, signal.SIGKILL)
        raise AssertionError(f"processes left running after serve ended: {left}")


def live_members(group: int) -> list[str]:
    """The command lines of process group `group`'s processes that have not ended (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[2]) != group:
                continue
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        members.append(f"{stat.parent.name}: {command[:160]}")
    return members


def _flow_of(deployment: str) -> str:
    flows = {
        "watch-source": "watch-source",
        "verify-after-export": "verify-export",
        "release-manual": "release-export",
        "release-weekly": "release-export",
    }
    return flows.get(deployment, "export-project")


def scheduled_runs_of(deployment_name: str) -> list:
    """The runs the server's scheduler created for a deployment and that have not started."""
    return [run for run in flow_runs_of(deployment_name) if run.auto_scheduled and run.state.is_scheduled()]


def start_now(flow_run) -> None:
    """Move a scheduled run's start to now: the run the scheduler made, due at once."""
    from prefect.states import Scheduled
    from prefect.types._datetime import now

    _run(lambda client: client.set_flow_run_state(flow_run.id, Scheduled(scheduled_time=now("UTC")), force=True))


def read_flow_run(flow_run_id):
    return _run(lambda client: client.read_flow_run(flow_run_id))


@contextmanager
def worker(prefect_api: str, pool: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool POOL`, polling every second."""
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1", **(env or {})}
    process = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool],
        cwd=PROJECT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        _stop(process)


def log_messages_of(flow_run_id) -> str:
    """Every log line of a flow run and its task runs, as the UI shows them (sent every few seconds)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = _run(
        lambda client: client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    )
    return "\n".join(log.message for log in logs)


def delete_all_deployments() -> None:
    """Remove every deployment (and so its schedules): the scheduler and the late-runs
    service stop writing runs nobody executes for the rest of the session."""

    async def delete(client):
        for deployment in await client.read_deployments():
            await client.delete_deployment(deployment.id)

    _run(delete)
