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
from prefect.utilities.annotations import allow_failure, quote

from rbexport import progress
from rbexport.display import shown
from rbexport.engine import DEFAULT_WORKERS, BatchResults, batch_label, export_all
from rbexport.errors import ConfigurationError, ExportIncomplete
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
    """
    try:
        refuse_placeholders(source=source, destination=destination, endpoint_url=endpoint_url)
        access = s3_access(endpoint_url, credentials_block)
        if quiet_seconds > 0:
            wait_for_uploads(source, quiet_seconds, access, return_state=True).result()
        request = ExportRequest(
            source=source,
            destination=destination,
            options=options,
            variants=(*variants, *custom_variants),
            incremental=incremental,
            prune=prune,
            replace_layout=replace_layout,
            access=access,
            allowed_buckets=tuple(allowed_buckets or ()),
            lock_timeout=lock_timeout,
        )
        with one_writer(request, notify=tell_watchers) as lease:
            read = read_source.submit(request)  # a future: wait_for below need not walk its result
            plan = read.result()
            workers = workers or DEFAULT_WORKERS
            runner = make_task_runner(task_runner, workers, dask_address)
            batch_runs: list[PrefectFuture] = []
            with progress.observing(ProgressArtifact(progress.current())):
                outcomes = export_all(
                    plan, prefect_batches(runner, plan.settings, batch_runs), workers, batch_size, get_run_logger()
                )
            lease.check()
            # quote: Prefect would walk every task of the plan and outcome twice to find futures
            # in them (1-2 s for 1,000 tasks); wait_for keeps the run graph's edges instead.
            reports = publish(
                quote(plan),
                quote(outcomes),
                wait_for=[read, *map(allow_failure, batch_runs)],
                return_state=True,
            ).result()
    except ConfigurationError as error:
        # An answer, not a crash: one line in the run's log and its state, no traceback.
        get_run_logger().error("cannot export: %s", shown(error))
        emit_event(EXPORT_FAILED, resource=destination_resource(destination), payload={"error": str(error)})
        return failed(error)
    failures = [
        {
            "variant": shown(report.variant),
            "task": None if failure.taskId is None else shown(failure.taskId),
            "file": None if failure.file is None else shown(failure.file),
            "reason": shown(failure.reason),
        }
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
        description=shown("; ".join(f"{report.variant}: {report.summary()}" for report in reports)),
    )
    for report in reports:
        if report.dataset:
            create_table_artifact(
                key=artifact_key(f"dataset-{report.variant}"),
                table=report.dataset_rows(),
                description=f"{report.variant}: {report.dataset['cases']} cases; per fold "
                + ", ".join(f"{fold}: {count}" for fold, count in report.dataset["cases_per_fold"].items()),
            )
        get_run_logger().info("%s: %s", shown(report.variant), report.summary())
    failed_tasks = {failure.taskId for report in reports for failure in report.failures}
    if failed_tasks:
        message = (
            f"{len(failed_tasks)} of {len(plan.tasks) + len(plan.failures)} tasks failed; "
            f"see {shown(', '.join(report.destination.rstrip('/') + '/export-report.json' for report in reports))}"
        )
        return failed(ExportIncomplete(message, reports), message)
    return reports


def tell_watchers(message: str) -> None:
    """A notice for the run's log and whoever watches it (the CLI's display)."""
    get_run_logger().warning("%s", shown(message))
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


def prefect_batches(
    task_runner: TaskRunner, settings: ExportSettings, submitted: list[PrefectFuture] | None = None
) -> Callable[[list[list[TaskJob]]], BatchResults]:
    """Run each batch as one Prefect task run (`export-<its tasks>`) on `task_runner`; the
    futures are added to `submitted`. The jobs are quoted on threads and processes (Prefect
    need not walk every source task's JSON for futures); `settings`, read-source's result,
    keeps the graph's edge."""

    # Not on Dask: its client takes Prefect's annotations (tuples) apart on the way to a worker.
    local = isinstance(task_runner, ThreadPoolTaskRunner | ProcessPoolTaskRunner)

    def run(batches: list[list[TaskJob]]) -> Iterator[tuple[list[TaskJob], list[TaskOutcome] | BaseException]]:
        with task_runner as runner:
            futures: dict[PrefectFuture, list[TaskJob]] = {
                runner.submit(
                    export_tasks_of_batch,
                    {"jobs": quote(batch) if local else batch, "settings": settings, "label": batch_label(batch)},
                ): batch
                for batch in batches
            }
            if submitted is not None:
                submitted.extend(futures)
            for future in as_completed(list(futures)):
                result = future.result(raise_on_failure=False)
                if not isinstance(result, (list, BaseException)):
                    result = RuntimeError(f"the batch's task run returned {type(result).__name__}")
                yield futures[future], result

    return run
