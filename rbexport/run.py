"""A whole export run, without Prefect: prepare, (export each task), publish.

`prepare_run` decides everything once: locations, variants, the tasks to export for each
variant (the unchanged ones are skipped) and the folder each task gets. `publish_export`
writes, for every variant, tasks.json (after every mask), the state and the report. The
fan-out in between is rbexport.engine's, under the Prefect flow or the local engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from .annotations import mask_references
from .dataset_run import plan_cases, publish_dataset
from .display import shown
from .errors import ConfigurationError, TaskDataError
from .filters import TaskFilter, without_masks_entry
from .images.export import image_references
from .incremental import (
    EXPORT_FOLDERS,
    STATE_KEY,
    TASKS_JSON,
    ExportState,
    TaskRecord,
    entry_text,
    export_roots,
    is_unchanged,
    task_fingerprint,
)
from .lease import DestinationLease
from .mask_formats import INDEX_FILES, writer_for
from .model import (
    ExportRequest,
    ExportSettings,
    RunPlan,
    Target,
    TargetPlan,
    TaskJob,
    TaskOutcome,
    TaskResult,
)
from .naming import deduplicate, task_folder_name
from .options import ExportOptions
from .releases import refuse_release_destination
from .report import REPORT_NAME, Failure, FileRecord, Notice, RunReport
from .source import (
    MaskReader,
    SourceTask,
    read_tasks,
)
from .storage import Location, S3Access, Storage, open_storage
from .task_export import read_run_taxonomy, source_extras
from .variants import resolve_variants

# Files at an export root besides tasks.json: the report, a mask format's index files (PNG's
# class map), a dataset's index files.
ROOT_FILES = (TASKS_JSON, REPORT_NAME, *INDEX_FILES, "dataset.json", "splits_final.json")


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
        jobs = _decide_exports(jobs, target_plans, settings, source_storage, source_location, request.incremental)
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


def destination_lease(
    request: ExportRequest, owner: str | None = None, notify: Callable[[str], None] | None = None
) -> DestinationLease:
    """The lease that makes this run the destination's one writer (rbexport.lease); the
    destination is checked first, so a bad one fails here with its own message."""
    resolved = resolve_variants(request.options, request.variants)
    variant_folders = [variant.name for variant in resolved] if len(resolved) > 1 else None
    _, destination = check_locations(request.source, request.destination, variant_folders)
    storage = open_storage(destination.url, request.access)
    storage.check_reachable()
    refuse_release_destination(destination, request.access)  # before the lease writes there
    return DestinationLease(storage, owner, notify)


def _reads_images(options: ExportOptions) -> bool:
    """Whether a variant's files depend on the image items (exported, or referenced by a DICOM SEG)."""
    return bool(options.images) or writer_for(options).needs_dicom is not None


def check_layout(
    destination: Location, access: S3Access, variant_folders: list[str] | None, replace: bool, rebuild: bool = False
) -> None:
    """One destination holds one layout: one export at its root, or variant folders.

    A run of the other layout stops here (ConfigurationError) unless `replace` is given;
    then the export already there is deleted first: the files its state records, its
    tasks.json, report and state.
    """
    storage = open_storage(destination.url, access)
    roots = export_roots(info.key for info in storage.list())
    at_root, folders = "" in roots, [root for root in roots if root]
    if variant_folders is None and folders:
        found, wanted, old_roots = f"variant folders ({', '.join(folders)})", "one export at its root", folders
    elif variant_folders is not None and at_root:
        found, wanted, old_roots = "one export at its root", f"variant folders ({', '.join(variant_folders)})", [""]
    else:
        return
    if not replace:
        raise ConfigurationError(
            f"{destination.url} already holds {found} and this run writes {wanted}: choose another "
            "destination, or replace that export (--replace-layout, flow parameter replace_layout)"
        )
    for root in old_roots:
        _delete_export(open_storage(destination.child(root).url if root else destination.url, access), rebuild)


def _delete_export(storage: Storage, rebuild: bool) -> None:
    state = ExportState.load(storage, rebuild)
    for record in state.tasks.values():
        for path in sorted({*record.files, *record.orphans}):
            storage.delete(path)
    for path in (TASKS_JSON, REPORT_NAME, STATE_KEY):
        storage.delete(path)


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


