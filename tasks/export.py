"""The retryable steps of an export run.

Retries are for transient storage errors only (5xx, throttling, resets, timeouts), with
exponential back-off; a task whose data is bad fails at once and is recorded by the flow.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from rbexport.errors import TransientStorageError
from rbexport.options import ExportOptions
from rbexport.report import Failure, RunReport
from rbexport.run import RunPlan, prepare_run, publish_export
from rbexport.task_export import ExportSettings, TaskJob, TaskResult, export_task

STORAGE_RETRIES = 3
BACKOFF_SECONDS = 2  # then 4, 8


def only_transient_errors(task, task_run, state) -> bool:
    """Retry condition: the step failed because the store did not answer this time."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(error, TransientStorageError)


_retrying = dict(
    retries=STORAGE_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_SECONDS),
    retry_jitter_factor=0.2,
    retry_condition_fn=only_transient_errors,
    cache_policy=NO_CACHE,
    persist_result=False,
)


@task(name="read-source", **_retrying)
def read_source(
    source: str,
    destination: str,
    options: ExportOptions,
    endpoint_url: str | None,
    allowed_buckets: tuple[str, ...],
) -> RunPlan:
    plan = prepare_run(source, destination, options, endpoint_url, allowed_buckets)
    get_run_logger().info("%d tasks to export from %s", len(plan.jobs), plan.settings.source)
    return plan


@task(name="export-task", task_run_name="export-{job.task_id}", **_retrying)
def export_one_task(job: TaskJob, settings: ExportSettings) -> TaskResult:
    result = export_task(job, settings)
    get_run_logger().info(
        "%s: %d files, %d bytes%s",
        job.task_id,
        len(result.files),
        sum(record.bytes for record in result.files),
        f", {len(result.warnings)} warnings" if result.warnings else "",
    )
    return result


@task(name="publish-export", **_retrying)
def publish(plan: RunPlan, results: list[TaskResult], failures: list[Failure]) -> RunReport:
    return publish_export(plan, results, failures)
