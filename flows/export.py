"""The export flow: read the source, export every task, publish tasks.json and the report."""

from __future__ import annotations

import os
import time

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from rbexport import progress
from rbexport.errors import ConfigurationError, ExportIncomplete
from rbexport.options import ExportOptions
from rbexport.report import Failure, RunReport
from rbexport.run import RunPlan, failure_of
from rbexport.task_export import TaskResult
from tasks.export import export_one_task, publish, read_source

DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))


@flow(name="export-project", validate_parameters=True)
def export_project(
    source: str,
    destination: str,
    options: ExportOptions = ExportOptions(),
    endpoint_url: str | None = None,
    allowed_buckets: list[str] | None = None,
    workers: int = DEFAULT_WORKERS,
) -> RunReport:
    """Export a RedBrick-format project into the RedBrick export structure.

    Args:
        source: Where the project is: s3://bucket/prefix or a local folder.
        destination: Where the export goes: s3://bucket/prefix or a local folder.
        options: Which structure to write (semantic, binary mask, consensus, compression).
        endpoint_url: S3 endpoint such as http://127.0.0.1:8333; default AWS_ENDPOINT_URL, else AWS.
        allowed_buckets: Buckets that masks may be read from besides the source prefix.
        workers: How many tasks are exported at the same time.
    """
    plan = read_source(source, destination, options, endpoint_url, tuple(allowed_buckets or ()))
    results, failures = export_tasks(plan, workers)
    report = publish(plan, results, failures)
    create_markdown_artifact(key="export-report", markdown=report.to_markdown(), description=report.summary())
    get_run_logger().info(report.summary())
    if report.failures:
        raise ExportIncomplete(
            f"{len(report.failures)} of {len(report.failures) + len(report.exported)} tasks failed; "
            f"see {report.destination.rstrip('/')}/export-report.json",
            report,
        )
    return report


def export_tasks(plan: RunPlan, workers: int) -> tuple[list[TaskResult], list[Failure]]:
    """Fan out one retryable task per source task; a failed task never stops the others."""
    logger = get_run_logger()
    observer = progress.current()
    observer.started(len(plan.jobs) + len(plan.failures))
    for failure in plan.failures:
        logger.warning(failure.line())
        observer.task_done(failure.taskId or "(no taskId)", failure.detail)

    started = time.perf_counter()
    results: list[TaskResult] = []
    failures: list[Failure] = []
    configuration_error: ConfigurationError | None = None
    with ThreadPoolTaskRunner(max_workers=workers) as runner:
        futures = {
            runner.submit(export_one_task, {"job": job, "settings": plan.settings}): job for job in plan.jobs
        }
        for future in as_completed(list(futures)):
            job = futures[future]
            outcome = future.result(raise_on_failure=False)
            if isinstance(outcome, TaskResult):
                results.append(outcome)
                observer.task_done(job.task_id, None)
                continue
            if isinstance(outcome, ConfigurationError):
                configuration_error = configuration_error or outcome
            failure = failure_of(job, outcome)
            failures.append(failure)
            logger.warning(failure.line())
            observer.task_done(job.task_id, failure.detail)
    if configuration_error is not None:
        raise configuration_error
    plan.timings["export_tasks"] = time.perf_counter() - started
    return results, failures