def _decide_exports(
    jobs: list[TaskJob],
    target_plans: list[TargetPlan],
    settings: ExportSettings,
    source: Storage,
    source_location: Location,
    incremental: bool,
) -> list[TaskJob]:
    """Fingerprint every task for every variant; keep for export what changed."""
    reader = MaskReader(source, source_location, settings.access, settings.allowed_buckets)
    listing = list(source.list())
    source_versions = {info.key: info.etag for info in listing}
    source_sizes = {info.key: info.size for info in listing}
    present = (
        {
            plan.target.name: {info.key: info.size for info in open_storage(plan.target.root, settings.access).list()}
            for plan in target_plans
        }
        if incremental
        else {}
    )
    cases = {
        plan.target.name: plan_cases(jobs, plan.state, plan.target.options)
        for plan in target_plans
        if plan.target.options.dataset
    }
    for plan in target_plans:
        if plan.target.name in cases:
            plan.failures += cases[plan.target.name][1]
            plan.warnings += cases[plan.target.name][2]
    decided = []
    wants_images = any(_reads_images(plan.target.options) for plan in target_plans)
    image_versions: dict[str, str | None] = {}
    for job in jobs:
        masks = mask_references(job.task)
        versions = {reference: reader.version(reference, source_versions) for reference in masks}
        weight = sum(known_sizes(reader, masks, source_sizes).values())
        item_sizes: dict[str, int] = {}
        if wants_images:
            references = image_references(job.task)
            image_versions = {reference: reader.version(reference, source_versions) for reference in references}
            item_sizes = known_sizes(reader, references, source_sizes)
        targets = []
        job_cases = {}
        for plan in target_plans:
            name = plan.target.name
            listed = job.task_id in plan.previous_entries or job.task_id in plan.state.unpublished
            case_ids: list[str] = []
            if name in cases:
                if job.task_id not in cases[name][0]:
                    continue  # its cases cannot be made: failed when planned
                job_cases[name] = cases[name][0][job.task_id]
                case_ids = [case.case_id for case in job_cases[name]]
                listed = True  # dataset.json is made from the state
            inputs = {**versions, **image_versions} if _reads_images(plan.target.options) else versions
            fingerprint = task_fingerprint(
                job.task,
                job.folder,
                inputs,
                plan.target.options,
                case_ids,
                _written_with(plan.target.options, settings),
            )
            plan.fingerprints[job.task_id] = fingerprint
            record = plan.state.tasks.get(job.task_id)
            if incremental and is_unchanged(record, fingerprint, present[name], listed):
                plan.skipped.add(job.task_id)
            else:
                targets.append(name)
        weight += sum(item_sizes.values())
        decided.append(replace(job, targets=tuple(targets), item_sizes=item_sizes, cases=job_cases, weight=weight))
    return decided


def _written_with(options: ExportOptions, settings: ExportSettings) -> dict | None:
    """What else a variant's files are made from (a DICOM SEG holds the taxonomy's colours
    and segment_codes.json): a change to it exports its tasks again."""
    return writer_for(options).written_with(source_extras(settings))


def known_sizes(reader: MaskReader, references: list[str], source_sizes: dict[str, int]) -> dict[str, int]:
    """The sizes the source's listing gives of these items: the worker need not ask for them."""
    sizes = {}
    for reference in references:
        try:
            storage, key = reader.locate(reference)
        except TaskDataError:
            continue
        if storage is reader.source and key in source_sizes:
            sizes[reference] = source_sizes[key]
    return sizes


def publish_export(plan: RunPlan, outcomes: list[TaskOutcome]) -> list[RunReport]:
    """For every variant: tasks.json (every mask is stored by now), the state, the report."""
    return [_publish_target(plan, target_plan, outcomes) for target_plan in plan.targets]


