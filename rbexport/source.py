"""Reading a source (SPEC 1): its tasks, its taxonomy, and the masks its tasks name.

Only what tasks.json names is read, and nothing is ever written to a source.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .annotations import mask_references
from .display import shown
from .errors import (
    AccessDeniedError,
    ConfigurationError,
    ObjectNotFoundError,
    RefusedObjectError,
    StorageError,
    TaskDataError,
)
from .memory import volume_bytes
from .nifti import MASK_HEAD_BYTES, LabelMap, max_file_bytes, peek_volume, read_label_map, size_text
from .storage import Location, S3Access, Storage, normalize_key, open_storage
from .structures.masks import VoxelIndex
from .taxonomy import SEGMENT_CODES_FILE, TAXONOMY_FILE, SegmentCode, Taxonomy, TaxonomyNeeds, parse_taxonomy

TASKS_FILE = "tasks.json"
TASKS_FOLDER = "tasks/"
# Deepest nesting of lists and objects a source's JSON may have (a RedBrick task nests
# about 6 levels; Python's own limit is near 1,000, and code that walks a task recurses).
MAX_JSON_DEPTH = 100
# The largest JSON file of a source read (tasks.json of ~500,000 tasks).
MAX_JSON_BYTES = 1024**3
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class SourceTask:
    task: object  # as parsed; checked per task, so one bad entry fails only itself
    origin: str  # where it was read: "tasks.json[3]", "tasks/a.json"


def read_tasks(source: Storage) -> list[SourceTask]:
    """Every task of the source in order: tasks.json first, then tasks/*.json by name.

    A file that is not valid JSON, or whose top level is not what SPEC 1 allows, stops the
    run with a ConfigurationError before anything is written.
    """
    found: list[SourceTask] = []
    has_tasks_file = source.exists(TASKS_FILE)
    if has_tasks_file:
        tasks = _read_json(source, TASKS_FILE)
        if not isinstance(tasks, list):
            raise ConfigurationError(
                f"{source.url_of(TASKS_FILE)} holds a JSON {_json_type(tasks)}, not a list of tasks"
            )
        found += [SourceTask(task, f"{TASKS_FILE}[{position}]") for position, task in enumerate(tasks)]
    task_files = sorted(
        info.key
        for info in source.list(TASKS_FOLDER)
        if info.key.endswith(".json") and "/" not in info.key[len(TASKS_FOLDER) :]
    )
    for key in task_files:
        content = _read_json(source, key)
        if isinstance(content, dict):
            found.append(SourceTask(content, key))
        elif isinstance(content, list):
            found += [SourceTask(task, f"{key}[{position}]") for position, task in enumerate(content)]
        else:
            raise ConfigurationError(
                f"{source.url_of(key)} holds a JSON {_json_type(content)}, not a task or a list of tasks"
            )
    if not has_tasks_file and not task_files:
        raise ConfigurationError(f"no {TASKS_FILE} or {TASKS_FOLDER}*.json in {source.url}")
    return found


def wait_until_quiet(source: Storage, quiet_seconds: float, poll_seconds: float = 1.0) -> float:
    """Return once the source's uploads have settled: at once when every task's JSON and
    every mask it names are there (checked again whenever the listing changes), else once
    nothing in the source has changed for `quiet_seconds`.

    Gives up waiting after ten quiet periods (at least a minute) of constant change.
    Returns the seconds waited.
    """
    started = time.monotonic()
    if quiet_seconds <= 0:
        return 0.0
    give_up = started + max(60.0, 10 * quiet_seconds)
    snapshot = {info.key: info.etag for info in source.list()}
    quiet_since = time.monotonic()
    if tasks_complete(source, set(snapshot)):
        return time.monotonic() - started
    while time.monotonic() - quiet_since < quiet_seconds and time.monotonic() < give_up:
        time.sleep(min(poll_seconds, quiet_seconds))
        current = {info.key: info.etag for info in source.list()}
        if current != snapshot:
            snapshot, quiet_since = current, time.monotonic()
            if tasks_complete(source, set(snapshot)):
                break
    return time.monotonic() - started


def tasks_complete(source: Storage, keys: set[str]) -> bool:
    """Whether every task of the source can be exported now: its JSON reads, and every mask
    in the source that it names is among `keys` (a mask uploaded before its task JSON, with
    no task naming it yet, holds nothing up). A task JSON still being written, or one whose
    masks are not all there yet, is incomplete; masks in other buckets are not checked."""
    try:
        tasks = read_tasks(source)
    except (ConfigurationError, TaskDataError, StorageError):
        return False
    prefix = source.url.rstrip("/") + "/"
    for item in tasks:
        for reference in mask_references(item.task) if isinstance(item.task, dict) else []:
            key = reference[len(prefix) :] if reference.startswith(prefix) else normalize_key(reference)
            if "://" not in reference or reference.startswith(prefix):
                if key is not None and key not in keys:
                    return False
    return True


def read_taxonomy(
    source: Storage, needs: TaxonomyNeeds, check_numbers: Callable[[Mapping[str, int]], object] | None = None
) -> Taxonomy:
    """The source's taxonomy (rbexport.taxonomy), in the parts `needs` asks for: taxonomy.json
    and segment_codes.json each read once, and only when a part needs it. A run reads it
    once (rbexport.task_export.read_run_taxonomy) and passes it whole."""
    taxonomy = None
    if needs.taxonomy_file:
        if source.exists(TAXONOMY_FILE):
            taxonomy = _read_json(source, TAXONOMY_FILE)
        elif needs.numbers_for is not None:
            raise ConfigurationError(f"{needs.numbers_for} needs {TAXONOMY_FILE} in {source.url}")

    def segment_codes() -> object:
        return _read_json(source, SEGMENT_CODES_FILE) if source.exists(SEGMENT_CODES_FILE) else None

    return parse_taxonomy(
        taxonomy, needs, source.url_of(TAXONOMY_FILE), segment_codes, source.url_of(SEGMENT_CODES_FILE), check_numbers
    )


# One part of the taxonomy each, for callers that need only that (a run reads it whole, once).
def read_category_numbers(source: Storage, needed_by: str = "a semantic export") -> dict[str, int]:
    """Category numbers from the source's taxonomy.json (semantic exports and dataset layouts need them)."""
    return dict(read_taxonomy(source, TaxonomyNeeds(numbers_for=needed_by)).category_numbers or {})


def read_category_colours(source: Storage) -> dict[str, tuple[int, int, int]]:
    """The taxonomy's category colours, when the source has a taxonomy.json ({} when not)."""
    return dict(read_taxonomy(source, TaxonomyNeeds(colours=True)).colours or {})


def read_roi_types(source: Storage) -> dict[str, str]:
    """The taxonomy's RT ROI interpreted types (`rtRoiInterpretedType`), {} without a taxonomy.json."""
    return dict(read_taxonomy(source, TaxonomyNeeds(roi_types=True)).roi_types or {})


def read_segment_codes(source: Storage) -> dict[str, SegmentCode]:
    """The source's segment_codes.json (DICOM SEG codes by category), {} when it has none."""
    return dict(read_taxonomy(source, TaxonomyNeeds(segment_codes=True)).segment_codes or {})


def _read_json(source: Storage, key: str) -> object:
    with source.open(key) as stream:
        data = _read_bounded(stream, MAX_JSON_BYTES)
    if data is None:
        raise ConfigurationError(
            f"{shown(source.url_of(key))} holds more than {size_text(MAX_JSON_BYTES)}, more than a JSON file "
            "of a source can be (split the tasks into tasks/*.json)"
        )
    return parse_json(data, source.url_of(key))


def parse_json(data: bytes, origin: str) -> object:
    """JSON from a file anyone may have written: ConfigurationError (one line, naming
    `origin`) when it is not valid, nests deeper than MAX_JSON_DEPTH, or holds a number
    too long to read."""
    try:
        value = json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"{shown(origin)} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{shown(origin)} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigurationError(f"{shown(origin)} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # an integer of thousands of digits
        raise ConfigurationError(f"{shown(origin)} is not JSON this export reads ({_one_line(error)})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ConfigurationError(f"{shown(origin)} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is too large for a floating-point value")
    return number


def json_depth(value: object) -> int:
    """How deeply lists and objects nest in `value` (without recursion: any depth is measured)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            pending += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _read_bounded(stream, limit: int) -> bytes | None:
    """The rest of a stream, or None when it holds more than `limit` bytes (known from its
    size when the stream tells it, else found reading no more than `limit` + 1 bytes)."""
    size = _size_hint(stream)
    if size is not None and size - _position(stream) > limit:
        return None
    data = _read_up_to(stream, limit + 1)
    return data if len(data) <= limit else None


def _size_hint(stream) -> int | None:
    """The size of a local file or an S3 object's body being read, when it is known."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        length = getattr(stream, "_content_length", None)  # botocore's StreamingBody
        return int(length) if isinstance(length, int | str) and str(length).isdigit() else None


def _position(stream) -> int:
    try:
        return stream.tell()
    except (AttributeError, OSError, ValueError):
        return getattr(stream, "_amount_read", 0)


def _read_up_to(stream, count: int) -> bytes:
    """Up to `count` bytes of a stream (fewer only at its end)."""
    parts, wanted = [], count
    while wanted > 0:
        part = stream.read(min(wanted, 64 * 1024**2))
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def _json_type(value: object) -> str:
    return {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


class MaskReader:
    """Resolves a series' `segmentations` reference and decodes it, once per task.

    A relative path is read from the source; an `s3://` URL inside the source prefix too.
    A URL elsewhere is read only when its bucket is in `allowed_buckets`.
    """

    def __init__(
        self, source: Storage, source_location: Location, access: S3Access, allowed_buckets: tuple[str, ...]
    ) -> None:
        self.source = source
        self.source_location = source_location
        self.access = access
        self.allowed_buckets = allowed_buckets
        self._decoded: dict[str, LabelMap | TaskDataError] = {}
        self._indexes: dict[str, VoxelIndex] = {}
        self._downloaded: dict[str, bytes] = {}

    def fetch(self, references: list[str]) -> int:
        """Download every mask (not decoding yet); the bytes decoding them all will hold."""
        needed = 0
        for reference in references:
            if reference in self._decoded or reference in self._downloaded:
                continue
            try:
                self._downloaded[reference] = self._download(reference)
            except TaskDataError as error:
                self._decoded[reference] = error
                continue
            volume = peek_volume(self._downloaded[reference])
            needed += volume_bytes(*volume) if volume else 0
        return needed

    def announced_voxels(self, reference: object) -> int:
        """The voxels a fetched (not yet decoded) mask's header announces; 0 when unknown."""
        raw = self._downloaded.get(reference) if isinstance(reference, str) else None
        volume = peek_volume(raw) if raw else None
        return volume[0] if volume else 0

    def release(self) -> None:
        """Forget every mask read: the task is done with them."""
        self._decoded.clear()
        self._indexes.clear()
        self._downloaded.clear()

    def load(self, reference: object) -> LabelMap:
        """The decoded label map (read and decoded once per reader, failures included)."""
        if not isinstance(reference, str):
            raise TaskDataError(f"segmentations must be the path of one label map, not a {_json_type(reference)}")
        if reference not in self._decoded:
            try:
                raw = self._downloaded.pop(reference, None) or self._download(reference)
                self._decoded[reference] = self._decode(reference, raw)
            except TaskDataError as error:
                self._decoded[reference] = error
        decoded = self._decoded[reference]
        if isinstance(decoded, TaskDataError):
            raise decoded
        return decoded

    def index(self, reference: str) -> VoxelIndex:
        """Where each value of the label map lies (built once per reader)."""
        if reference not in self._indexes:
            self._indexes[reference] = VoxelIndex(self.load(reference).values)
        return self._indexes[reference]

    def _download(self, reference: str) -> bytes:
        """The mask's bytes, read no further than its header says the file can hold."""
        storage, key = self.locate(reference)
        try:
            with storage.open(key) as stream:
                head = _read_up_to(stream, MASK_HEAD_BYTES)
                limit = max_file_bytes(head)
                if limit is None or len(head) < MASK_HEAD_BYTES:
                    return head  # the decoder says what is wrong with it, or it is whole
                rest = _read_bounded(stream, limit - len(head))
        except ObjectNotFoundError:
            raise TaskDataError("mask file not found", reference) from None
        except RefusedObjectError as error:
            raise TaskDataError(error.reason, reference) from None
        except AccessDeniedError:
            raise TaskDataError("permission denied reading the mask file", reference) from None
        if rest is None:
            raise TaskDataError(
                f"the file holds more than {size_text(limit)}, far more than its header announces", reference
            )
        return head + rest

    @staticmethod
    def _decode(reference: str, raw: bytes) -> LabelMap:
        try:
            return read_label_map(raw)
        except TaskDataError as error:
            raise TaskDataError(error.reason, reference) from None

    def version(self, reference: str, source_versions: dict[str, str]) -> str | None:
        """The object version (ETag, or mtime and size) of a mask, without reading it."""
        try:
            storage, key = self.locate(reference)
        except TaskDataError:
            return None
        if storage is self.source:
            return source_versions.get(key)
        info = storage.stat(key)
        return info.etag if info else None

    def locate(self, reference: str) -> tuple[Storage, str]:
        """The storage and key a `segmentations` reference points at."""
        if _SURROGATE.search(reference):
            raise TaskDataError(
                "the path is not Unicode text (it holds a lone surrogate, \\ud800 to \\udfff)", reference
            )
        if reference.startswith("s3://"):
            try:
                target = Location.parse(reference)
            except ConfigurationError as error:
                raise TaskDataError(str(error), reference) from None
            if self.source_location.contains(target) and target.path != self.source_location.path:
                prefix = self.source_location.path
                return self.source, target.path[len(prefix) + 1 :] if prefix else target.path
            if target.bucket not in self.allowed_buckets:
                raise TaskDataError(
                    f"lies outside the source {self.source_location.url}; "
                    f"allow bucket {target.bucket!r} explicitly to read it",
                    reference,
                )
            return open_storage(Location("s3", target.bucket, ""), self.access), target.path
        if "://" in reference:
            raise TaskDataError("unsupported URL; use a path relative to the source or an s3:// URL", reference)
        key = normalize_key(reference)
        if key is None:
            raise TaskDataError("path leaves the source prefix", reference)
        return self.source, key
