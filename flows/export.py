"""The export flow: read the source, export every changed task, publish tasks.json and the report."""

from __future__ import annotations

import os
import re
import time
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.states import Failed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from rbexport import progress
from rbexport.errors import ConfigurationError, ExportIncomplete
from rbexport.options import ExportOptions
from rbexport.report import RunReport
from rbexport.run import RunPlan, failure_of
from rbexport.task_export import TaskOutcome
from rbexport.variants import Preset, Variant
from tasks.export import export_one_task, publish, read_source, s3_access, wait_for_uploads

DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))


@flow(name="export-project", validate_parameters=True)
def export_project(
    source: str,
    destination: str,
    options: ExportOptions = ExportOptions(),
    variants: tuple[Preset, ...] = (),
    custom_variants: tuple[Variant, ...] = (),
    incremental: bool = True,
    prune: bool = False,
    replace_layout: bool = False,
    quiet_seconds: float = 0,
    endpoint_url: str | None = None,
    credentials_block: str | None = None,
    allowed_buckets: list[str] | None = None,
    workers: int = 0,
    task_runner: Literal["threads", "processes", "dask"] = "threads",
    dask_address: str | None = None,
) -> list[RunReport]:
    """Export a RedBrick-format project into the RedBrick export structure.

    Args:
        source: Where the project is: s3://bucket/prefix, or a folder on the worker.
        destination: Where the export goes: s3://bucket/prefix, or a folder on the worker.
        options: The structure to write when no variants are chosen. With variants, only
            its no_consensus and compress apply (to the presets).
        variants: Structures to write side by side, each as a complete export in a folder
            of the destination named after it (standard, semantic, ...). Masks are read
            once for all of them. Choose none to write one export, with the options above,
            at the destination itself.
        custom_variants: Structures of your own, written like the variants: each needs a
            name (its folder) and the options of that structure.
        incremental: Skip tasks whose task JSON, mask objects and options are unchanged
            since the last export to this destination.
        prune: Delete the files of tasks removed from the source, and files an export
            no longer writes.
        replace_layout: The destination already holds an export laid out differently
            (one export at its root, or variant folders): delete that export and write
            this one. Without it such a run stops before writing anything.
        quiet_seconds: Wait until nothing in the source has changed for this long
            before reading it (lets a burst of uploads settle).
        endpoint_url: The S3 endpoint, such as `http://127.0.0.1:8333`. None (the
            default): the worker's AWS_ENDPOINT_URL, else AWS S3.
        credentials_block: A Prefect Secret block holding the S3 keys as JSON
            (aws_access_key_id, aws_secret_access_key). None (the default): boto3's standard chain
            (environment, profiles, instance roles) on the worker.
        allowed_buckets: Buckets that masks may be read from besides the source prefix.
        workers: How many tasks are exported at the same time. 0 (the default): twice the
            worker's cores, at most 8 (each task also waits until its volumes fit in memory).
        task_runner: Where tasks run: threads of this process, a pool of local
            processes, or a Dask cluster (prefect-dask).
        dask_address: The Dask scheduler to use with task_runner dask, such as
            `tcp://10.0.0.5:8786`. None (the default): a local cluster of `workers` processes.
    """
    try:
        refuse_placeholders(source=source, destination=destination, endpoint_url=endpoint_url)
        access = s3_access(endpoint_url, credentials_block)
        if quiet_seconds > 0:
            wait_for_uploads(source, quiet_seconds, access, return_state=True).result()
        chosen = [*variants, *custom_variants]
        plan = read_source(
            source, destination, options, chosen, incremental, prune, access, tuple(allowed_buckets or ()),
            replace_layout, return_state=True,
        ).result()
        outcomes = export_tasks(plan, make_task_runner(task_runner, workers or DEFAULT_WORKERS, dask_address))
        reports = publish(plan, outcomes, return_state=True).result()
    except ConfigurationError as error:
        # An answer, not a crash: one line in the run's log and its state, no traceback.
        get_run_logger().error("cannot export: %s", error)
        return Failed(message=str(error), data=error)
    create_markdown_artifact(
        key="export-report",
        markdown="\n".join(report.to_markdown() for report in reports),
        description="; ".join(f"{report.variant}: {report.summary()}" for report in reports),
    )
    for report in reports:
        if report.dataset:
            create_table_artifact(
                key=artifact_key(f"dataset-{report.variant}"),
                table=report.dataset_rows(),
                description=f"{report.variant}: {report.dataset['cases']} cases; per fold "
                + ", ".join(f"{fold}: {count}" for fold, count in report.dataset["cases_per_fold"].items()),
            )
        get_run_logger().info("%s: %s", report.variant, report.summary())
    failed = {failure.taskId for report in reports for failure in report.failures}
    if failed:
        message = (
            f"{len(failed)} of {len(plan.tasks) + len(plan.failures)} tasks failed; "
            f"see {', '.join(report.destination.rstrip('/') + '/export-report.json' for report in reports)}"
        )
        return Failed(message=message, data=ExportIncomplete(message, reports))
    return reports