def _publish_target(plan: RunPlan, target_plan: TargetPlan, outcomes: list[TaskOutcome]) -> RunReport:
    started = time.perf_counter()
    target = target_plan.target
    destination = open_storage(target.root, plan.settings.access)
    results = {o.task_id: o.results[target.name] for o in outcomes if target.name in o.results}
    failures = (
        plan.failures + target_plan.failures + [o.failures[target.name] for o in outcomes if target.name in o.failures]
    )
    report = RunReport(
        source=plan.settings.source,
        destination=target.root,
        options=target.options.model_dump(),
        variant=target.name,
        exported=[job.task_id for job in plan.tasks if job.task_id in results or plan.filters.without_masks],
        filtered=list(plan.filtered),
        filters=plan.filters.describe(),
        skipped=[job.task_id for job in plan.tasks if job.task_id in target_plan.skipped],
        failed=[failure.taskId for failure in failures],
        failures=failures,
        warnings=target_plan.warnings
        + [notice for job in plan.tasks if job.task_id in results for notice in results[job.task_id].warnings],
        files=[record for job in plan.tasks if job.task_id in results for record in results[job.task_id].files],
    )
    indexes = {} if target.options.dataset else _publish_tasks_json(destination, plan, target_plan, results, report)

    state = _next_state(target_plan, results, failures, plan.source_task_ids)
    if plan.filters.without_masks:
        for record in state.tasks.values():
            record.fingerprint = None  # tasks.json has no masks of them now: export them again next time
    state.images = bool(target.options.images) and not target.options.dataset
    state.indexes.update(indexes)
    if target.options.dataset:
        # Files a re-exported task no longer writes would be cases dataset.json does not list:
        # prune them at once (every task of the state kept).
        report.pruned = _prune(destination, state, set(state.tasks))
    if plan.prune:
        report.pruned += _prune(destination, state, plan.source_task_ids)
    if target.options.dataset:
        tasks = {job.task_id: job.task for job in plan.tasks}
        publish_dataset(destination, target.options, state, tasks, plan.settings.category_numbers or {}, report)
    state_json = state.to_json()
    if state_json != target_plan.state.to_json():
        destination.write(STATE_KEY, state_json)
        report.files.append(FileRecord.of(STATE_KEY, state_json))

    report.timings = {**plan.timings, "publish": time.perf_counter() - started}
    report.seconds = time.perf_counter() - plan.started
    destination.write(REPORT_NAME, report.to_json())
    return report


