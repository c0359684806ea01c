"""Planning a run (`prepare_run`): the locations checked, the source's tasks read and
filtered, one job per valid task with its folder, and for every variant what its
destination already holds. Which variants each job exports is rbexport.run.decide's."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace

from ..errors import ConfigurationError
from ..export_tree import TASKS_JSON
from ..filters import TaskFilter
from ..incremental import ExportState
from ..model import ExportRequest, ExportSettings, RunPlan, Target, TargetPlan, TaskJob
from ..naming import deduplicate, task_folder_name
from ..releases import refuse_release_destination
from ..report import Failure, Notice
from ..source import SourceTask, read_tasks
from ..storage import S3Access, open_storage
from ..task_export import read_run_taxonomy
from ..variants import resolve_variants
from .decide import decide_exports
from .housekeeping import check_layout
from .locations import check_locations


def prepare_run(request: ExportRequest) -> RunPlan:
    """Check the locations, read the source, decide what each variant exports.

    ConfigurationError for anything that stops the run before a file is written.
    """
    started = time.perf_counter()
    resolved = resolve_variants(request.options, request.variants)
    variant_folders = [v.name for v in resolved] if len(resolved) > 1 else None
    source_location, destination_location = check_locations(request.source, request.destination, variant_folders)
    roots = [destination_location] if len(resolved) == 1 else [destination_location.child(v.name) for v in resolved]
    targets = tuple(
        Target(variant.name, root.url, variant.options) for variant, root in zip(resolved, roots, strict=True)
    )

    access = request.access
    source_storage = open_storage(source_location.url, access)
    source_storage.check_reachable()
    open_storage(destination_location.url, access).check_reachable()
    refuse_release_destination(destination_location, access)
    tasks, filtered = select_tasks(read_tasks(source_storage), request.filters)
    check_filters(request.filters, targets)
    check_layout(destination_location, access, variant_folders, request.replace_layout, rebuild=not request.incremental)
    settings = ExportSettings(
        source=source_location.url,
        targets=targets,
        taxonomy=read_run_taxonomy(source_storage, targets),
        access=access,
        allowed_buckets=request.allowed_buckets,
    )
    jobs, failures = plan_jobs(tasks)
    source_task_ids = {
        item.task["taskId"]
        for item in tasks
        if isinstance(item.task, dict) and isinstance(item.task.get("taskId"), str)
    }
    target_plans = [_load_target(target, access, rebuild=not request.incremental) for target in targets]
    if request.filters.without_masks:
        jobs = [replace(job, targets=()) for job in jobs]  # nothing to export: tasks.json only
    else:
        jobs = decide_exports(jobs, target_plans, settings, source_storage, source_location, request.incremental)
    if request.filters.selects and not tasks and filtered:
        for target_plan in target_plans:
            target_plan.warnings.append(
                Notice(None, None, f"the filters keep none of the source's {len(filtered)} tasks: the export is empty")
            )
    prune = request.prune
    plan = RunPlan(
        settings, jobs, failures, target_plans, source_task_ids, prune, started=started, filters=request.filters
    )
    plan.filtered = filtered
    plan.timings["read_source"] = time.perf_counter() - started
    return plan


def select_tasks(tasks: list[SourceTask], filters: TaskFilter) -> tuple[list[SourceTask], list[str]]:
    """The tasks the filters keep, in source order, and the ids of those they leave out (SPEC 8)."""
    kept, filtered = [], []
    for item in tasks:
        if filters.keeps(item.task):
            kept.append(item)
        else:
            filtered.append(str(item.task.get("taskId")) if isinstance(item.task, dict) else item.origin)
    return kept, filtered


def check_filters(filters: TaskFilter, targets: Sequence[Target]) -> None:
    """without_masks writes tasks.json and the report only: a layout or images need files."""
    if not filters.without_masks:
        return
    for target in targets:
        if target.options.dataset:
            raise ConfigurationError(
                f"without_masks writes tasks.json only, and the {target.options.layout} layout has none: "
                "choose one or the other"
            )
        if target.options.images:
            raise ConfigurationError("without_masks writes no file but tasks.json: it cannot copy images too")


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
        for (position, task_id, task, origin), folder in zip(accepted, folders, strict=True)
    ]
    return jobs, failures


def _load_target(target: Target, access: S3Access, rebuild: bool = False) -> TargetPlan:
    """What the destination already holds for this variant: its state and tasks.json
    (entries of a tasks.json that cannot be read are exported again)."""
    storage = open_storage(target.root, access)
    previous = storage.read(TASKS_JSON) if storage.exists(TASKS_JSON) else None
    try:
        entries = json.loads(previous) if previous else []
    except (ValueError, RecursionError):
        entries = []
    by_id = (
        {entry["taskId"]: entry for entry in entries if isinstance(entry, dict) and "taskId" in entry}
        if isinstance(entries, list)
        else {}
    )
    return TargetPlan(target, ExportState.load(storage, rebuild), previous, by_id)
