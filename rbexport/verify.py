"""Verifying an export: is every file its runs wrote still there, byte for byte?

`verify_export(destination)` re-reads an export and checks it against what its state
(`.rbexport/state.json`) recorded: every file of every task, the indexes (tasks.json, a
dataset's dataset.json and splits), and every file tasks.json names (segmentations,
instance masks, and the image items when images were exported), which the state must
record too. It handles one export at the destination, variant folders beside each other
(DST/standard/, DST/semantic/, ...) and the dataset layouts (no tasks.json).

A file is checked the way its checksum was recorded:

- `sha256:<hex>`: read as a stream (several files at once, never one whole in memory) and
  hashed; a size other than the recorded one is a change without reading further;
- `etag:<ETag>`: an image the store copied itself and gave no SHA-256 of (SeaweedFS's
  CopyObject): the store's ETag for it now must be the one the copy returned.

A file with no recorded checksum (a state written before checksums were kept) is
reported as such, never passed: the next export run exports its task again and records it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .display import shown
from .errors import ConfigurationError, ObjectNotFoundError, TransientStorageError
from .export_tree import STATE_KEY, TASKS_JSON
from .incremental import ExportState, export_roots
from .lease import WAIT_SECONDS, DestinationBusy, Lease, read_lease
from .report import human_bytes
from .storage import Location, ObjectInfo, S3Access, Storage, normalize_key, open_storage

# Files read and hashed at once (each waits on the store or the disk).
READ_THREADS = 16

MISSING = "missing"
CHANGED = "changed"
UNREADABLE = "unreadable"
NO_CHECKSUM = "no recorded checksum"
NOT_RECORDED = "not in the state"
PROBLEM_KINDS = (MISSING, CHANGED, UNREADABLE, NO_CHECKSUM, NOT_RECORDED)


@dataclass(frozen=True)
class Problem:
    kind: str  # one of PROBLEM_KINDS
    path: str  # relative to the destination (a variant's folder included)
    detail: str = ""

    def line(self) -> str:
        """`changed: segmentations/Brain_001/T1.nii.gz (sha256 differs from the recorded one)`"""
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VerifyResult:
    destination: str
    roots: list[str]  # "" for one export at the destination, else its variant folders
    checked: int = 0  # files checked
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: every file is as recorded, or how many are not."""
        where = self.destination + (f" ({len(self.roots)} variants: {', '.join(self.roots)})" if self.roots[1:] else "")
        if self.ok:
            return (
                f"verified {where}: all {self.checked} files present with their recorded checksums "
                f"({human_bytes(self.bytes_read)} read in {self.seconds:.1f} s)"
            )
        counts = Counter(problem.kind for problem in self.problems)
        found = ", ".join(f"{counts[kind]} {kind}" for kind in PROBLEM_KINDS if counts[kind])
        return f"{where}: {found}; {len(self.problems)} of {self.checked} files not as the export wrote them"

    def rows(self) -> list[dict[str, str]]:
        return [{"problem": problem.kind, "file": problem.path, "detail": problem.detail} for problem in self.problems]

    def to_markdown(self, limit: int = 200) -> str:
        status = "verified" if self.ok else f"**{len(self.problems)} file(s) missing or changed**"
        lines = [f"# Export {status}", "", self.summary()]
        if self.problems:
            lines += ["", "| problem | file | detail |", "|---|---|---|"]
            lines += [
                f"| {problem.kind} | `{_cell(problem.path)}` | {_cell(problem.detail)} |"
                for problem in self.problems[:limit]
            ]
            if len(self.problems) > limit:
                lines.append(f"\n… and {len(self.problems) - limit} more.")
        return "\n".join(lines) + "\n"


def verify_export(destination: str, access: S3Access | str | None = None) -> VerifyResult:
    """Check the export at `destination` against its recorded checksums.

    ConfigurationError when there is no export there or the store cannot be used.
    """
    started = time.perf_counter()
    location = Location.parse(destination)
    storage = open_storage(location, access)
    storage.check_reachable()
    listing = {info.key: info for info in storage.list()}
    roots = export_roots(listing)
    if not roots:
        raise ConfigurationError(
            f"no export at {location.url}: neither {TASKS_JSON} nor {STATE_KEY} there, nor in a variant folder"
        )
    result = VerifyResult(location.url, roots)
    checks: list[_Check] = []
    for root in roots:
        checks += _root_checks(storage, root, listing, result)
    to_read = []
    for check in checks:
        info = listing.get(check.key)
        if info is None:
            result.problems.append(Problem(MISSING, check.key))
        elif check.checksum is None:
            result.problems.append(Problem(NO_CHECKSUM, check.key, "export again to record it"))
        elif check.checksum.startswith("etag:"):
            if info.etag != check.checksum.removeprefix("etag:"):
                result.problems.append(Problem(CHANGED, check.key, "its ETag is not the one the copy had"))
        elif check.checksum.startswith("sha256:"):
            if check.size is not None and info.size != check.size:
                result.problems.append(Problem(CHANGED, check.key, f"{info.size} bytes, the export wrote {check.size}"))
            else:
                to_read.append((check, info))
        else:
            result.problems.append(Problem(NO_CHECKSUM, check.key, f"unknown checksum {check.checksum.split(':')[0]}"))
    result.checked = len(checks)
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="rbexport-verify") as pool:
        outcomes = pool.map(lambda item: read_digest(storage, item[0].key), to_read)
        for (read, _), outcome in zip(to_read, outcomes, strict=True):
            if isinstance(outcome, Problem):
                result.problems.append(outcome)
                continue
            size, digest = outcome
            result.bytes_read += size
            if f"sha256:{digest}" != read.checksum:
                result.problems.append(Problem(CHANGED, read.key, "sha256 differs from the recorded one"))
    result.problems.sort(key=lambda problem: problem.path)
    result.seconds = time.perf_counter() - started
    return result


