"""Serve the deployments of prefect.yaml from this process, without a work pool or worker.

    python -m deployments.serve

Runs started from the Prefect UI (or by schedules and triggers) execute here until
you stop it with Ctrl+C. Needs a Prefect server: set PREFECT_API_URL.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import serve
from prefect.flows import load_flow_from_entrypoint

PROJECT = Path(__file__).resolve().parent.parent


def deployments_of(prefect_yaml: Path = PROJECT / "prefect.yaml") -> list:
    """Runner deployments for every deployment in prefect.yaml (work pools aside)."""
    spec = yaml.safe_load(prefect_yaml.read_text())
    runners = []
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(PROJECT / deployment["entrypoint"]))
        runners.append(
            flow.to_deployment(
                name=deployment["name"],
                description=deployment.get("description"),
                tags=deployment.get("tags"),
                parameters=deployment.get("parameters") or {},
            )
        )
    return runners


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


def main() -> None:
    runners = deployments_of()
    forget_deployed_versions(runners)
    serve(*runners)


if __name__ == "__main__":
    main()
