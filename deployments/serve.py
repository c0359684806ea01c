"""Serve the deployments of prefect.yaml from this process, without a work pool or worker.

    python -m deployments.serve                      # all of them
    python -m deployments.serve export-on-upload     # some, by name

Schedules, event triggers and runs started from the Prefect UI execute here until you
stop it with Ctrl+C. Needs a Prefect server (PREFECT_API_URL). The RBEXPORT_* settings
(deployments/settings.py) fill in prefect.yaml's `{{ $RBEXPORT_... }}` placeholders.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.schedules import Cron, Interval
from prefect.utilities.templating import apply_values

from deployments.settings import template_values

# How long Prefect's runner may take to shut down after Ctrl+C before this process exits anyway.
SHUTDOWN_GRACE_SECONDS = 20

PROJECT = Path(__file__).resolve().parent.parent


def deployment_specs(prefect_yaml: Path = PROJECT / "prefect.yaml") -> list[dict]:
    """prefect.yaml's deployments with `{{ $VAR }}` filled in as `prefect deploy` does."""
    for name, value in template_values().items():
        os.environ.setdefault(name, value)  # `{{ $NAME }}` placeholders read the environment
    spec = yaml.safe_load(prefect_yaml.read_text())
    return cast(list[dict], apply_values(spec["deployments"], {}, remove_notset=False))


def runner_deployment(spec: dict):
    flow: Flow = load_flow_from_entrypoint(str(PROJECT / spec["entrypoint"]))
    return flow.to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters=spec.get("parameters") or {},
        schedules=[_schedule(item) for item in spec.get("schedules") or []],
        triggers=[DeploymentEventTrigger(**_without(item, "type")) for item in spec.get("triggers") or []],
        concurrency_limit=_concurrency(spec.get("concurrency_limit")),
    )


def _schedule(item: dict):
    if "cron" in item:
        return Cron(item["cron"], timezone=item.get("timezone"))
    return Interval(timedelta(seconds=item["interval"]), timezone=item.get("timezone"))


def _concurrency(limit: int | dict | None) -> int | ConcurrencyLimitConfig | None:
    return ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit


def _without(item: dict, key: str) -> dict:
    return {name: value for name, value in item.items() if name != key}


def forget_deployed_versions(runners: list) -> None:
    """Delete deployments of the same names made by `prefect deploy` for a work pool.

    A served deployment that updates one made for a worker keeps parts of the worker's
    set-up, and its runs then crash loading the flow; serving replaces it cleanly.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def forget() -> None:
        async with get_client() as client:
            for runner in runners:
                try:
                    deployment = await client.read_deployment_by_name(f"{runner.flow_name}/{runner.name}")
                except ObjectNotFound:
                    continue
                if deployment.work_pool_name:
                    await client.delete_deployment(deployment.id)

    run_coro_as_sync(forget())


def main(names: list[str]) -> int:
    specs = deployment_specs()
    unknown = set(names) - {spec["name"] for spec in specs}
    if unknown:
        print(f"no such deployment in prefect.yaml: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    runners = [runner_deployment(spec) for spec in specs if not names or spec["name"] in names]
    forget_deployed_versions(runners)
    serving_since = datetime.now(UTC)
    stop_within(SHUTDOWN_GRACE_SECONDS, lambda: mark_interrupted_runs_crashed(runners, serving_since))
    serve(*runners)  # until Ctrl+C
    mark_interrupted_runs_crashed(runners, serving_since)
    return 0


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


def mark_interrupted_runs_crashed(runners: list, since: datetime) -> None:
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
            ids = [(await client.read_deployment_by_name(f"{runner.flow_name}/{runner.name}")).id for runner in runners]
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
