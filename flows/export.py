"""The export flow: read the source, export every changed task, publish tasks.json and the report."""

# No `from __future__ import annotations` here: a served run gets this flow pickled by value
# (deployments/flow_processes.py), and Prefect builds the parameters' model from the function's
# annotations, which must then be the types themselves, not their names.

import concurrent.futures
import re
import time
from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Literal, cast
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
from pydantic import BeforeValidator

from rbexport import progress
from rbexport.display import shown
from rbexport.engine import (
    DEFAULT_WORKERS,
    STOPPING,
    BatchResults,
    RunInterrupted,
    batch_label,
    export_all,
    in_flight_results,
    keep_finished,
)
from rbexport.errors import ConfigurationError, ExportIncomplete, StorageError
from rbexport.filters import TaskFilter
from rbexport.lease import WAIT_SECONDS
from rbexport.model import ExportRequest, ExportSettings, TaskJob, TaskOutcome
from rbexport.options import ExportOptions
from rbexport.report import RunReport
from rbexport.tasks.credentials import s3_access
from rbexport.tasks.export import export_tasks_of_batch, failed, publish, read_source, wait_for_uploads
from rbexport.tasks.one_writer import one_writer
from rbexport.variants import Preset, Variant

# Emitted once per variant when a run ends, about its destination (`destination_resource`).
EXPORT_COMPLETED = "rbexport.export.completed"
EXPORT_FAILED = "rbexport.export.failed"

# Optional parameters with plain defaults: the form shows an empty field, not Prefect's
# `Property is type "None"` switch; None from a caller means the same as empty.
OptionalText = Annotated[str, BeforeValidator(lambda value: "" if value is None else value)]
OptionalNames = Annotated[tuple[str, ...], BeforeValidator(lambda value: () if value is None else value)]

# The form's default: every option at its default (ExportOptions is frozen).
DEFAULT_OPTIONS = ExportOptions()
DEFAULT_FILTERS = TaskFilter()  # every task of the source


def run_name() -> str:
    """The flow run's name, saying what runs: `export-brain-20261202-0100`, with the
    variants when there are any (`export-live-standard-semantic-20261202-0200`); the
    destination's last folder and the run's scheduled start (UTC)."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    where = str(parameters.get("destination") or "").rstrip("/").rsplit("/", 1)[-1] or "export"
    items = [*(parameters.get("variants") or ()), *(parameters.get("custom_variants") or ())]
    names = [str(item.get("name", "") if isinstance(item, dict) else getattr(item, "name", item)) for item in items]
    when = flow_run.scheduled_start_time.astimezone(UTC).strftime("%Y%m%d-%H%M")
    return artifact_key("-".join(["export", where, *names, when]))[:100]


def tag_run(destination: str) -> None:
    """Tag the flow run with its destination (`destination:s3://...`), to filter runs by it."""
    from prefect import get_client
    from prefect.runtime import flow_run
    from prefect.utilities.asyncutils import run_coro_as_sync

    tag = f"destination:{destination}"
    if not flow_run.id or tag in flow_run.tags:
        return

    async def update() -> None:
        async with get_client() as client:
            await client.update_flow_run(flow_run.id, tags=[*flow_run.tags, tag])

    try:
        run_coro_as_sync(update())
    except Exception as error:  # a name tag is a convenience: never fail the export for it
        get_run_logger().warning("could not tag the run with its destination: %s", error)


@flow(name="export-project", flow_run_name=run_name, validate_parameters=True)
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
    endpoint_url: OptionalText = "",
    credentials_block: OptionalText = "",
    allowed_buckets: OptionalNames = (),
    workers: int = 0,
    task_runner: Literal["threads", "processes", "dask"] = "threads",
    dask_address: OptionalText = "",
    batch_size: int = 0,
    lock_timeout: float = WAIT_SECONDS,
    filters: TaskFilter = DEFAULT_FILTERS,
) -> list[RunReport]:
    """Export a RedBrick-format project into the RedBrick export structure.

    Args:
        source: Where the project is: s3://bucket/prefix, or a folder on the worker.
        destination: Where the export goes: s3://bucket/prefix, or a folder on the worker.
        options: The export to write when no variants are chosen. With variants, its file
            options still apply to every preset: no_consensus, compress, mask_format and the
            image options (with_images, image_format); the structure comes from the variant.
            The layout options (layout and the fields after it) make a training dataset
            instead of the RedBrick structure.
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
        endpoint_url: The S3 endpoint, such as `http://127.0.0.1:8333`. Empty (the
            default): the credentials block's endpoint, else the worker's AWS_ENDPOINT_URL,
            else AWS S3. One that differs from the block's endpoint is an error.
        credentials_block: The Prefect block with the S3 keys: `aws-credentials/NAME` or
            `minio-credentials/NAME` (prefect-aws; their endpoint and region count too), or
            `secret/NAME` (or just NAME): a Secret holding JSON (aws_access_key_id,
            aws_secret_access_key). Empty (the default): boto3's standard chain
            (environment, profiles, instance roles) on the worker.
        allowed_buckets: Buckets that masks may be read from besides the source prefix.
        workers: How many tasks are exported at the same time. 0 (the default): twice the
            worker's cores, at most 8 (each task also waits until its volumes fit in memory).
        task_runner: Where tasks run: threads of this process, a pool of local
            processes, or a Dask cluster (prefect-dask).
        dask_address: The Dask scheduler to use with task_runner dask, such as
            `tcp://10.0.0.5:8786`. Empty (the default): a local cluster of `workers` processes.
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
    tag_run(destination)
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
            filters=filters,
        )
        with one_writer(request, notify=tell_watchers) as lease:
            read = read_source.submit(request)  # a future: wait_for below need not walk its result
            plan = read.result()
            workers = workers or DEFAULT_WORKERS
            runner = make_task_runner(task_runner, workers, dask_address)
            batch_runs: list[PrefectFuture] = []
            finished: list[TaskOutcome] = []
            with progress.observing(ProgressArtifact(progress.current())):
                try:
                    outcomes = export_all(
                        plan,
                        prefect_batches(runner, plan.settings, batch_runs),
                        workers,
                        batch_size,
                        get_run_logger(),
                        finished,
                    )
                except KeyboardInterrupt:
                    # Ctrl-C, SIGTERM: keep what finished for the next run, publish nothing.
                    raise RunInterrupted(keep_finished(plan, finished, lease)) from None
            lease.check()
            # quote: Prefect would walk every task of the plan and outcome twice to find futures
            # in them (1-2 s for 1,000 tasks); wait_for keeps the run graph's edges instead.
            reports = publish(
                quote(plan),
                quote(outcomes),
                wait_for=[read, *map(allow_failure, batch_runs)],
                return_state=True,
            ).result()
    except (ConfigurationError, StorageError) as error:
        # An answer, not a crash (a store still failing after the retries is one too): one
        # line in the run's log and its state, no traceback.
        get_run_logger().error("cannot export: %s", shown(error))
        emit_event(EXPORT_FAILED, resource=destination_resource(destination), payload={"error": str(error)})
        return failed(error)
    failures = failure_rows(reports)
    if failures:
        create_table_artifact(
            key="export-failures",
            table=failures,
            description=f"{len(failures)} {'task' if len(failures) == 1 else 'tasks'} failed",
        )
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
                "report": report.url,
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
            f"see {shown(', '.join(report.url for report in reports))}"
        )
        return failed(ExportIncomplete(message, reports), message)
    return reports


