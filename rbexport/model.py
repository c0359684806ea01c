"""The values a run passes around, plain and picklable: what was asked, the plan, the jobs
and what came back. No clients: workers make theirs from the S3Access, whose keys (when a
Secret block gave them) are secret values that never print.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .annotations import ParsedTask
from .errors import TaskDataError
from .filters import TaskFilter
from .incremental import CaseRecord, ExportState
from .layouts.cases import Case
from .lease import WAIT_SECONDS
from .options import ExportOptions
from .report import Failure, FileRecord, Notice
from .storage import S3Access
from .taxonomy import Taxonomy
from .variants import Preset, Variant


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """Everything a run is asked to do, built once (from the CLI's flags or the flow's
    parameters) and passed whole. Keyword-only: three adjacent booleans never swap."""

    source: str
    destination: str
    options: ExportOptions = field(default_factory=ExportOptions)
    variants: tuple[Preset | Variant | str, ...] = ()
    incremental: bool = True
    prune: bool = False
    replace_layout: bool = False
    access: S3Access = S3Access()
    allowed_buckets: tuple[str, ...] = ()
    lock_timeout: float = WAIT_SECONDS  # how long to wait while another run writes the destination
    filters: TaskFilter = TaskFilter()  # which tasks of the source the export holds (SPEC 8)


@dataclass(frozen=True)
class Target:
    """One structure variant of a run and the root it is written to."""

    name: str
    root: str
    options: ExportOptions


@dataclass(frozen=True)
class ExportSettings:
    """What every task of a run shares: where from, which variants, where to."""

    source: str
    targets: tuple[Target, ...]
    # The source's categories, read once (rbexport.task_export.read_run_taxonomy) in the parts
    # the variants need: numbers (semantic, dataset layouts), colours, codes, ROI types (writers).
    taxonomy: Taxonomy = Taxonomy()
    access: S3Access = S3Access()
    allowed_buckets: tuple[str, ...] = ()

    @property
    def category_numbers(self) -> Mapping[str, int] | None:
        """The taxonomy's category numbers (None when no variant needs them)."""
        return self.taxonomy.category_numbers


@dataclass(frozen=True)
class TaskJob:
    position: int  # in the source's order
    task_id: str
    folder: str  # the task's folder name under segmentations/, unique in the run
    task: dict
    origin: str  # where the task was read, for messages
    targets: tuple[str, ...] = ()  # the variants to export it for (the others are unchanged)
    item_sizes: Mapping[str, int] = field(default_factory=dict)  # image items' sizes, from the source's listing
    cases: Mapping[str, tuple[Case, ...]] = field(default_factory=dict)  # a dataset variant's cases of this task
    weight: int = 0  # bytes of its masks and images in the source's listing: how much work it is
    # `task` parsed once for every phase that reads it (fingerprints, cases, the export);
    # made from `task` when not given, and kept by dataclasses.replace.
    parsed_task: ParsedTask | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.parsed_task is None:
            object.__setattr__(self, "parsed_task", ParsedTask(self.task))

    @property
    def parsed(self) -> ParsedTask:
        """The task's annotations, segment maps and mask references, each parsed on first use and kept."""
        assert self.parsed_task is not None  # __post_init__
        return self.parsed_task


@dataclass
class TaskResult:
    """One task exported for one variant."""

    position: int
    task_id: str
    entry: dict  # the task's entry in tasks.json
    files: list[FileRecord] = field(default_factory=list)
    warnings: list[Notice] = field(default_factory=list)
    cases: list[CaseRecord] = field(default_factory=list)  # a dataset layout's cases (SPEC 6)


@dataclass
class TaskOutcome:
    """One task across the variants it was exported for: a result or a failure for each."""

    task_id: str
    results: dict[str, TaskResult] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)


class TaskFailed(TaskDataError):
    """The task failed for every variant asked for; `failures` says why, per variant."""

    def __init__(self, failures: dict[str, Failure]) -> None:
        first = next(iter(failures.values()))
        super().__init__(first.reason, first.file)
        self.failures = failures

    def __reduce__(self):
        return (type(self), (self.failures,))


@dataclass
class TargetPlan:
    """One variant's view of the run: what it had before, what it skips."""

    target: Target
    state: ExportState
    previous_tasks_json: bytes | None
    previous_entries: dict[str, dict]
    fingerprints: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    failures: list[Failure] = field(default_factory=list)  # tasks refused for this variant when planned
    warnings: list[Notice] = field(default_factory=list)


@dataclass
class RunPlan:
    settings: ExportSettings
    tasks: list[TaskJob]  # every valid task of the source, in order
    failures: list[Failure]  # tasks refused before export (no taskId, duplicates)
    targets: list[TargetPlan]
    source_task_ids: set[str]
    prune: bool = False
    started: float = field(default_factory=time.perf_counter)
    filters: TaskFilter = TaskFilter()
    filtered: list[str] = field(default_factory=list)  # source tasks the filters left out (their ids)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def jobs(self) -> list[TaskJob]:
        """The tasks with at least one variant to export."""
        return [job for job in self.tasks if job.targets]
