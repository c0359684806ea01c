"""Exporting one task's training cases (SPEC 6): its labels and images, in a dataset layout.

The cases (which series, which id) were decided when the run was planned
(`dataset_run.plan_cases`), so that ids are unique across the run. Here each case's label
is made from its segmentation (consecutive labels, background 0) and each channel's image
is read, put on the label's grid and named after its modality. Every case of the task is
encoded before the first file is written: a task that fails writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .annotations import Annotation, ParsedTask
from .errors import TaskDataError
from .images.export import TaskImages
from .images.volume import encode_nifti
from .incremental import CaseRecord
from .layouts import LAYOUTS
from .layouts.cases import Case
from .layouts.labels import TrainingLabels, label_volume, training_labels
from .layouts.modalities import channel_modalities
from .layouts.msd import stack_channels
from .nifti import encode_fill, mask_header
from .options import ExportOptions
from .report import FileRecord, Notice
from .source import MaskReader
from .storage import Storage


def case_series(annotation: Annotation) -> list[tuple[str, bool]]:
    """Each series' name and whether it has a segmentation (a label)."""
    return [
        (name, isinstance(series.get("segmentations"), str))
        for series, name in zip(annotation.series, annotation.names, strict=True)
    ]


def export_dataset_task(
    task: ParsedTask,
    task_id: str,
    cases: Sequence[Case],
    options: ExportOptions,
    category_numbers: Mapping[str, int],
    reader: MaskReader,
    images: TaskImages,
    destination: Storage,
) -> tuple[list[FileRecord], list[CaseRecord], list[Notice]]:
    """Write the task's cases; their files, what each case holds (fold not yet given), warnings."""
    layout = LAYOUTS[options.layout]
    labels = training_labels(category_numbers)
    annotation = task.case_annotation(options)
    encoded: list[tuple[str, bytes]] = []
    records: list[CaseRecord] = []
    warnings: list[Notice] = []
    for case in cases:
        files, record, notes = _encode_case(
            case, annotation, task, options, layout, labels, category_numbers, reader, images
        )
        encoded += files
        records.append(record)
        warnings += [Notice(task_id, file, text) for file, text in notes]
    written = []
    for path, data in encoded:
        file_record = FileRecord.of(path, data)
        destination.write(path, data, file_record.sha256)
        written.append(file_record)
    return written, records, warnings


def _encode_case(
    case: Case,
    annotation: Annotation,
    task: ParsedTask,
    options: ExportOptions,
    layout,
    labels: TrainingLabels,
    category_numbers: Mapping[str, int],
    reader: MaskReader,
    images: TaskImages,
) -> tuple[list[tuple[str, bytes]], CaseRecord, list[tuple[str | None, str]]]:
    series = annotation.series[case.label_position]
    reference = series["segmentations"]
    label_name = annotation.names[case.label_position]
    try:
        label_map = reader.load(reference)
        instances = task.instances(series)
        fill, voxels, label_notes = label_volume(reader.index(reference), instances, category_numbers, labels)
    except TaskDataError as error:
        raise TaskDataError(f"case {case.case_id}: {error.reason}", error.file or reference) from None
    names = list(options.channels) if options.channels else [label_name]
    volumes = [images.volume(position, annotation.names[position], label_map) for position in case.series_positions]
    modalities, modality_notes = channel_modalities(volumes, names, options.modality)
    if layout.stacks_channels:
        volumes = [stack_channels(volumes, names)]
    header = label_map.header
    files = [(layout.label_path(case.case_id), encode_fill(fill, header, True, mask_header(header, fill.dtype)))]
    files += [
        (path, encode_nifti(volume, True))
        for path, volume in zip(layout.image_paths(case.case_id, len(modalities)), volumes, strict=True)
    ]
    record = CaseRecord(
        id=case.case_id, group="", modalities=modalities, voxels={str(value): count for value, count in voxels.items()}
    )
    notes = [(reference, f"case {case.case_id}: {text}") for text in label_notes]
    notes += [(None, f"case {case.case_id}: {text}") for text in modality_notes]
    return files, record, notes