def verify_settled(
    destination: str,
    access: S3Access | str | None = None,
    timeout: float = WAIT_SECONDS,
    notify: Callable[[str], None] | None = None,
) -> VerifyResult:
    """`verify_export`, never halfway through a write: while a writer holds the destination
    (its lease, or its parent's for a variant folder: rbexport.lease) it waits, up to
    `timeout` (then DestinationBusy); when a writer published during the check (a state
    changed, or a lease is held again), it checks again, up to three times."""
    location = Location.parse(destination)
    parent = location.parent()
    guards = [open_storage(location, access)] + ([open_storage(parent, access)] if parent else [])
    deadline = time.monotonic() + timeout
    for _ in range(3):
        _wait_for_writers(guards, deadline, notify or (lambda message: None))
        before = _states(guards[0])
        result = verify_export(destination, access)
        if result.ok or (_states(guards[0]) == before and not any(_live_lease(guard) for guard in guards)):
            return result
    return result


def _states(storage: Storage) -> dict[str, str]:
    """The tag of every state under the destination: a publish changes one."""
    return {info.key: info.etag for info in storage.list() if info.key.endswith(STATE_KEY)}


def _live_lease(storage: Storage) -> Lease | None:
    try:
        held = read_lease(storage)
    except (ConfigurationError, TransientStorageError, ObjectNotFoundError):
        return None  # a parent outside what these keys may read: only the destination's own counts
    return held if held is not None and held.live else None


def _wait_for_writers(guards: list[Storage], deadline: float, notify: Callable[[str], None]) -> None:
    said = False
    while True:
        held = next((lease for lease in map(_live_lease, guards) if lease is not None), None)
        if held is None:
            return
        if time.monotonic() >= deadline:
            raise DestinationBusy(f"destination {guards[0].url} busy {held.describe()}: cannot verify while it writes")
        if not said:
            notify(f"waiting for {guards[0].url}: a run writes it, {held.describe()}")
            said = True
        time.sleep(1.0)


@dataclass(frozen=True)
class _Check:
    key: str  # relative to the destination
    checksum: str | None
    size: int | None = None


def _root_checks(storage: Storage, root: str, listing: dict[str, ObjectInfo], result: VerifyResult) -> list[_Check]:
    """What to check of one export (at the destination's root, or a variant folder)."""
    prefix = f"{root}/" if root else ""
    state = ExportState()
    if prefix + STATE_KEY in listing:
        try:
            state = ExportState.parse(storage.read(prefix + STATE_KEY))
        except ValueError as error:
            result.problems.append(Problem(CHANGED, prefix + STATE_KEY, f"not a state this version reads: {error}"))
        except ObjectNotFoundError:
            result.problems.append(Problem(MISSING, prefix + STATE_KEY))
    expected: dict[str, _Check] = {}
    for record in state.tasks.values():
        for path, size in record.files.items():
            expected[path] = _Check(prefix + path, record.checksums.get(path), size)
    for name, checksum in state.indexes.items():
        expected[name] = _Check(prefix + name, checksum)
    if prefix + TASKS_JSON in listing:
        expected.setdefault(TASKS_JSON, _Check(prefix + TASKS_JSON, None))
        try:
            entries = json.loads(storage.read(prefix + TASKS_JSON))
        except ValueError:
            entries = None  # its checksum says it changed (or that none was recorded)
        except ObjectNotFoundError:
            entries = []
        for path in named_files(entries, state.images):
            key = normalize_key(path)
            if key is None or key not in expected:
                result.problems.append(Problem(NOT_RECORDED, prefix + path, f"{TASKS_JSON} names it"))
    return list(expected.values())


def named_files(entries: object, images: bool) -> Iterator[str]:
    """Every export file tasks.json names: segmentations, instance masks and, when
    `images`, the series' items; each once, in order."""
    seen: set[str] = set()
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        series_lists = [entry.get("series")]
        series_lists += [
            annotator.get("series") for annotator in entry.get("consensusTasks") or [] if isinstance(annotator, dict)
        ]
        if isinstance(entry.get("superTruth"), dict):
            series_lists.append(entry["superTruth"].get("series"))
        for series_list in series_lists:
            for series in series_list if isinstance(series_list, list) else []:
                if not isinstance(series, dict):
                    continue
                paths = _paths(series.get("segmentations"))
                segment_map = series.get("segmentMap")
                if isinstance(segment_map, dict):
                    paths += [
                        item["mask"] for item in segment_map.values() if isinstance(item, dict) and "mask" in item
                    ]
                if images:
                    paths += _paths(series.get("items"))
                for path in paths:
                    if isinstance(path, str) and path not in seen:
                        seen.add(path)
                        yield path


def _paths(value: object) -> list:
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, list) else []


def read_digest(storage: Storage, key: str) -> tuple[int, str] | Problem:
    try:
        return storage.digest(key)
    except ObjectNotFoundError:
        return Problem(MISSING, key)
    except TransientStorageError as error:
        return Problem(UNREADABLE, key, str(error).removeprefix(storage.url_of(key) + ": "))


def _cell(text: str) -> str:
    return shown(text).replace("|", "\\|")