def artifact_key(text: str) -> str:
    """Prefect artifact keys hold lowercase letters, digits and dashes."""
    return "-".join(filter(None, re.split(r"[^a-z0-9]+", text.lower())))


def refuse_placeholders(**parameters: str | None) -> None:
    """A deployment made while an RBEXPORT_* variable was unset carries `{{ $NAME }}`."""
    for name, value in parameters.items():
        if value and "{{" in value:
            raise ConfigurationError(
                f"parameter {name} is the unresolved placeholder {value!r}: set that variable "
                "before `prefect deploy`, or give the parameter a value"
            )


def make_task_runner(kind: str, workers: int, dask_address: str | None = None) -> TaskRunner:
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigurationError("task_runner dask needs prefect-dask: pip install 'rbexport[dask]'") from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    raise ConfigurationError(f"unknown task runner {kind!r}: threads, processes or dask")


def export_tasks(plan: RunPlan, task_runner: TaskRunner) -> list[TaskOutcome]:
    """Fan out one retryable task per changed source task; a failure never stops the others."""
    logger = get_run_logger()
    observer = progress.current()
    jobs = plan.jobs
    exporting = {job.task_id for job in jobs}
    # Tasks a dataset variant cannot make cases of, and that no other variant exports.
    unplanned = {
        failure.taskId: failure for target_plan in plan.targets for failure in target_plan.failures
        if failure.taskId not in exporting
    }
    observer.started(len(jobs) + len(plan.failures) + len(unplanned), len(plan.tasks) - len(jobs) - len(unplanned))
    for target_plan in plan.targets:
        for failure in target_plan.failures:
            logger.warning("[%s] %s", target_plan.target.name, failure.line())
    for failure in [*plan.failures, *unplanned.values()]:
        if failure in plan.failures:
            logger.warning(failure.line())
        observer.task_done(failure.taskId or "(no taskId)", failure.detail)

    started = time.perf_counter()
    outcomes: list[TaskOutcome] = []
    configuration_error: ConfigurationError | None = None
    with task_runner as runner:
        futures = {runner.submit(export_one_task, {"job": job, "settings": plan.settings}): job for job in jobs}
        for future in as_completed(list(futures)):
            job = futures[future]
            outcome = future.result(raise_on_failure=False)
            if not isinstance(outcome, TaskOutcome):
                if isinstance(outcome, ConfigurationError):
                    configuration_error = configuration_error or outcome
                outcome = TaskOutcome(job.task_id, failures=failure_of(job, outcome))
            outcomes.append(outcome)
            first_failure = next(iter(outcome.failures.values()), None)
            if first_failure:
                logger.warning(first_failure.line())
            observer.task_done(job.task_id, first_failure.detail if first_failure else None)
    if configuration_error is not None:
        raise configuration_error
    plan.timings["export_tasks"] = time.perf_counter() - started
    return outcomes
