"""Exporting one task: read its masks once, then build and write every variant asked for.

Everything a worker needs travels in `ExportSettings` and `TaskJob` (rbexport.model),
plain picklable values (no clients; S3 keys only when a Secret block gave them, held as
secret values that never print), so this runs the same in a thread, a process or a
Dask worker. Each variant of a task is checked whole before its first file is written: a
variant that fails for the task's data writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .annotations import ParsedTask, assemble_task
from .dataset_export import export_dataset_task
from .errors import TaskDataError
from .export_tree import SEGMENTATIONS_FOLDER
from .images.export import TaskImages, with_image_items
from .layouts.labels import training_labels
from .mask_formats import writer_for
from .mask_formats.base import COLOURS, ROI_TYPES, SEGMENT_CODES, Encoded, MaskWriter, SeriesJob, SourceExtras
from .memory import process_budget
from .model import ExportSettings, Target, TaskFailed, TaskJob, TaskOutcome, TaskResult
from .nifti import LabelMap
from .options import ExportOptions
from .report import Failure, FileRecord, Notice
from .source import MaskReader, read_taxonomy
from .storage import Location, Storage, open_storage
from .structures import MaskFile, SeriesExport, SeriesPaths, export_series
from .taxonomy import Taxonomy, TaxonomyNeeds

# Files encoded and written at once in a process (each holds one output buffer).
FILE_THREADS = max(2, os.cpu_count() or 1)
# Image objects looked up, read or copied at once in a process (waiting on the store).
IMAGE_IO_THREADS = 16


@dataclass(frozen=True)
class _PlannedSeries:
    reference: str
    label_map: LabelMap
    export: SeriesExport
    encoded: Encoded = ()  # files already encoded (a series writer's objects)


def export_task(job: TaskJob, settings: ExportSettings) -> TaskOutcome:
    """Export one task for each variant in `job.targets`, decoding each mask once.

    Raises TaskFailed when no variant could be exported.
    """
    source = open_storage(settings.source, settings.access)
    reader = MaskReader(source, Location.parse(settings.source), settings.access, settings.allowed_buckets)
    outcome = TaskOutcome(job.task_id)
    targets = [target for target in settings.targets if target.name in job.targets]
    task = job.parsed  # parsed once for every variant (and the run's planning before)
    images = TaskImages(job.task, job.folder, reader.locate, _image_pool(), job.item_sizes)
    needed = reader.fetch(_masks_used(task, targets)) + _check_images(images, targets, outcome, job.task_id)
    needed += _series_object_memory(task, targets, reader)
    with process_budget().reserve(needed):  # waits while other tasks hold the memory
        try:
            for target in targets:
                if target.name in outcome.failures:
                    continue
                try:
                    export = _export_dataset if target.options.dataset else _export_variant
                    outcome.results[target.name] = export(job, task, target, reader, images, settings)
                except TaskDataError as error:
                    outcome.failures[target.name] = Failure(job.task_id, error.file, error.reason)
        finally:
            reader.release()
            images.release()
    if outcome.failures and not outcome.results:
        raise TaskFailed(outcome.failures)
    return outcome


def _check_images(images: TaskImages, targets: list[Target], outcome: TaskOutcome, task_id: str) -> int:
    """Find the image items of the variants that export images or whose writer reads them; the
    memory converting them holds.

    A missing or unreadable item fails those variants at once, before anything is written.
    """
    readers = [writer_for(target.options) for target in targets if writer_for(target.options).needs_dicom]
    wanting = [target for target in targets if target.options.images or writer_for(target.options).needs_dicom]
    if not wanting:
        return 0
    try:  # a writer that reads DICOM headers holds its series' items while it reads them
        needed = images.check(
            convert=any(
                target.options.images == "nifti" or writer_for(target.options).needs_dicom for target in wanting
            )
        )  # datasets too
    except TaskDataError as error:
        for target in wanting:
            outcome.failures[target.name] = Failure(task_id, error.file, error.reason)
        return 0
    if readers:
        for writer in readers:
            writer.prepare()
        images.read_dicom_headers_ahead(readers[0].needs_dicom or "", _header_pool())
    return needed


def _series_object_memory(task: ParsedTask, targets: list[Target], reader: MaskReader) -> int:
    """What encoding the task's largest series object holds (series are encoded one at a time)."""
    largest = 0
    for target in targets:
        writer = writer_for(target.options)
        if not writer.needs_dicom:
            continue
        try:
            annotations = task.annotations(target.options)
        except TaskDataError:
            continue  # the variant's export reports it
        for annotation in annotations:
            for series in annotation.series:
                voxels = reader.announced_voxels(series.get("segmentations"))
                largest = max(largest, writer.working_memory(series, voxels, target.options))
    return largest


