"""The export flow: read the source, export every changed task, publish tasks.json and the report."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Literal, cast
from uuid import UUID

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from rbexport import progress
from rbexport.engine import DEFAULT_WORKERS, BatchResults, batch_label, export_all
from rbexport.errors import ConfigurationError, ExportIncomplete
from rbexport.filters import TaskFilter
from rbexport.lease import WAIT_SECONDS
from rbexport.model import ExportRequest, ExportSettings, TaskJob, TaskOutcome
from rbexport.options import ExportOptions
from rbexport.report import REPORT_NAME, RunReport
from rbexport.variants import Preset, Variant
from tasks.credentials import s3_access
from tasks.export import export_tasks_of_batch, failed, publish, read_source, wait_for_uploads
from tasks.one_writer import one_writer

# Emitted once per variant when a run ends, about its destination (`destination_resource`).
EXPORT_COMPLETED = "rbexport.export.completed"
EXPORT_FAILED = "rbexport.export.failed"

# The form's default: every option at its default (ExportOptions is frozen).
DEFAULT_OPTIONS = ExportOptions()
DEFAULT_FILTERS = TaskFilter()  # every task of the source


@flow(name="export-project", validate_parameters=True)
def export_project(
    source: str,
    destination: str,
    options: ExportOptions = DEFAULT_OPTIONS,
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
    batch_size: int = 0,
    lock_timeout: float = WAIT_SECONDS,
    filters: TaskFilter = DEFAULT_FILTERS,
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
            default): the credentials block's endpoint, else the worker's AWS_ENDPOINT_URL,
            else AWS S3. One that differs from the block's endpoint is an error.
        credentials_block: The Prefect block with the S3 keys: `aws-credentials/NAME` or
            `minio-credentials/NAME` (prefect-aws; their endpoint and region count too), or
            `secret/NAME` (or just NAME): a Secret holding JSON (aws_access_key_id,
            aws_secret_access_key). None (the default): boto3's standard chain
            (environment, profiles, instance roles) on the worker.
        allowed_buckets: Buckets that masks may be read from besides the source prefix.
        workers: How many tasks are exported at the same time. 0 (the default): twice the
            worker's cores, at most 8 (each task also waits until its volumes fit in memory).
        task_runner: Where tasks run: threads of this process, a pool of local
            processes, or a Dask cluster (prefect-dask).
        dask_address: The Dask scheduler to use with task_runner dask, such as
            `tcp://10.0.0.5:8786`. None (the default): a local cluster of `workers` processes.
        batch_size: Source tasks per Prefect task run. 0 (the default): by their size,
            about 32 MB of masks and images per batch (a large CT task alone, many small
            ones together). 1: one Prefect task run per source task.
        lock_timeout: Seconds to wait while another run (of any deployment, engine or
            machine) writes to the same destination; after that the run fails with
            "destination busy since ... by ...". One writer at a time keeps tasks.json whole.
        filters: Which tasks of the source the export holds (SPEC 8): stages, the ground truth
            (stage END), task ids, updated since a time; several keep the tasks matching all.
            Tasks that no longer match leave tasks.json (and, with prune, their files go).
            without_masks: tasks.json and the report only.
    """
    try:
        refuse_placeholders(source=source, destination=destination, endpoint_url=endpoint_url)
        access = s3_access(endpoint_url, credentials_block)
        if quiet_seconds > 0:
            wait_for_uploads(source, quiet_seconds, access, return_state=True).result()
        request = ExportRequest(
            source,
            destination,
            options,
            (*variants, *custom_variants),
            incremental,
            prune,
            replace_layout,
            access,
            tuple(allowed_buckets or ()),
            lock_timeout,
            filters,
        )
        with one_writer(request, notify=tell_watchers) as lease:
            plan = read_source(request, return_state=True).result()
            workers = workers or DEFAULT_WORKERS
            runner = make_task_runner(task_runner, workers, dask_address)
            with progress.observing(ProgressArtifact(progress.current())):
                outcomes = export_all(
                    plan, prefect_batches(runner, plan.settings), workers, batch_size, get_run_logger()
                )
            lease.check()
            reports = publish(plan, outcomes, return_state=True).result()
    except ConfigurationError as error:
        # An answer, not a crash: one line in the run's log and its state, no traceback.
        get_run_logger().error("cannot export: %s", error)
        emit_event(EXPORT_FAILED, resource=destination_resource(destination), payload={"error": str(error)})
        return failed(error)
    failures = [
        {"variant": report.variant, "task": failure.taskId, "file": failure.file, "reason": failure.reason}
        for report in reports
        for failure in report.failures
    ]
    if failures:
        create_table_artifact(key="export-failures", table=failures, description=f"{len(failures)} failed")
    for report in reports:
        emit_event(
            EXPORT_COMPLETED if report.succeeded else EXPORT_FAILED,
            resource=destination_resource(report.destination),
            payload={
                "variant": report.variant,
                "destination": report.destination,
                "exported": len(report.exported),
                "skipped": len(report.skipped),
                "failed": len(report.failures),
                "report": report.destination.rstrip("/") + "/" + REPORT_NAME,
            },
        )
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
    failed_tasks = {failure.taskId for report in reports for failure in report.failures}
    if failed_tasks:
        message = (
            f"{len(failed_tasks)} of {len(plan.tasks) + len(plan.failures)} tasks failed; "
            f"see {', '.join(report.destination.rstrip('/') + '/export-report.json' for report in reports)}"
        )
        return failed(ExportIncomplete(message, reports), message)
    return reports


