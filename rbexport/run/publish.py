"""Publishing a run (`publish_export`): for every variant, tasks.json (once every mask is
stored), a mask format's or a dataset's index files, the state and the report. After an
interruption nothing is published: only the state records the tasks that finished
(`record_finished`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace

from ..dataset_run import publish_dataset
from ..export_tree import REPORT_JSON, STATE_KEY, TASKS_JSON
from ..filters import without_masks_entry
from ..incremental import ExportState, TaskRecord, entry_text
from ..mask_formats import writer_for
from ..model import RunPlan, TargetPlan, TaskOutcome, TaskResult
from ..report import Failure, FileRecord, RunReport
from ..storage import Storage, open_storage
from ..task_export import source_extras
from .housekeeping import prune


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
        report.pruned = prune(destination, state, set(state.tasks))
    if plan.prune:
        report.pruned += prune(destination, state, plan.source_task_ids)
    if target.options.dataset:
        tasks = {job.task_id: job.task for job in plan.tasks}
        publish_dataset(destination, target.options, state, tasks, plan.settings.category_numbers or {}, report)
    state_json = state.to_json()
    if state_json != target_plan.state.to_json():
        destination.write(STATE_KEY, state_json)
        report.files.append(FileRecord.of(STATE_KEY, state_json))

    report.timings = {**plan.timings, "publish": time.perf_counter() - started}
    report.seconds = time.perf_counter() - plan.started
    destination.write(REPORT_JSON, report.to_json())
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