def _masks_used(task: ParsedTask, targets: list[Target]) -> list[str]:
    """The masks the variants asked for read (with no_consensus, not every annotator's)."""
    used: list[str] = []
    for target in targets:
        try:
            annotations = (
                [task.case_annotation(target.options)] if target.options.dataset else task.annotations(target.options)
            )
        except TaskDataError:
            continue  # the variant's export reports it
        for annotation in annotations:
            for series in annotation.series:
                reference = series.get("segmentations")
                if isinstance(reference, str) and reference not in used:
                    used.append(reference)
    return used


def _export_variant(
    job: TaskJob, task: ParsedTask, target: Target, reader: MaskReader, images: TaskImages, settings: ExportSettings
) -> TaskResult:
    options = target.options
    writer = writer_for(options)
    extras = source_extras(settings)
    planned: list[_PlannedSeries] = []
    exported_annotations: list[list[dict]] = []
    warnings: list[Notice] = []
    labels: dict[int, LabelMap] = {}  # the first label map of each series position: its image's grid
    for annotation in task.annotations(options):
        exported_series = []
        for position, (series, name, stem) in enumerate(
            zip(annotation.series, annotation.names, annotation.stems, strict=True)
        ):
            reference = series.get("segmentations")
            if reference is None:
                exported_series.append(series)
                continue
            label_map = reader.load(reference)
            labels.setdefault(position, label_map)
            paths = SeriesPaths(f"{SEGMENTATIONS_FOLDER}/{job.folder}/{stem}", writer.suffix(options))
            try:
                index = reader.index(reference)
                instances = task.instances(series)  # parsed once for every variant and writer
                export = export_series(
                    series, index, paths, options, settings.taxonomy.category_numbers, instances=instances
                )
                export, encoded = writer.encode_series(
                    SeriesJob(
                        export=export,
                        series=series,
                        instances=instances,
                        index=index,
                        label_map=label_map,
                        headers=_headers_of(images, position, name, writer),
                        name=name,
                        paths=paths,
                        uid_seed=f"{target.name}:{paths.label_map}",
                        options=options,
                        extras=extras,
                    )
                )
            except TaskDataError as error:
                raise TaskDataError(error.reason, error.file or reference) from None
            planned.append(_PlannedSeries(reference, label_map, export, encoded))
            exported_series.append(export.series)
            prefix = f"{annotation.label}, " if annotation.label != "task" else ""
            warnings += [Notice(job.task_id, reference, f"{prefix}series {name}: {text}") for text in export.warnings]
        exported_annotations.append(exported_series)
    entry, task_warnings = assemble_task(job.task, options, exported_annotations)
    warnings += [Notice(job.task_id, None, text) for text in task_warnings]
    _refuse_colliding_paths(planned)
    _check_label_maps(planned, writer)
    image_plan = images.plan(options.images, options.compress, labels) if options.images else None

    destination = open_storage(target.root, settings.access)
    files = _write_files(destination, planned, options, writer)
    if image_plan is not None:
        entry = with_image_items(entry, image_plan.items)
        files += images.write(destination, image_plan)
    return TaskResult(job.position, job.task_id, entry, files, warnings)


def source_extras(settings: ExportSettings) -> SourceExtras:
    """What the run read from the source for the writers: its taxonomy (numbers, colours, codes, ROI types)."""
    return settings.taxonomy


def read_run_taxonomy(source: Storage, targets: Sequence[Target]) -> Taxonomy:
    """The source's taxonomy, read once for the run, in the parts its variants need: category
    numbers for semantic exports and dataset layouts (whose labels it must allow), and what
    each variant's mask writer needs (colours, segment codes, ROI types)."""
    dataset = next((target for target in targets if target.options.dataset), None)
    numbers_for = None
    if dataset is not None:
        numbers_for = f"the {dataset.options.layout} layout (one label per category)"
    elif any(target.options.semantic_mask for target in targets):
        numbers_for = "a semantic export"
    needs = frozenset().union(*(writer_for(target.options).needs for target in targets))
    wanted = TaxonomyNeeds(numbers_for, COLOURS in needs, SEGMENT_CODES in needs, ROI_TYPES in needs)
    # A dataset's labels are checked with the numbers: a taxonomy no dataset.json can describe is refused.
    return read_taxonomy(source, wanted, training_labels if dataset is not None else None)


