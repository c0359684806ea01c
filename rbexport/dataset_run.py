"""A dataset layout's run-level steps (SPEC 6): case ids before the export, folds and
dataset.json after it.

- `plan_cases` gives every task its cases, with ids unique across the dataset. A task
  keeps the ids it had (so an incremental run renames no file); a new case whose id is
  taken gets `_1`, `_2`, ... as names do, with a warning.
- `publish_dataset` runs once every image and label is stored: it gives new cases their
  folds (kept ones keep theirs), then writes dataset.json (and nnU-Net's splits) from the
  export's state, so the dataset always lists exactly the cases whose files it holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

from .dataset_export import case_series
from .errors import TaskDataError
from .export_tree import DATASET_JSON
from .incremental import CaseRecord, ExportState
from .layouts import LAYOUTS, Dataset
from .layouts.cases import Case, deduplicate_cases, group_key, task_cases
from .layouts.folds import FOLDS, assign_folds
from .layouts.labels import BACKGROUND, training_labels
from .layouts.modalities import agreed_modalities
from .options import ExportOptions
from .report import Failure, FileRecord, Notice, RunReport
from .storage import Storage


def plan_cases(
    jobs: Sequence, state: ExportState, options: ExportOptions
) -> tuple[dict[str, tuple[Case, ...]], list[Failure], list[Notice]]:
    """Each task's cases (source order), the tasks whose cases cannot be made, and a
    warning for each case renamed because another case has its id."""
    proposed: dict[str, list[Case]] = {}
    failures: list[Failure] = []
    for job in jobs:
        try:
            proposed[job.task_id] = task_cases(
                job.folder, case_series(job.parsed.case_annotation(options)), options.channels
            )
        except TaskDataError as error:
            failures.append(Failure(job.task_id, error.file, error.reason))
    # Ids of cases the dataset keeps for tasks not planned now (removed, or failing now).
    taken = {case.id for task_id, record in state.tasks.items() if task_id not in proposed for case in record.cases}
    kept: dict[str, list[Case]] = {}
    for task_id, cases in proposed.items():
        recorded = [case.id for case in state.tasks[task_id].cases] if task_id in state.tasks else []
        if _same_cases(recorded, cases) and not taken.intersection(recorded):
            kept[task_id] = [replace(case, case_id=case_id) for case, case_id in zip(cases, recorded, strict=True)]
            taken.update(recorded)
    planned: dict[str, tuple[Case, ...]] = {}
    warnings: list[Notice] = []
    for job in jobs:
        if job.task_id in kept:
            planned[job.task_id] = tuple(kept[job.task_id])
        elif job.task_id in proposed:
            cases = deduplicate_cases(proposed[job.task_id], taken)
            warnings += [
                Notice(job.task_id, None, f"case id {wanted.case_id} is another case's; this case is {case.case_id}")
                for wanted, case in zip(proposed[job.task_id], cases, strict=True)
                if wanted.case_id != case.case_id
            ]
            planned[job.task_id] = tuple(cases)
    return planned, failures, warnings


def _same_cases(recorded: list[str], cases: list[Case]) -> bool:
    """Whether recorded ids are these cases' ids, or their de-duplicated forms (`<id>_<n>`)."""
    return len(recorded) == len(cases) and all(
        case_id == case.case_id
        or (case_id.startswith(case.case_id + "_") and case_id[len(case.case_id) + 1 :].isdigit())
        for case_id, case in zip(recorded, cases, strict=True)
    )


def publish_dataset(
    destination: Storage,
    options: ExportOptions,
    state: ExportState,
    tasks: Mapping[str, dict],
    category_numbers: Mapping[str, int],
    report: RunReport,
) -> None:
    """Give every case of `state` its fold, write the layout's metadata files, and put the
    dataset's summary (cases per fold, voxels per label) in the report.

    `tasks` are the source's tasks by id, in source order: their cases come first, in that
    order, then those of tasks the dataset keeps though the source no longer has them.
    """
    layout = LAYOUTS[options.layout]
    order = [task_id for task_id in tasks if task_id in state.tasks]
    order += [task_id for task_id in state.tasks if task_id not in tasks]
    records: list[CaseRecord] = []
    for task_id in order:
        for case in state.tasks[task_id].cases:
            if task_id in tasks:  # the group may follow a field of the task (group_by)
                case.group = group_key(tasks[task_id], options.group_by)
            records.append(case)
    folds = assign_folds(
        {case.id: case.fold for case in records if case.fold is not None}, [(case.id, case.group) for case in records]
    )
    for case in records:
        case.fold = folds[case.id]

    labels = training_labels(category_numbers)
    modalities, modality_warnings = agreed_modalities({case.id: case.modalities for case in records})
    report.warnings += [Notice(None, DATASET_JSON, text) for text in modality_warnings]
    dataset = Dataset(labels, modalities, folds, options.dataset_name, options.description)
    for name, content in layout.metadata_files(dataset).items():
        data = (json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        record = FileRecord.of(name, data)
        if not destination.exists(name) or destination.read(name) != data:
            destination.write(name, data, record.sha256)
            report.files.append(record)
        state.indexes[name] = f"sha256:{record.sha256}"

    voxels = {value: 0 for value in range(labels.count + 1)}
    for case in records:
        for value, count in case.voxels.items():
            voxels[int(value)] = voxels.get(int(value), 0) + count
    names = {0: BACKGROUND, **labels.names}
    report.dataset = {
        "layout": options.layout,
        "cases": len(records),
        "channels": {str(channel): modality for channel, modality in enumerate(modalities)},
        "cases_per_fold": {str(fold): sum(1 for case in records if case.fold == fold) for fold in range(FOLDS)},
        "voxels_per_label": {names.get(value, str(value)): count for value, count in sorted(voxels.items())},
    }
