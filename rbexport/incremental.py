"""Incremental exports: skip tasks whose inputs and options have not changed.

The state lives in the destination, beside the export it describes
(`<root>/.rbexport/state.json`), so any worker can pick up where another left off. For
each task it holds a fingerprint of what the export was made from (the task's JSON, its
folder, the version of every mask object it names, the options) and the files written.

The state also keeps what `rbexport verify` checks the export against: each file's
checksum (`sha256:<hex>`, or `etag:<ETag>` for an image the store copied itself and gave
no SHA-256 of), and those of the indexes (tasks.json, a dataset's dataset.json, ...).

A task is skipped when its fingerprint is the one recorded, every recorded file is still
in the destination with its recorded size and has a recorded checksum (a state written
before checksums were kept has none: its tasks are exported again, which records them),
and the previous tasks.json has its entry.
Files an export no longer writes (a removed task's, or an instance that is gone) are
remembered, and deleted by a run with `prune`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from .options import ExportOptions
from .storage import Storage

STATE_KEY = ".rbexport/state.json"
TASKS_JSON = "tasks.json"
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
    checksums: dict[str, str] = field(default_factory=dict)  # path -> "sha256:<hex>" or "etag:<ETag>"

    def __post_init__(self) -> None:
        self.cases = [CaseRecord(**case) if isinstance(case, dict) else case for case in self.cases]


@dataclass
class ExportState:
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)  # tasks.json, dataset.json, ... -> "sha256:<hex>"
    images: bool = False  # the items tasks.json names are files of this export (images exported)

    @classmethod
    def load(cls, storage: Storage) -> ExportState:
        """The destination's state; empty (everything exported again) if absent or unreadable."""
        if not storage.exists(STATE_KEY):
            return cls()
        try:
            return cls.parse(storage.read(STATE_KEY))
        except ValueError:
            return cls()

    @classmethod
    def parse(cls, data: bytes) -> ExportState:
        """A state from its JSON; ValueError when it is not one (or of another EXPORT_FORMAT)."""
        try:
            body = json.loads(data)
            if body.get("format") != EXPORT_FORMAT:
                raise ValueError(f"format {body.get('format')!r}, not {EXPORT_FORMAT}")
            return cls(
                {task_id: TaskRecord(**record) for task_id, record in body["tasks"].items()},
                {str(name): str(value) for name, value in body.get("indexes", {}).items()},
                bool(body.get("images", False)),
            )
        except (TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"malformed state ({type(error).__name__})") from None

    def to_json(self) -> bytes:
        body = {
            "format": EXPORT_FORMAT,
            "tasks": {task_id: asdict(record) for task_id, record in self.tasks.items()},
            "indexes": self.indexes,
            "images": self.images,
        }
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")


def task_fingerprint(
    task: dict,
    folder: str,
    mask_versions: dict[str, str | None],
    options: ExportOptions,
    cases: Sequence[str] = (),
    written_with: dict | None = None,
) -> str:
    """What an export of this task is made of; equal fingerprints give equal files.

    `cases`: the ids a dataset layout gives the task's cases (they name its files).
    `written_with`: project files the masks' bytes depend on (a DICOM SEG's colours and codes).
    """
    material = {
        "format": EXPORT_FORMAT,
        "task": task,
        "folder": folder,
        "masks": mask_versions,
        "options": options.fingerprint_fields(),
    }
    if cases:
        material["cases"] = list(cases)
    if written_with:
        material["written_with"] = written_with
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def is_unchanged(record: TaskRecord | None, fingerprint: str, present: dict[str, int], listed: bool) -> bool:
    """`listed`: the export's index still has the task (its tasks.json entry; a dataset's
    dataset.json is made from the state, so there it always does)."""
    return (
        record is not None
        and record.fingerprint == fingerprint
        and listed
        and all(present.get(path) == size and path in record.checksums for path, size in record.files.items())
    )


def export_roots(keys: Iterable[str]) -> list[str]:
    """Where the exports of a destination (its keys) are: "" for one at its root, and the
    variant folders that hold a state of their own (one destination holds one layout, so
    normally one or the other; `run.check_layout` sees to it)."""
    keys = set(keys)
    at_root = [""] if STATE_KEY in keys or TASKS_JSON in keys else []
    return at_root + sorted(
        key.split("/", 1)[0] for key in keys if key.count("/") == 2 and key.endswith("/" + STATE_KEY)
    )