def failure_rows(reports: list[RunReport]) -> list[dict[str, str]]:
    """The failures artifact: one row per failed source task, the variants it failed in,
    and each distinct reason in full."""
    rows: dict[str, dict[str, list[str]]] = {}
    for report in reports:
        for failure in report.failures:
            task = shown(failure.taskId) if failure.taskId is not None else "(no taskId)"
            row = rows.setdefault(task, {"variants": [], "reasons": []})
            row["variants"].append(shown(report.variant))
            if shown(failure.detail) not in row["reasons"]:
                row["reasons"].append(shown(failure.detail))
    return [
        {"task": task, "variants": ", ".join(row["variants"]), "reason": "; ".join(row["reasons"])}
        for task, row in rows.items()
    ]


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
        self.total = self.done = self.failed = self.skipped = 0
        self.updated = 0.0

    def started(self, total: int, skipped: int) -> None:
        self.inner.started(total, skipped)
        self.total, self.skipped = total, skipped
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
        self.failed += error is not None
        now = time.monotonic()
        if self.artifact is not None and (self.done == self.total or now - self.updated >= 1.0):
            update_progress_artifact(self.artifact, 100.0 * self.done / max(self.total, 1), self.description())
            self.updated = now

    def description(self) -> str:
        """`120 of 240 tasks done, 2 failed, 0 unchanged`, as the run goes."""
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done} of {self.total} tasks done{failed}, {self.skipped} unchanged"


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

    def run(batches: list[list[TaskJob]]) -> BatchResults:
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
            waiting = set(futures)
            try:
                for future in as_completed(list(futures)):
                    waiting.discard(future)
                    yield futures[future], batch_result(future)
            except (KeyboardInterrupt, SystemExit):
                # Interrupted: batches on this process's threads stop before their next task;
                # those not started never start; what the ones in flight finished comes back.
                STOPPING.set()
                in_flight = [future for future in waiting if not _cancelled(future)]
                yield from in_flight_results(
                    in_flight, lambda future: (futures[future], batch_result(future)), as_completed
                )
                raise

    return run


def batch_result(future: PrefectFuture) -> list[TaskOutcome] | BaseException:
    result = future.result(raise_on_failure=False)
    if not isinstance(result, (list, BaseException)):
        result = RuntimeError(f"the batch's task run returned {type(result).__name__}")
    return result


def _cancelled(future: PrefectFuture) -> bool:
    """Cancel a batch's task run that has not started (threads, processes): True when it
    never will. One on Dask is left to end (it stops at once when STOPPING is its process's)."""
    wrapped = getattr(future, "wrapped_future", None)
    return isinstance(wrapped, concurrent.futures.Future) and wrapped.cancel()
