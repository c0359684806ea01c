"""Which sets of series a task exports, and the task entry they make (SPEC 2.4).

A plain task has one annotation: its own `series`. A consensus task has one per annotator
(`consensusTasks[i]`, files suffixed `_<i+1>`) and its `superTruth` (plain names). With
`no_consensus` it is exported as a plain task from its super truth, else its first
annotator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .errors import TaskDataError
from .naming import deduplicate, series_names
from .options import ExportOptions
from .segment_map import Instance, parse_segment_map

CONSENSUS_FIELDS = ("consensus", "consensusTasks", "consensusScore", "superTruth")
_MASK_FIELDS = ("segmentations", "segmentMap")


@dataclass(frozen=True)
class Annotation:
    """One set of series to export, with the file names its series get."""

    label: str  # for messages: "task", "annotator 2", "super truth"
    series: list[dict]
    names: list[str]  # safe, unique, one per series
    suffix: str  # "" or "_<i>", after the series name
    stems: tuple[str, ...] = ()  # file name of each series (name + suffix), unique in the task


class ParsedTask:
    """One task's JSON parsed once, for every phase of the run (fingerprints, a dataset's
    cases, the export) and every variant and writer of the task: its annotations (as each
    `no_consensus` reads them), its mask references and each series' segment map, each built
    on first use and kept, a failure too (every variant asking gets the same reason). It
    travels with the task's job (model.TaskJob.parsed). `task` stays as read, series too:
    what passes through into tasks.json untouched is taken from them."""

    def __init__(self, task: dict) -> None:
        self.task = task
        self._annotations: dict[bool, list[Annotation] | TaskDataError] = {}
        # id of a series object of `task` -> (the series, kept so the id stays its own; its instances)
        self._instances: dict[int, tuple[dict, list[Instance] | TaskDataError]] = {}
        self._mask_references: list[str] | None = None

    def annotations(self, options: ExportOptions) -> list[Annotation]:
        """annotations_of(task, options), parsed once per `no_consensus`."""
        key = options.no_consensus
        if key not in self._annotations:
            try:
                self._annotations[key] = annotations_of(self.task, options)
            except TaskDataError as error:
                self._annotations[key] = error
        found = self._annotations[key]
        if isinstance(found, TaskDataError):
            raise found
        return found

    def case_annotation(self, options: ExportOptions) -> Annotation:
        """The series a dataset layout's cases are made of: the task's own, or a consensus task's
        super truth (else first annotator), as `no_consensus` exports it; one label per case."""
        return self.annotations(options.model_copy(update={"no_consensus": True}))[0]

    def mask_references(self) -> list[str]:
        """mask_references(task): every mask the task names, walked once."""
        if self._mask_references is None:
            self._mask_references = mask_references(self.task)
        return self._mask_references

    def instances(self, series: dict) -> list[Instance]:
        """The instances of a series' segmentMap (parse_segment_map), parsed once per series."""
        known = self._instances.get(id(series))
        if known is None or known[0] is not series:  # keys made in another process (a pickled job) are stale
            try:
                parsed: list[Instance] | TaskDataError = parse_segment_map(series.get("segmentMap"))
            except TaskDataError as error:
                parsed = error
            self._instances[id(series)] = (series, parsed)
        found = self._instances[id(series)][1]
        if isinstance(found, TaskDataError):
            raise found
        return found


def annotations_of(task: dict, options: ExportOptions) -> list[Annotation]:
    """The annotations to export, each with file stems no other annotation of the task uses."""
    annotations = _annotations(task, options)
    taken: set[str] = set()
    stems: dict[int, list[str]] = {}
    # Plain names (the task's own series, the super truth) first: they keep `<Series>`.
    for position in sorted(range(len(annotations)), key=lambda position: annotations[position].suffix != ""):
        annotation = annotations[position]
        stems[position] = deduplicate((name + annotation.suffix for name in annotation.names), taken)
    return [replace(annotation, stems=tuple(stems[position])) for position, annotation in enumerate(annotations)]


