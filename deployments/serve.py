"""Serve the deployments of prefect.yaml from this process, without a work pool or worker.

    python -m rbexport.deployments.serve                      # all of them
    python -m rbexport.deployments.serve export-on-upload     # some, by name

Schedules, event triggers and runs started from the Prefect UI execute here until you
stop it with Ctrl+C. Needs a Prefect server (PREFECT_API_URL). The RBEXPORT_* settings
(deployments/settings.py) fill in prefect.yaml's `{{ $RBEXPORT_... }}` placeholders.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import yaml
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.schedules import Cron, Interval
from prefect.utilities.templating import apply_values

from rbexport.deployments.flow_processes import start_flow_runs_warm
from rbexport.deployments.settings import template_values

# How often the runner asks the server for runs to start (Prefect's default: 10 s, most of
# the wait from an upload to its export). A query is one small request.
POLL_SECONDS = 1.0

# How long Prefect's runner may take to shut down after Ctrl+C before this process exits anyway.
SHUTDOWN_GRACE_SECONDS = 20
STARTUP_SETTLE_SECONDS = 10.0  # after a Ctrl+C during start-up: see main

PROJECT = Path(__file__).resolve().parent.parent


def deployment_specs(prefect_yaml: Path = PROJECT / "prefect.yaml") -> list[dict]:
    """prefect.yaml's deployments with `{{ $VAR }}` filled in as `prefect deploy` does."""
    for name, value in template_values().items():
        os.environ.setdefault(name, value)  # `{{ $NAME }}` placeholders read the environment
    spec = yaml.safe_load(prefect_yaml.read_text())
    return cast(list[dict], apply_values(spec["deployments"], {}, remove_notset=False))


@dataclass(frozen=True)
class ServedFlow:
    """A deployment of prefect.yaml as its flow, imported from rbexport's package (so a run's
    process imports it by name), and the arguments of Flow.to_deployment and Runner.add_flow."""

    flow: Flow
    arguments: dict

    @property
    def name(self) -> str:
        return self.arguments["name"]

    @property
    def full_name(self) -> str:
        """`flow/deployment`, as the API reads a deployment by name."""
        return f"{self.flow.name}/{self.name}"


def runner_deployment(spec: dict):
    served = served_flow(spec)
    return served.flow.to_deployment(**served.arguments)


def served_flow(spec: dict) -> ServedFlow:
    path, function = spec["entrypoint"].split(":")
    flow: Flow = load_flow_from_entrypoint(f"rbexport.{path.removesuffix('.py').replace('/', '.')}:{function}")
    arguments = dict(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters=spec.get("parameters") or {},
        schedules=[_schedule(item) for item in spec.get("schedules") or []],
        triggers=[DeploymentEventTrigger(**_without(item, "type")) for item in spec.get("triggers") or []],
        concurrency_limit=_concurrency(spec.get("concurrency_limit")),
    )
    return ServedFlow(flow, arguments)


def _schedule(item: dict):
    if "cron" in item:
        return Cron(item["cron"], timezone=item.get("timezone"))
    return Interval(timedelta(seconds=item["interval"]), timezone=item.get("timezone"))


def _concurrency(limit: int | dict | None) -> int | ConcurrencyLimitConfig | None:
    return ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit


def _without(item: dict, key: str) -> dict:
    return {name: value for name, value in item.items() if name != key}