def _publish_tasks_json(
    destination: Storage, plan: RunPlan, target_plan: TargetPlan, results: dict[str, TaskResult], report: RunReport
) -> dict[str, str]:
    """tasks.json: the entry of every task exported now or skipped as unchanged, in source
    order (and before it, the index files of its mask format, such as PNG's class_map.json).
    Returns their checksums (`sha256:<hex>`), for the state."""
    if plan.filters.without_masks:
        entries = [without_masks_entry(job.task) for job in plan.tasks]
    else:
        entries = [
            results[job.task_id].entry if job.task_id in results else _unchanged_entry(target_plan, job.task_id)
            for job in plan.tasks
            if job.task_id in results or job.task_id in target_plan.skipped
        ]
    options = target_plan.target.options
    indexes: dict[str, str] = {}
    # What the values mean, before tasks.json points at the files.
    for path, data in writer_for(options).index_files(entries, options, source_extras(plan.settings)):
        index_record = FileRecord.of(path, data)
        destination.write(path, data, index_record.sha256)
        report.files.append(index_record)
        indexes[path] = f"sha256:{index_record.sha256}"
    # A lone surrogate from the source (not Unicode) stays the JSON escape it was read from.
    tasks_json = (json.dumps(entries, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
    record = FileRecord.of(TASKS_JSON, tasks_json)
    if tasks_json != target_plan.previous_tasks_json:
        destination.write(TASKS_JSON, tasks_json, record.sha256)
        report.files.append(record)
    indexes[TASKS_JSON] = f"sha256:{record.sha256}"
    return indexes


def _unchanged_entry(target_plan: TargetPlan, task_id: str) -> dict:
    """A skipped task's tasks.json entry: the one an interrupted run recorded (newer), else
    the published tasks.json's."""
    unpublished = target_plan.state.unpublished
    return unpublished[task_id] if task_id in unpublished else target_plan.previous_entries[task_id]


def record_finished(plan: RunPlan, outcomes: Sequence[TaskOutcome]) -> int:
    """After an interruption: write each variant's state with the tasks that finished (each
    outcome is a task whose files are all stored) merged into the state it had. Nothing is
    published or deleted: tasks.json, the report and a dataset's index files stay as they
    were; the state is one write (a whole object, or a file renamed into place), so it is
    the old one or the new one. Returns how many source tasks were kept (finished for at
    least one variant); the next run skips them as unchanged."""
    if plan.filters.without_masks:
        return 0  # such a run writes no task files: nothing to keep
    kept: set[str] = set()
    for target_plan in plan.targets:
        name = target_plan.target.name
        results = {o.task_id: o.results[name] for o in outcomes if name in o.results}
        failures = [o.failures[name] for o in outcomes if name in o.failures]
        state = _next_state(target_plan, results, failures, plan.source_task_ids)
        state.images = target_plan.state.images  # of the tasks.json still published
        if not target_plan.target.options.dataset:  # a dataset's index is made from the state
            state.unpublished = _unpublished_entries(target_plan, results, state)
        state_json = state.to_json()
        if state_json != target_plan.state.to_json():
            open_storage(target_plan.target.root, plan.settings.access).write(STATE_KEY, state_json)
        kept.update(results)
    return len(kept)


def _unpublished_entries(target_plan: TargetPlan, results: dict[str, TaskResult], state: ExportState) -> dict:
    """The tasks.json entries the published tasks.json lacks or holds otherwise (compared as
    they are written), of the tasks finished now and of those an earlier interrupted run
    finished and this one did not export again."""
    previous = target_plan.previous_entries
    entries = {
        task_id: entry
        for task_id, entry in target_plan.state.unpublished.items()
        if task_id not in results and task_id in state.tasks and state.tasks[task_id].fingerprint is not None
    }
    for task_id, result in results.items():
        if task_id not in previous or entry_text(previous[task_id]) != entry_text(result.entry):
            entries[task_id] = result.entry
    return entries


def _next_state(
    target_plan: TargetPlan, results: dict[str, TaskResult], failures: list[Failure], source_task_ids: set[str]
) -> ExportState:
    tasks = {
        task_id: TaskRecord(
            r.fingerprint, dict(r.files), list(r.orphans), [replace(case) for case in r.cases], dict(r.checksums)
        )
        for task_id, r in target_plan.state.tasks.items()
    }
    for task_id, result in results.items():
        written = {record.path: record.bytes for record in result.files}
        checksums = {record.path: record.checksum for record in result.files if record.checksum}
        previous = tasks.get(task_id, TaskRecord(None))
        orphans = sorted((set(previous.files) | set(previous.orphans)) - set(written))
        folds = {case.id: case.fold for case in previous.cases}  # a case keeps its fold
        cases = [replace(case, fold=folds.get(case.id)) for case in result.cases]
        tasks[task_id] = TaskRecord(target_plan.fingerprints[task_id], written, orphans, cases, checksums)
    for failure in failures:
        if failure.taskId in tasks and failure.taskId not in results:
            tasks[failure.taskId].fingerprint = None  # try again next time; its old files stay
    return ExportState(tasks, dict(target_plan.state.indexes))


def _prune(destination: Storage, state: ExportState, source_task_ids: set[str]) -> list[str]:
    """Delete files no longer part of the export: removed tasks' and orphans. Returns them."""
    deleted = []
    owned = {path for task_id, record in state.tasks.items() if task_id in source_task_ids for path in record.files}
    for task_id in list(state.tasks):
        record = state.tasks[task_id]
        gone = task_id not in source_task_ids
        for path in sorted(record.orphans + (list(record.files) if gone else [])):
            if path not in owned:
                destination.delete(path)
                deleted.append(path)
        if gone:
            del state.tasks[task_id]
        else:
            record.orphans = []
    return deleted


def check_locations(
    source_url: str, destination_url: str, variant_folders: Sequence[str] | None = None
) -> tuple[Location, Location]:
    """Parse both locations; refuse a destination inside the source, or a source anywhere
    in the export tree (a variant folder, segmentations/, images/, a dataset's folders,
    the state, the files at an export root): the source is never written to, nor deleted."""
    source, destination = Location.parse(source_url), Location.parse(destination_url)
    if source.contains(destination):
        raise ConfigurationError(
            f"the destination {shown(destination.url)} lies inside the source {shown(source.url)}; "
            "the source is never written to"
        )
    roots = [destination.child(name) for name in variant_folders] if variant_folders else [destination]
    if destination.child(".rbexport").contains(source):  # the lease, and a single export's state
        raise ConfigurationError(
            f"the source {shown(source.url)} lies inside {shown(destination.child('.rbexport').url)}, "
            "which holds the export's own files"
        )
    for root in roots:
        if root != destination and root.contains(source):
            raise ConfigurationError(
                f"the source {shown(source.url)} lies inside {shown(root.url)}, which this run exports to"
            )
        for written in (*EXPORT_FOLDERS, ".rbexport", *ROOT_FILES):
            if root.child(written).contains(source):
                raise ConfigurationError(
                    f"the source {shown(source.url)} lies inside {shown(root.child(written).url)}, "
                    "which the export overwrites"
                )
    return source, destination
