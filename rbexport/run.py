"""A whole export run, without Prefect: prepare, (export each task), publish.

`prepare_run` decides everything once: locations, options, the tasks to export and the
folder each gets. `publish_export` writes tasks.json (after every mask) and the report.
The fan-out in between is the caller's: threads, processes or Dask via the Prefect flow,
or a plain loop (`run_export`, used by benchmarks to measure Prefect's share).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .errors import ConfigurationError, TaskDataError, TransientStorageError
from .naming import deduplicate, task_folder_name
from .options import ExportOptions
from .report import REPORT_NAME, Failure, FileRecord, RunReport
from .source import SourceTask, read_category_numbers, read_tasks
from .storage import Location
from .task_export import SEGMENTATIONS_FOLDER, ExportSettings, TaskJob, TaskResult, export_task, storage_for

TASKS_JSON = "tasks.json"


@dataclass
class RunPlan:
    settings: ExportSettings
    jobs: list[TaskJob]
    failures: list[Failure]  # tasks refused before export (no taskId, duplicates)
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)


def prepare_run(
    source: str,
    destination: str,
    options: ExportOptions,
    endpoint_url: str | None = None,
    allowed_buckets: tuple[str, ...] = (),
) -> RunPlan:
    """Check the locations, read the source's tasks (and taxonomy), plan one job per task.

    ConfigurationError for anything that stops the run before a file is written.
    """
    started = time.perf_counter()
    source_location, destination_location = check_locations(source, destination)
    source_storage = storage_for(source_location.url, endpoint_url)
    destination_storage = storage_for(destination_location.url, endpoint_url)
    try:
        source_storage.check_reachable()
        destination_storage.check_reachable()
        tasks = read_tasks(source_storage)
        categories = read_category_numbers(source_storage) if options.semantic_mask else None
    except TransientStorageError as error:
        raise ConfigurationError(f"cannot read the source: {error}") from None
    jobs, failures = plan_jobs(tasks)
    settings = ExportSettings(
        source=source_location.url,
        export_root=destination_location.url,
        options=options,
        category_numbers=categories,
        endpoint_url=endpoint_url,
        allowed_buckets=tuple(allowed_buckets),
    )
    plan = RunPlan(settings, jobs, failures, started=started)
    plan.timings["read_source"] = time.perf_counter() - started
    return plan


def plan_jobs(tasks: list[SourceTask]) -> tuple[list[TaskJob], list[Failure]]:
    """One job per valid task, in source order, each with a unique folder name."""
    failures: list[Failure] = []
    accepted: list[tuple[int, str, dict, str]] = []
    first_seen: dict[str, str] = {}
    for position, item in enumerate(tasks):
        task = item.task
        if not isinstance(task, dict):
            failures.append(Failure(None, item.origin, "a task must be a JSON object"))
            continue
        task_id = task.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            failures.append(Failure(None, item.origin, "task has no taskId (a non-empty string is required)"))
            continue
        if task_id in first_seen:
            failures.append(Failure(task_id, item.origin, f"duplicate taskId: first seen at {first_seen[task_id]}"))
            continue
        first_seen[task_id] = item.origin
        accepted.append((position, task_id, task, item.origin))
    folders = deduplicate(task_folder_name(task) for _, _, task, _ in accepted)
    jobs = [
        TaskJob(position=position, task_id=task_id, folder=folder, task=task, origin=origin)
        for (position, task_id, task, origin), folder in zip(accepted, folders)
    ]
    return jobs, failures


def failure_of(job: TaskJob, error: BaseException) -> Failure:
    """How a failed task is reported: the file and a reason a person can act on."""
    if isinstance(error, TaskDataError):
        return Failure(job.task_id, error.file, error.reason)
    if isinstance(error, TransientStorageError):
        return Failure(job.task_id, None, f"storage kept failing after retries: {error}")
    return Failure(job.task_id, None, f"unexpected error: {type(error).__name__}: {error}")


def publish_export(plan: RunPlan, results: list[TaskResult], failures: list[Failure]) -> RunReport:
    """Write tasks.json (every mask is stored by now), then the report beside it."""
    settings = plan.settings
    destination = storage_for(settings.export_root, settings.endpoint_url)
    results = sorted(results, key=lambda result: result.position)
    report = RunReport(
        source=settings.source,
        destination=settings.export_root,
        options=settings.options.model_dump(),
        exported=[result.task_id for result in results],
        failed=[failure.taskId for failure in plan.failures + failures],
        failures=plan.failures + failures,
        warnings=[notice for result in results for notice in result.warnings],
        files=[record for result in results for record in result.files],
    )
    publish_started = time.perf_counter()
    tasks_json = (json.dumps([result.entry for result in results], indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    destination.write(TASKS_JSON, tasks_json)
    report.files.append(FileRecord.of(TASKS_JSON, tasks_json))
    plan.timings["publish"] = time.perf_counter() - publish_started
    report.timings = dict(plan.timings)
    report.seconds = time.perf_counter() - plan.started
    destination.write(REPORT_NAME, report.to_json())
    return report


def run_export(
    source: str, destination: str, options: ExportOptions, endpoint_url: str | None = None
) -> RunReport:
    """The whole run in this thread, one task after another (no Prefect)."""
    plan = prepare_run(source, destination, options, endpoint_url)
    started = time.perf_counter()
    results, failures = [], []
    for job in plan.jobs:
        try:
            results.append(export_task(job, plan.settings))
        except (TaskDataError, TransientStorageError) as error:
            failures.append(failure_of(job, error))
    plan.timings["export_tasks"] = time.perf_counter() - started
    return publish_export(plan, results, failures)


def check_locations(source_url: str, destination_url: str) -> tuple[Location, Location]:
    """Parse both locations; refuse a destination inside the source, or one whose outputs
    would cover it: the source is never written to."""
    source, destination = Location.parse(source_url), Location.parse(destination_url)
    if source.contains(destination):
        raise ConfigurationError(
            f"the destination {destination.url} lies inside the source {source.url}; the source is never written to"
        )
    for written in (SEGMENTATIONS_FOLDER, TASKS_JSON, REPORT_NAME):
        if destination.child(written).contains(source):
            raise ConfigurationError(
                f"the source {source.url} lies inside {destination.child(written).url}, which the export overwrites"
            )
    return source, destination