def forget_deployed_versions(runners: list[ServedFlow]) -> None:
    """Delete deployments of the same names made by `prefect deploy` for a work pool, with
    their automations, and every automation left pointing at a deleted deployment.

    A served deployment that updates one made for a worker keeps parts of the worker's
    set-up, and its runs then crash loading the flow; serving replaces it cleanly. The
    server does not delete a deleted deployment's automations: left enabled, they fail on
    every event with `Unexpected status from 'run-deployment' action: 404`.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def forget() -> None:
        async with get_client() as client:
            for runner in runners:
                try:
                    deployment = await client.read_deployment_by_name(runner.full_name)
                except ObjectNotFound:
                    continue
                if deployment.work_pool_name:
                    for automation in await client.read_resource_related_automations(
                        f"prefect.deployment.{deployment.id}"
                    ):
                        await client.delete_automation(automation.id)
                    await client.delete_deployment(deployment.id)
            await forget_orphaned_automations(client)

    run_coro_as_sync(forget())


async def forget_orphaned_automations(client) -> list[str]:
    """Delete the automations whose every action runs a deployment that no longer exists;
    returns their names."""
    from prefect.events.actions import RunDeployment
    from prefect.exceptions import ObjectNotFound

    forgotten = []
    for automation in await client.read_automations():
        targets = [action.deployment_id for action in automation.actions if isinstance(action, RunDeployment)]
        if not targets or len(targets) != len(automation.actions) or None in targets:
            continue
        missing = 0
        for deployment_id in targets:
            try:
                await client.read_deployment(deployment_id)
            except ObjectNotFound:
                missing += 1
        if missing == len(targets):
            await client.delete_automation(automation.id)
            forgotten.append(automation.name)
    return forgotten


def main(names: list[str]) -> int:
    specs = deployment_specs()
    unknown = set(names) - {spec["name"] for spec in specs}
    if unknown:
        print(f"no such deployment in prefect.yaml: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    runners = [served_flow(spec) for spec in specs if not names or spec["name"] in names]
    forget_deployed_versions(runners)
    cold = start_flow_runs_warm(sorted({runner.flow.fn.__module__ for runner in runners}))
    if cold:
        print(f"serve: {cold}", file=sys.stderr)
    serving_since = datetime.now(UTC)
    stop_within(SHUTDOWN_GRACE_SECONDS, lambda: wind_down(runners, serving_since))
    settle_seconds = 0.0
    try:
        serve_flows(runners)  # until Ctrl+C
    except KeyboardInterrupt:
        # Ctrl+C while the runner still registered the deployments, before its loop takes Ctrl+C
        # itself. The registration in flight goes on in Prefect's loop thread and may land
        # (unpaused) after the pause: watch a few seconds for that.
        settle_seconds = STARTUP_SETTLE_SECONDS
    wind_down(runners, serving_since, settle_seconds)
    return 0


def serve_flows(runners: list[ServedFlow]) -> None:
    """Prefect's serve(), given the flows rather than their deployments (Runner.add_flow
    registers the same deployment): the runner then starts a run from the flow object in a
    process of its own (run_flow_in_subprocess, started warm: flow_processes) instead of
    `python -m prefect.engine` importing Prefect and the flow again. Until Ctrl+C."""
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True, query_seconds=POLL_SECONDS)
    for served in runners:
        runner.add_flow(served.flow, **served.arguments)
    listed = ", ".join(served.full_name for served in runners)
    print(
        f"serve: serving {listed}; asks for runs every {POLL_SECONDS:g} s. Start one from the UI or with"
        " `prefect deployment run NAME`; Ctrl+C stops.",
        file=sys.stderr,
    )
    try:
        asyncio.run(runner.start())
    except* (KeyboardInterrupt, TerminationSignal):
        # The runner has shut down; main pauses what it served. A Ctrl+C that lands while
        # one of the runner's tasks runs (its poll's request) comes out of its task groups
        # as an exception group, hence except*.
        pass


def wind_down(runners: list[ServedFlow], since: datetime, settle_seconds: float = 0.0) -> None:
    """After Ctrl+C: pause what was served and end the runs it left Running. Prefect's
    runner pauses its deployments as it shuts down, but under load that step is cancelled
    now and then, and the schedules then pile up Late runs nobody executes: pause them
    again here, every time. With `settle_seconds`, look again each second until two looks
    in a row find nothing unpaused (or the time is up): a registration still in flight
    lands unpaused."""
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def pause() -> int:
        paused = 0
        async with get_client() as client:
            for deployment in await registered_deployments(client, runners):
                if not deployment.paused:
                    await client.pause_deployment(deployment.id)
                    paused += 1
        return paused

    try:
        run_coro_as_sync(pause())
        deadline, quiet_looks = time.monotonic() + settle_seconds, 0
        while quiet_looks < 2 and time.monotonic() < deadline:
            time.sleep(1)
            quiet_looks = quiet_looks + 1 if run_coro_as_sync(pause()) == 0 else 0
    finally:
        mark_interrupted_runs_crashed(runners, since)
    print(f"serve: paused {', '.join(runner.name for runner in runners)}", file=sys.stderr)


async def registered_deployments(client, runners: list[ServedFlow]) -> list:
    """The server's deployments of `runners`, leaving out those not registered (yet): a
    Ctrl+C during start-up can come before the runner registered every one."""
    from prefect.exceptions import ObjectNotFound

    found = []
    for runner in runners:
        try:
            found.append(await client.read_deployment_by_name(runner.full_name))
        except ObjectNotFound:
            continue
    return found


def stop_within(grace_seconds: float, before_exit: Callable[[], None]) -> None:
    """Make sure Ctrl+C stops this process: Prefect's runner shuts down on its own, but
    a clean-clone CI run twice saw it still running 120 s after one Ctrl+C. From the first
    Ctrl+C, a watchdog gives it `grace_seconds`; then it prints where each thread is (for
    the log), runs `before_exit` and exits. A second Ctrl+C interrupts as usual."""

    def watchdog() -> None:
        time.sleep(grace_seconds)
        print(f"serve: still shutting down {grace_seconds:.0f} s after Ctrl+C; stopping now", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        try:
            before_exit()
        finally:
            os._exit(0)

    def on_interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=watchdog, name="serve-shutdown-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)


def mark_interrupted_runs_crashed(runners: list[ServedFlow], since: datetime) -> None:
    """Runs this process started and Ctrl+C ended would stay Running in the UI forever:
    mark them Crashed, saying why. (A served deployment is served by one process only.)"""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def mark() -> None:
        async with get_client() as client:
            ids = [deployment.id for deployment in await registered_deployments(client, runners)]
            in_flight = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)),
                flow_run_filter=FlowRunFilter(state=in_flight),
            )
            for run in runs:
                if run.start_time is None or run.start_time >= since:
                    message = "stopped with the process serving it (Ctrl+C); start it again"
                    await client.set_flow_run_state(run.id, Crashed(message=message), force=True)

    run_coro_as_sync(mark())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
