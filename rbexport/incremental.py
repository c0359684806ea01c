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

An interrupted run (Ctrl-C, SIGTERM) publishes nothing, but records the tasks it finished
(their files are all stored): their records, and their tasks.json entries where the
published tasks.json does not hold the same (`unpublished`). The next run skips those
tasks as unchanged, takes their entries from there, and drops `unpublished` when it
publishes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from .display import shown
from .errors import ConfigurationError
from .export_tree import EXPORT_FOLDERS, STATE_KEY, TASKS_JSON
from .options import ExportOptions
from .storage import Storage, normalize_key

# Bump when the same inputs would give different output files.
EXPORT_FORMAT = 1
FOLDS = 5  # a dataset case's fold is 0 to 4 (rbexport.layouts.folds)


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
    # Task id -> its tasks.json entry, for tasks an interrupted run exported whose entry the
    # published tasks.json does not hold (yet): the next run's tasks.json takes it from here.
    # Kept in the state as JSON text, so that its keys keep their order.
    unpublished: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, storage: Storage, rebuild: bool = False) -> ExportState:
        """The destination's state; empty when there is none (everything is exported).

        A state that cannot be used (not JSON, another format, tampered with) stops the run
        with a ConfigurationError that says how to rebuild it; with `rebuild` (a full
        export) it is set aside and an empty one is used.
        """
        if not storage.exists(STATE_KEY):
            return cls()
        try:
            return cls.parse(storage.read(STATE_KEY))
        except ValueError as error:
            if rebuild:
                return cls()
            raise ConfigurationError(
                f"{shown(storage.url_of(STATE_KEY))} cannot be used ({shown(error)}): run with --full "
                "(flow parameter incremental=false) to export everything again and rebuild it"
            ) from None

    @classmethod
    def parse(cls, data: bytes) -> ExportState:
        """A state from its JSON; ValueError (one line, what is wrong) when it is not one,
        is of another EXPORT_FORMAT, or holds a value a run could not safely use: a file
        path that leaves the export or lies outside its folders, a size or fold that is not
        a small whole number."""
        try:
            body = json.loads(data)
        except RecursionError:
            raise ValueError("it nests too deeply") from None
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
            raise ValueError(f"not JSON: {' '.join(str(error).split())}") from None
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if body.get("format") != EXPORT_FORMAT:
            raise ValueError(f"format {shown(repr(body.get('format')))[:40]}, not {EXPORT_FORMAT}")
        tasks = _expect(body.get("tasks"), dict, "tasks")
        indexes = _expect(body.get("indexes", {}), dict, "indexes")
        images = body.get("images", False)
        if not isinstance(images, bool):
            raise ValueError("images is not true or false")
        records = {_text(task_id, "a task id"): _task_record(task_id, record) for task_id, record in tasks.items()}
        unpublished = {
            task_id: _entry(task_id, text, records)
            for task_id, text in _expect(body.get("unpublished", {}), dict, "unpublished").items()
        }
        return cls(
            records,
            {_index_name(name): _text(value, f"the checksum of {name}") for name, value in indexes.items()},
            images,
            unpublished,
        )

    def to_json(self) -> bytes:
        body = {
            "format": EXPORT_FORMAT,
            "tasks": {task_id: asdict(record) for task_id, record in self.tasks.items()},
            "indexes": self.indexes,
            "images": self.images,
        }
        if self.unpublished:  # only after an interruption: a published state is as it always was
            body["unpublished"] = {task_id: entry_text(entry) for task_id, entry in self.unpublished.items()}
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
    normally one or the other; `rbexport.run.housekeeping.check_layout` sees to it)."""
    keys = set(keys)
    at_root = [""] if STATE_KEY in keys or TASKS_JSON in keys else []
    return at_root + sorted(
        key.split("/", 1)[0] for key in keys if key.count("/") == 2 and key.endswith("/" + STATE_KEY)
    )


def entry_text(entry: dict) -> str:
    """A tasks.json entry as its JSON text, its keys in order (as tasks.json writes them)."""
    return json.dumps(entry, ensure_ascii=False)


def _entry(task_id: str, text: object, records: dict[str, TaskRecord]) -> dict:
    what = f"unpublished: the entry of task {shown(repr(task_id))[:80]}"
    if task_id not in records:
        raise ValueError(f"{what} has no record")
    try:
        entry = json.loads(_text(text, what))
    except RecursionError:
        raise ValueError(f"{what} nests too deeply") from None
    except ValueError:
        raise ValueError(f"{what} is not JSON") from None
    return _expect(entry, dict, what)


def _expect(value: object, kind: type, what: str):
    if not isinstance(value, kind):
        raise ValueError(f"{what} is not a JSON {'object' if kind is dict else 'list'}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{shown(what)} is not a string")
    return value


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{shown(what)} is {shown(repr(value))[:40]}, not a whole number of 0 or more")
    return value


def task_file_path(path: object) -> str:
    """A file path a state records, checked: relative, inside one of the EXPORT_FOLDERS."""
    text = _text(path, "a file path")
    if normalize_key(text) != text or text.split("/", 1)[0] not in EXPORT_FOLDERS or "/" not in text:
        raise ValueError(f"file {shown(repr(text))[:200]} is not a path inside {', '.join(EXPORT_FOLDERS)}")
    return text


def _index_name(name: object) -> str:
    """An index (tasks.json, dataset.json, ...): a file at the export root."""
    text = _text(name, "an index name")
    if normalize_key(text) != text or "/" in text:
        raise ValueError(f"index {shown(repr(text))[:200]} is not a file at the export root")
    return text


def _task_record(task_id: object, record: object) -> TaskRecord:
    what = f"task {shown(repr(task_id))[:80]}"
    fields: dict = _expect(record, dict, what)
    fingerprint = fields.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"{what}: fingerprint is not a string")
    files = {
        task_file_path(path): _count(size, f"the size of {path}")
        for path, size in _expect(fields.get("files", {}), dict, f"{what}: files").items()
    }
    orphans = [task_file_path(path) for path in _expect(fields.get("orphans", []), list, f"{what}: orphans")]
    checksums = {
        task_file_path(path): _text(value, f"the checksum of {path}")
        for path, value in _expect(fields.get("checksums", {}), dict, f"{what}: checksums").items()
    }
    cases = [_case(case, what) for case in _expect(fields.get("cases", []), list, f"{what}: cases")]
    unknown = set(fields) - {"fingerprint", "files", "orphans", "cases", "checksums"}
    if unknown:
        raise ValueError(f"{what}: unknown field {shown(repr(sorted(unknown)[0]))[:80]}")
    return TaskRecord(fingerprint, files, orphans, cases, checksums)


def _case(case: object, what: str) -> CaseRecord:
    fields: dict = _expect(case, dict, f"{what}: a case")
    fold = fields.get("fold")
    if fold is not None and (_count(fold, f"{what}: a fold") >= FOLDS):
        raise ValueError(f"{what}: fold {fold} is not one of 0 to {FOLDS - 1}")
    modalities = _expect(fields.get("modalities"), list, f"{what}: modalities")
    voxels = _expect(fields.get("voxels"), dict, f"{what}: voxels")
    return CaseRecord(
        _text(fields.get("id"), f"{what}: a case id"),
        _text(fields.get("group"), f"{what}: a case group"),
        [_text(modality, f"{what}: a modality") for modality in modalities],
        {_text(label, f"{what}: a label"): _count(count, f"{what}: a voxel count") for label, count in voxels.items()},
        fold,
    )