def _annotations(task: dict, options: ExportOptions) -> list[Annotation]:
    top_series = _series_list(task.get("series"), "series")
    consensus_tasks = task.get("consensusTasks")
    if not consensus_tasks:
        return [_annotation("task", top_series, top_series, "")]
    if not isinstance(consensus_tasks, list) or not all(isinstance(item, dict) for item in consensus_tasks):
        raise TaskDataError("consensusTasks must be a list of objects")
    super_truth = _super_truth(task)
    if options.no_consensus:
        chosen, label = (super_truth, "super truth") if super_truth is not None else (consensus_tasks[0], "annotator 1")
        return [_annotation(label, _series_list(chosen.get("series"), f"{label} series"), top_series, "")]
    annotations = [
        _annotation(
            f"annotator {position}",
            _series_list(annotator.get("series"), f"consensusTasks[{position - 1}].series"),
            top_series,
            f"_{position}",
        )
        for position, annotator in enumerate(consensus_tasks, start=1)
    ]
    if super_truth is not None:
        annotations.append(
            _annotation("super truth", _series_list(super_truth.get("series"), "superTruth.series"), top_series, "")
        )
    return annotations


def assemble_task(task: dict, options: ExportOptions, exported: Sequence[list[dict]]) -> tuple[dict, list[str]]:
    """The task entry of tasks.json, from the exported series of each annotation, in order.

    Returns the entry and any warnings about what it could not carry over.
    """
    top_series = _series_list(task.get("series"), "series")
    if not task.get("consensusTasks"):
        return {**task, "series": exported[0]}, []
    images_only = [_without_masks(series) for series in top_series]
    if options.no_consensus:
        plain = {key: value for key, value in task.items() if key not in CONSENSUS_FIELDS}
        merged = [
            {**images_only[position], **series} if position < len(images_only) else series
            for position, series in enumerate(exported[0])
        ]
        return {**plain, "series": merged}, []
    warnings = []
    if any(any(field in series for field in _MASK_FIELDS) for series in top_series):
        warnings.append(
            "the top-level series of this consensus task carry segmentations, which are not exported: "
            "each annotator's and the super truth's are"
        )
    entry = {**task, "series": images_only}
    entry["consensusTasks"] = [
        {**annotator, "series": exported[position]} for position, annotator in enumerate(task["consensusTasks"])
    ]
    if _super_truth(task) is not None:
        entry["superTruth"] = {**task["superTruth"], "series": exported[-1]}
    return entry, warnings


def _annotation(label: str, series: list[dict], top_series: list[dict], suffix: str) -> Annotation:
    names = [
        item.get("name") or (top_series[position].get("name") if position < len(top_series) else None)
        for position, item in enumerate(series)
    ]
    return Annotation(label=label, series=series, names=series_names(names), suffix=suffix)


def _super_truth(task: dict) -> dict | None:
    super_truth = task.get("superTruth")
    if super_truth is None:
        return None
    if not isinstance(super_truth, dict):
        raise TaskDataError("superTruth must be an object with a series list")
    return super_truth


def _series_list(series: object, where: str) -> list[dict]:
    if series is None:
        return []
    if not isinstance(series, list) or not all(isinstance(item, dict) for item in series):
        raise TaskDataError(f"{where} must be a list of series objects")
    return series


def _without_masks(series: dict) -> dict:
    return {key: value for key, value in series.items() if key not in _MASK_FIELDS}


def mask_references(task: dict) -> list[str]:
    """Every `segmentations` path a task names (its own, each annotator's, the super truth's)."""
    groups = [task.get("series")]
    if isinstance(task.get("consensusTasks"), list):
        groups += [item.get("series") for item in task["consensusTasks"] if isinstance(item, dict)]
    if isinstance(task.get("superTruth"), dict):
        groups.append(task["superTruth"].get("series"))
    references: list[str] = []
    for series_list in groups:
        for series in series_list if isinstance(series_list, list) else []:
            reference = series.get("segmentations") if isinstance(series, dict) else None
            if isinstance(reference, str) and reference not in references:
                references.append(reference)
    return references