def _headers_of(images: TaskImages, position: int, name: str, writer: MaskWriter):
    """The DICOM headers of a series, asked for by a series writer (read once, ahead of time)."""
    return lambda: images.dicom_headers(position, name, writer.needs_dicom or writer.name)


def _export_dataset(
    job: TaskJob, task: ParsedTask, target: Target, reader: MaskReader, images: TaskImages, settings: ExportSettings
) -> TaskResult:
    files, cases, warnings = export_dataset_task(
        task,
        job.task_id,
        job.cases.get(target.name, ()),
        target.options,
        settings.taxonomy.category_numbers or {},
        reader,
        images,
        open_storage(target.root, settings.access),
    )
    return TaskResult(job.position, job.task_id, {}, files, warnings, cases)


def _check_label_maps(planned: list[_PlannedSeries], writer: MaskWriter) -> None:
    """Refuse, before anything is written, a series its mask format cannot hold (3D to PNG)."""
    for item in planned:
        try:
            writer.check_label_map(item.label_map.header)
        except TaskDataError as error:
            raise TaskDataError(error.reason, item.reference) from None


def _write_files(
    destination: Storage, planned: list[_PlannedSeries], options: ExportOptions, writer: MaskWriter
) -> list[FileRecord]:
    """Encode, compress and store every file, several at once (the codecs release the GIL)."""
    heads: dict[tuple[int, type | np.dtype], bytes | None] = {}
    work = []
    for item in planned:
        for mask_file in item.export.files:
            key = (id(item.label_map), mask_file.fill.dtype)
            if key not in heads:
                heads[key] = writer.header_for(item.label_map.header, mask_file.fill.dtype)
            work.append((mask_file, item.label_map.header, heads[key]))
    pool = _file_pool()
    futures = [
        pool.submit(_write_file, destination, mask_file, header, head, options, writer)
        for mask_file, header, head in work
    ]
    futures += [pool.submit(_store, destination, path, data) for item in planned for path, data in item.encoded]
    return [record for future in futures for record in future.result()]


def _store(destination: Storage, path: str, data: bytes) -> list[FileRecord]:
    record = FileRecord.of(path, data)
    destination.write(path, data, record.sha256)
    return [record]


def _write_file(
    destination: Storage, mask_file: MaskFile, header, head: bytes | None, options: ExportOptions, writer: MaskWriter
) -> list[FileRecord]:
    records = []
    for path, data in writer.encode_file(mask_file, header, options, head):
        record = FileRecord.of(path, data)
        destination.write(path, data, record.sha256)
        records.append(record)
    return records


@lru_cache(maxsize=1)
def _image_pool() -> ThreadPoolExecutor:
    """The threads that look up, read and copy image objects, shared by every task of this process."""
    return ThreadPoolExecutor(max_workers=IMAGE_IO_THREADS, thread_name_prefix="rbexport-image")


@lru_cache(maxsize=1)
def _header_pool() -> ThreadPoolExecutor:
    """The threads that parse DICOM headers read ahead (Python: as many as there are cores),
    shared by every task of this process; they wait on the image threads, never the reverse."""
    return ThreadPoolExecutor(max_workers=FILE_THREADS, thread_name_prefix="rbexport-headers")


@lru_cache(maxsize=1)
def _file_pool() -> ThreadPoolExecutor:
    """The threads that encode and write files, shared by every task of this process."""
    return ThreadPoolExecutor(max_workers=FILE_THREADS, thread_name_prefix="rbexport-file")


def _refuse_colliding_paths(planned: list[_PlannedSeries]) -> None:
    seen: set[str] = set()
    for item in planned:
        for path in [mask_file.path for mask_file in item.export.files] + [path for path, _ in item.encoded]:
            if path in seen:
                raise TaskDataError(f"two series would both write {path}; rename one of them", item.reference)
            seen.add(path)