def tell_watchers(message: str) -> None:
    """A notice for the run's log and whoever watches it (the CLI's display)."""
    get_run_logger().warning(message)
    progress.current().notice(message)


def destination_resource(destination: str) -> dict[str, str]:
    """The Prefect event resource of an export's destination: `rbexport.destination.<url>`."""
    return {"prefect.resource.id": f"rbexport.destination.{destination}", "prefect.resource.name": destination}


class ProgressArtifact:
    """Moves the run's `export-progress` artifact in the UI as tasks finish, and tells the
    observer already installed (the CLI's progress bar) the same. At most one update a second."""

    def __init__(self, inner: progress.ProgressObserver) -> None:
        self.inner = inner
        self.artifact: UUID | None = None
        self.total = self.done = 0
        self.updated = 0.0

    def started(self, total: int, skipped: int) -> None:
        self.inner.started(total, skipped)
        self.total = total
        self.artifact = cast(
            UUID,
            create_progress_artifact(
                0.0 if total else 100.0,
                key="export-progress",
                description=f"{total} tasks to export, {skipped} unchanged",
            ),
        )

    def notice(self, message: str) -> None:
        self.inner.notice(message)

    def task_done(self, task_id: str, error: str | None) -> None:
        self.inner.task_done(task_id, error)
        self.done += 1
        now = time.monotonic()
        if self.artifact is not None and (self.done == self.total or now - self.updated >= 1.0):
            update_progress_artifact(self.artifact, 100.0 * self.done / max(self.total, 1))
            self.updated = now


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


def prefect_batches(task_runner: TaskRunner, settings: ExportSettings) -> Callable[[list[list[TaskJob]]], BatchResults]:
    """Run each batch as one Prefect task run (`export-<its tasks>`) on `task_runner`."""

    def run(batches: list[list[TaskJob]]) -> Iterator[tuple[list[TaskJob], list[TaskOutcome] | BaseException]]:
        with task_runner as runner:
            futures: dict[PrefectFuture, list[TaskJob]] = {
                runner.submit(
                    export_tasks_of_batch, {"jobs": batch, "settings": settings, "label": batch_label(batch)}
                ): batch
                for batch in batches
            }
            for future in as_completed(list(futures)):
                result = future.result(raise_on_failure=False)
                if not isinstance(result, (list, BaseException)):
                    result = RuntimeError(f"the batch's task run returned {type(result).__name__}")
                yield futures[future], result

    return run
