"""What each job exports (`decide_exports`): every task fingerprinted for every variant
(its JSON, its folder, the versions of the objects it reads, the options and what else
its files are made from); a variant skips a task whose fingerprint and files are
unchanged (rbexport.incremental). Also the sizes of a task's objects that the source's
listing gives (`known_sizes`): its weight, by which the engine makes batches."""

from __future__ import annotations

from dataclasses import replace

from ..dataset_run import plan_cases
from ..errors import TaskDataError
from ..images.export import image_references
from ..incremental import is_unchanged, task_fingerprint
from ..mask_formats import writer_for
from ..model import ExportSettings, TargetPlan, TaskJob
from ..options import ExportOptions
from ..source import MaskReader
from ..storage import Location, Storage, open_storage
from ..task_export import source_extras


def decide_exports(
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
        masks = job.parsed.mask_references()
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


def _reads_images(options: ExportOptions) -> bool:
    """Whether a variant's files depend on the image items (exported, or referenced by a DICOM SEG)."""
    return bool(options.images) or writer_for(options).needs_dicom is not None


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
