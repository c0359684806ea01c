"""Incremental exports: skip tasks whose inputs and options have not changed.

The state lives in the destination, beside the export it describes
(`<root>/.rbexport/state.json`), so any worker can pick up where another left off. For
each task it holds a fingerprint of what the export was made from (the task's JSON, its
folder, the version of every mask object it names, the options) and the files written.

A task is skipped when its fingerprint is the one recorded, every recorded file is still
in the destination with its recorded size, and the previous tasks.json has its entry.
Files an export no longer writes (a removed task's, or an instance that is gone) are
remembered, and deleted by a run with `prune`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .options import ExportOptions
from .storage import Storage

STATE_KEY = ".rbexport/state.json"
# Bump when the same inputs would give different output files.
EXPORT_FORMAT = 1


@dataclass
class CaseRecord:
    """A training case of a dataset layout (SPEC 6), as the dataset's files describe it."""

    id: str
    group: str  # cases of one group share a fold
    modalities: list[str]  # of each channel
    voxels: dict[str, int]  # label value (as text) -> voxels of that label
    fold: int | None = None  # given when the dataset is published, then kept


@dataclass
class TaskRecord:
    fingerprint: str | None  # None: the last export of this task failed; export it again
    files: dict[str, int] = field(default_factory=dict)  # path -> bytes
    orphans: list[str] = field(default_factory=list)  # written once, no longer part of the export
    cases: list[CaseRecord] = field(default_factory=list)  # a dataset layout's cases of this task

    def __post_init__(self) -> None:
        self.cases = [CaseRecord(**case) if isinstance(case, dict) else case for case in self.cases]


@dataclass
class ExportState:
    tasks: dict[str, TaskRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, storage: Storage) -> ExportState:
        """The destination's state; empty (everything exported again) if absent or unreadable."""
        if not storage.exists(STATE_KEY):
            return cls()
        try:
            body = json.loads(storage.read(STATE_KEY))
            if body.get("format") != EXPORT_FORMAT:
                return cls()
            return cls({task_id: TaskRecord(**record) for task_id, record in body["tasks"].items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def to_json(self) -> bytes:
        body = {"format": EXPORT_FORMAT, "tasks": {task_id: asdict(record) for task_id, record in self.tasks.items()}}
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")


def task_fingerprint(
    task: dict, folder: str, mask_versions: dict[str, str | None], options: ExportOptions, cases: Sequence[str] = ()
) -> str:
    """What an export of this task is made of; equal fingerprints give equal files.

    `cases`: the ids a dataset layout gives the task's cases (they name its files).
    """
    material = {
        "format": EXPORT_FORMAT,
        "task": task,
        "folder": folder,
        "masks": mask_versions,
        "options": options.model_dump(),
    }
    if cases:
        material["cases"] = list(cases)
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def is_unchanged(record: TaskRecord | None, fingerprint: str, present: dict[str, int], listed: bool) -> bool:
    """`listed`: the export's index still has the task (its tasks.json entry; a dataset's
    dataset.json is made from the state, so there it always does)."""
    return (
        record is not None
        and record.fingerprint == fingerprint
        and listed
        and all(present.get(path) == size for path, size in record.files.items())
    )
