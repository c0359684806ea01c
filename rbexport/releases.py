"""Releases (SPEC 9): named, immutable copies of an export, with a manifest.

`create_release(EXPORT, RELEASE)` copies, under the export's one-writer lease, every file
the export's states record (each variant folder's, or the one at its root), its tasks.json
and indexes (dataset.json, splits, class_map.json), to RELEASE, an empty location, keeping
their relative paths; then writes `release.json` last: the name, the time, the export's
URL, its options and filters, rbexport's version, the task count and every file with its
size and checksum (from the export's state). S3 to S3 on one endpoint the store copies
(CopyObject, several at once): no mask or image byte passes through this process.

While copying, `.rbexport/release-partial.json` in RELEASE says what is being made; a
location holding it is an unfinished release: the same command run again finishes it
(copying what is missing or different), any other is refused, naming it. A location with
release.json is a release: never written again (`release create` into it, or a run with it
as destination, stops with a ConfigurationError). The releases made from an export are
listed in the export's `.rbexport/releases.json`.

The core never imports Prefect; flows/release.py wraps it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version

from .errors import ConfigurationError, ObjectNotFoundError
from .incremental import STATE_KEY, TASKS_JSON, ExportState, export_roots
from .lease import WAIT_SECONDS, DestinationLease
from .naming import safe_name
from .report import REPORT_NAME
from .storage import Location, ObjectInfo, S3Access, S3Storage, Storage, open_storage
from .verify import CHANGED, MISSING, NOT_RECORDED, Problem, VerifyResult, read_digest

RELEASE_JSON = "release.json"
PARTIAL_KEY = ".rbexport/release-partial.json"
RELEASES_KEY = ".rbexport/releases.json"  # in the export: the releases made from it
RELEASE_FORMAT = 1
# Copies asked of the store at once (each is one request the store serves by itself).
COPY_THREADS = 16

Hold = Callable[[DestinationLease], AbstractContextManager]


@dataclass(frozen=True)
class ReleaseFile:
    path: str  # relative to the release (and to the export)
    bytes: int
    checksum: str  # "sha256:<hex>", or "etag:<ETag>" for an image the store copied itself
    task: str | None = None  # the task whose file it is; None for tasks.json and the indexes

    def to_json(self) -> dict:
        kind, _, value = self.checksum.partition(":")
        body: dict = {"path": self.path, "bytes": self.bytes, kind: value}
        if self.task is not None:
            body["task"] = self.task
        return body

    @classmethod
    def parse(cls, body: object) -> ReleaseFile:
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("path"), str)
            or not isinstance(body.get("bytes"), int)
        ):
            raise ValueError("a file entry needs a path and its bytes")
        kind = "sha256" if isinstance(body.get("sha256"), str) else "etag" if isinstance(body.get("etag"), str) else ""
        if not kind:
            raise ValueError(f"{body['path']}: no sha256 nor etag")
        task = body.get("task")
        return cls(body["path"], body["bytes"], f"{kind}:{body[kind]}", task if isinstance(task, str) else None)


@dataclass
class Release:
    """What release.json holds."""

    name: str
    created: str  # UTC, ISO 8601
    export: str
    rbexport_version: str
    tasks: int
    exports: dict[str, dict]  # per export root ("" or a variant folder): its options and filters
    files: list[ReleaseFile]
    retain_until: str | None = None
    url: str = ""  # where the release is (not stored in release.json)
    copied: int = 0  # files copied by this command (the rest were there from an interrupted one)
    seconds: float = 0.0

    def to_json(self) -> bytes:
        body = {
            "format": RELEASE_FORMAT,
            "name": self.name,
            "created": self.created,
            "export": self.export,
            "rbexport_version": self.rbexport_version,
            "tasks": self.tasks,
            "retain_until": self.retain_until,
            "exports": self.exports,
            "files": [item.to_json() for item in self.files],
        }
        return (json.dumps(body, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, url: str) -> Release:
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.get("format") != RELEASE_FORMAT:
                raise ValueError(f"format {body.get('format') if isinstance(body, dict) else None!r}")
            return cls(
                str(body["name"]),
                str(body["created"]),
                str(body["export"]),
                str(body.get("rbexport_version", "")),
                int(body["tasks"]),
                dict(body.get("exports") or {}),
                [ReleaseFile.parse(item) for item in body["files"]],
                body.get("retain_until"),
                url,
            )
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise ConfigurationError(
                f"{url}/{RELEASE_JSON} is not a release manifest this version reads ({error})"
            ) from None

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.files)

    def summary(self) -> str:
        from .report import human_bytes

        kept = f", retained until {self.retain_until}" if self.retain_until else ""
        return (
            f"release {self.name} of {self.export}: {self.tasks} tasks, {len(self.files)} files, "
            f"{human_bytes(self.bytes)} at {self.url} ({self.copied} copied in {self.seconds:.1f} s{kept})"
        )

    def to_markdown(self) -> str:
        lines = [
            f"# Release `{self.name}`",
            "",
            f"`{self.export}` → `{self.url}`",
            "",
            "| tasks | files | bytes | created | retained until |",
            "|---:|---:|---:|---|---|",
            f"| {self.tasks} | {len(self.files)} | {self.bytes} | {self.created} | {self.retain_until or '-'} |",
        ]
        for root, described in self.exports.items():
            lines += ["", f"`{root or '.'}`: options `{json.dumps(described.get('options'))}`, "
                      f"filters `{json.dumps(described.get('filters'))}`"]  # fmt: skip
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReleaseRecord:
    """One release in the export's list."""

    name: str
    url: str
    created: str
    tasks: int


@dataclass
class ReleaseDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{kind} {task}" for kind in ("added", "removed", "changed") for task in getattr(self, kind)]


def check_release_name(name: str) -> str:
    if not name or safe_name(name) != name or name in {".", ".."}:
        raise ConfigurationError(
            f"release name {name!r} is not a safe name: use letters, digits and _ . - (no slashes, "
            "no trailing dot or space)"
        )
    return name


def refuse_release_destination(location: Location, access: S3Access | str | None) -> None:
    """A run never writes into a release (nor into a variant folder of one)."""
    for place in (location, location.parent()):
        if place is None:
            continue
        storage = open_storage(place, access)
        if storage.exists(RELEASE_JSON) or storage.exists(PARTIAL_KEY):
            raise ConfigurationError(
                f"{location.url} is a release ({storage.url_of(RELEASE_JSON)}): releases are never written "
                "again; export somewhere else"
            )


def create_release(
    export_url: str,
    release_url: str,
    access: S3Access | str | None = None,
    name: str | None = None,
    retain_days: int | None = None,
    owner: str | None = None,
    notify: Callable[[str], None] | None = None,
    timeout: float = WAIT_SECONDS,
    hold: Hold | None = None,
) -> Release:
    """Copy the export at `export_url` to `release_url` (empty, or an unfinished release of
    the same command) and write its release.json. `hold`: how to hold the export's lease
    (default: the lease alone; the flow adds Prefect's concurrency slot)."""
    started = time.perf_counter()
    export_location, release_location = Location.parse(export_url), Location.parse(release_url)
    if export_location.contains(release_location) or release_location.contains(export_location):
        raise ConfigurationError(
            f"the release {release_location.url} and the export {export_location.url} overlap: a release goes "
            "outside its export (later runs and --prune would otherwise see its files)"
        )
    name = check_release_name(name if name is not None else _last_part(release_location))
    if retain_days is not None and retain_days < 1:
        raise ConfigurationError(f"--retain-days {retain_days}: give 1 or more days")
    exported, released = open_storage(export_location, access), open_storage(release_location, access)
    exported.check_reachable()
    released.check_reachable()
    resuming = _check_empty(released, export_location.url, name)
    if retain_days is not None:
        _check_object_lock(released)
    lease = DestinationLease(exported, owner, notify)
    with hold(lease) if hold else lease.held(timeout):
        listing = {info.key: info for info in exported.list()}
        roots = export_roots(listing)
        if not roots:
            raise ConfigurationError(
                f"no export at {export_location.url}: neither {TASKS_JSON} nor {STATE_KEY} there, nor in a variant folder"
            )
        files, exports, task_ids = _export_files(exported, roots, listing)
        if not resuming:
            marker = {"export": export_location.url, "name": name, "started": _now()}
            released.write(PARTIAL_KEY, (json.dumps(marker, indent=1) + "\n").encode("utf-8"))
        until = datetime.now(UTC) + timedelta(days=retain_days) if retain_days else None
        present = {info.key: info for info in released.list()} if resuming else {}
        copied = _copy_all(exported, released, files, listing, present, until)
        for key in sorted(set(present) - {item.path for item in files} - {PARTIAL_KEY, RELEASE_JSON}):
            released.delete(key)  # left by the interrupted copy of an earlier state of the export
        release = Release(
            name,
            _now(),
            export_location.url,
            _version(),
            len(task_ids),
            exports,
            files,
            until.isoformat(timespec="seconds") if until else None,
            released.url,
            copied,
        )
        manifest = release.to_json()
        released.write(RELEASE_JSON, manifest)
        if until:
            released.retain(RELEASE_JSON, until)  # type: ignore[attr-defined]
        released.delete(PARTIAL_KEY)
        _record(exported, ReleaseRecord(name, released.url, release.created, release.tasks))
    release.seconds = time.perf_counter() - started
    return release


def _last_part(location: Location) -> str:
    return (location.path.rstrip("/").rsplit("/", 1)[-1] if location.path else location.bucket) or location.bucket


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _version() -> str:
    try:
        return version("rbexport")
    except PackageNotFoundError:
        return "unknown"


def _check_empty(released: Storage, export_url: str, name: str) -> bool:
    """Whether `released` holds an unfinished release of this export and name (then resume);
    ConfigurationError when it holds anything else."""
    keys = [info.key for info in released.list()]
    if not keys:
        return False
    if RELEASE_JSON in keys:
        raise ConfigurationError(
            f"{released.url} is already a release ({RELEASE_JSON} is there): releases are never written again; "
            "choose an empty location"
        )
    if PARTIAL_KEY in keys:
        try:
            marker = json.loads(released.read(PARTIAL_KEY))
            same = marker.get("export") == export_url and marker.get("name") == name
            what = f"of {marker.get('export')} named {marker.get('name')!r}"
        except (ValueError, AttributeError):
            same, what = False, "(its marker is unreadable)"
        if same:
            return True
        raise ConfigurationError(
            f"{released.url} holds an unfinished release {what}: run that command again to finish it, "
            f"or delete {released.url} (all {len(keys)} objects) first"
        )
    raise ConfigurationError(
        f"{released.url} is not empty ({len(keys)} object{'s' * (len(keys) != 1)}, such as {sorted(keys)[0]}): "
        "a release goes into an empty location"
    )


def _check_object_lock(released: Storage) -> None:
    if not isinstance(released, S3Storage):
        raise ConfigurationError(f"--retain-days needs S3 Object Lock: {released.url} is a folder")
    if not released.object_lock_enabled():
        raise ConfigurationError(
            f"--retain-days: bucket {released.bucket!r} has no S3 Object Lock (it is switched on when a bucket is "
            "created, e.g. aws s3api create-bucket --object-lock-enabled-for-bucket); nothing was copied"
        )


def _export_files(
    exported: Storage, roots: list[str], listing: dict[str, ObjectInfo]
) -> tuple[list[ReleaseFile], dict[str, dict], set[str]]:
    """Every file of the export with its recorded size and checksum, checked against what is there."""
    files: list[ReleaseFile] = []
    exports: dict[str, dict] = {}
    task_ids: set[str] = set()
    for root in roots:
        prefix = f"{root}/" if root else ""
        try:
            state = ExportState.parse(exported.read(prefix + STATE_KEY))
        except (ValueError, ObjectNotFoundError) as error:
            raise ConfigurationError(
                f"{exported.url_of(prefix + STATE_KEY)}: the export's state is missing or unreadable ({error}); "
                "run the export again"
            ) from None
        for task_id, record in state.tasks.items():
            for path, size in sorted(record.files.items()):
                files.append(_checked(exported, prefix + path, size, record.checksums.get(path), listing, task_id))
        for index, checksum in sorted(state.indexes.items()):
            if prefix + index in listing:
                files.append(_checked(exported, prefix + index, listing[prefix + index].size, checksum, listing))
        if prefix + TASKS_JSON in listing:
            entries = json.loads(exported.read(prefix + TASKS_JSON))
            task_ids |= {str(entry.get("taskId")) for entry in entries if isinstance(entry, dict)}
        else:
            task_ids |= set(state.tasks)
        described: dict = {}
        if prefix + REPORT_NAME in listing:
            try:
                report = json.loads(exported.read(prefix + REPORT_NAME))
                described = {"options": report.get("options"), "filters": report.get("filters", {})}
            except (ValueError, AttributeError):
                described = {}
        exports[root] = described
    return files, exports, task_ids


def _checked(
    exported: Storage,
    key: str,
    size: int,
    checksum: str | None,
    listing: dict[str, ObjectInfo],
    task: str | None = None,
) -> ReleaseFile:
    info = listing.get(key)
    if checksum is None:
        raise ConfigurationError(f"{exported.url_of(key)} has no recorded checksum: run the export again first")
    if info is None or info.size != size:
        found = "missing" if info is None else f"{info.size} bytes, the export wrote {size}"
        raise ConfigurationError(
            f"the export is not as its state records it: {exported.url_of(key)} is {found} "
            "(rbexport verify lists every such file); nothing was released"
        )
    return ReleaseFile(key, size, checksum, task)


def _copy_all(
    exported: Storage,
    released: Storage,
    files: list[ReleaseFile],
    listing: dict[str, ObjectInfo],
    present: dict[str, ObjectInfo],
    until: datetime | None,
) -> int:
    """Copy every file (but those an interrupted run already copied), several at once."""

    def copy(item: ReleaseFile) -> int:
        there = present.get(item.path)
        if there is not None and there.size == item.bytes:
            # Copied by the interrupted run: S3 copies keep the ETag; a folder's file is hashed again.
            if there.etag == listing[item.path].etag or (
                not isinstance(released, S3Storage) and item.checksum == f"sha256:{released.digest(item.path)[1]}"
            ):
                return 0
        copied = released.copy_from(exported, item.path, item.path, item.bytes)
        if copied.bytes != item.bytes or (
            copied.sha256 and item.checksum.startswith("sha256:") and f"sha256:{copied.sha256}" != item.checksum
        ):
            raise ConfigurationError(
                f"{exported.url_of(item.path)} changed: its copy is not the file the export recorded "
                "(rbexport verify the export); the release is unfinished"
            )
        if until is not None:
            released.retain(item.path, until)  # type: ignore[attr-defined]
        return 1

    with ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="rbexport-release") as pool:
        return sum(pool.map(copy, files))


def _record(exported: Storage, record: ReleaseRecord) -> None:
    records = [asdict(item) for item in list_releases_of(exported) if item.url != record.url]
    records.append(asdict(record))
    exported.write(RELEASES_KEY, (json.dumps(records, indent=1) + "\n").encode("utf-8"))


def list_releases_of(exported: Storage) -> list[ReleaseRecord]:
    if not exported.exists(RELEASES_KEY):
        return []
    try:
        body = json.loads(exported.read(RELEASES_KEY))
        return [ReleaseRecord(str(i["name"]), str(i["url"]), str(i["created"]), int(i["tasks"])) for i in body]
    except (ValueError, TypeError, KeyError):
        raise ConfigurationError(f"{exported.url_of(RELEASES_KEY)} is not a list of releases") from None


def list_releases(export_url: str, access: S3Access | str | None = None) -> list[ReleaseRecord]:
    exported = open_storage(Location.parse(export_url), access)
    exported.check_reachable()
    if not export_roots(info.key for info in exported.list()):
        raise ConfigurationError(f"no export at {exported.url}")
    return list_releases_of(exported)


def read_release(release_url: str, access: S3Access | str | None = None) -> Release:
    released = open_storage(Location.parse(release_url), access)
    released.check_reachable()
    if not released.exists(RELEASE_JSON):
        unfinished = " (an unfinished one: run its release create again)" if released.exists(PARTIAL_KEY) else ""
        raise ConfigurationError(f"no release at {released.url}: no {RELEASE_JSON} there{unfinished}")
    return Release.parse(released.read(RELEASE_JSON), released.url)


def is_release(url: str, access: S3Access | str | None = None) -> bool:
    storage = open_storage(Location.parse(url), access)
    return storage.exists(RELEASE_JSON) or storage.exists(PARTIAL_KEY)


def verify_release(release_url: str, access: S3Access | str | None = None) -> VerifyResult:
    """Every file of the release against release.json: there, its size, its checksum; and no other file."""
    started = time.perf_counter()
    release = read_release(release_url, access)
    released = open_storage(Location.parse(release_url), access)
    listing = {info.key: info for info in released.list()}
    result = VerifyResult(released.url, [""])
    to_read = []
    for item in release.files:
        info = listing.get(item.path)
        if info is None:
            result.problems.append(Problem(MISSING, item.path))
        elif info.size != item.bytes:
            result.problems.append(Problem(CHANGED, item.path, f"{info.size} bytes, the release holds {item.bytes}"))
        elif item.checksum.startswith("etag:"):
            if info.etag != item.checksum.removeprefix("etag:"):
                result.problems.append(Problem(CHANGED, item.path, "its ETag is not the one the copy had"))
        else:
            to_read.append(item)
    known = {item.path for item in release.files} | {RELEASE_JSON}
    result.problems += [
        Problem(NOT_RECORDED, key, f"{RELEASE_JSON} does not list it") for key in listing if key not in known
    ]
    result.checked = len(release.files)
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="rbexport-verify") as pool:
        for item, outcome in zip(
            to_read, pool.map(lambda item: read_digest(released, item.path), to_read), strict=True
        ):
            if isinstance(outcome, Problem):
                result.problems.append(outcome)
                continue
            result.bytes_read += outcome[0]
            if f"sha256:{outcome[1]}" != item.checksum:
                result.problems.append(Problem(CHANGED, item.path, "sha256 differs from the one in release.json"))
    result.problems.sort(key=lambda problem: problem.path)
    result.seconds = time.perf_counter() - started
    return result


def diff_releases(a_url: str, b_url: str, access: S3Access | str | None = None) -> ReleaseDiff:
    """The tasks added, removed and changed from release A to release B, by their files' checksums."""
    a, b = _task_files(read_release(a_url, access)), _task_files(read_release(b_url, access))
    return ReleaseDiff(
        [task for task in b if task not in a],
        [task for task in a if task not in b],
        [task for task in a if task in b and a[task] != b[task]],
    )


def _task_files(release: Release) -> dict[str, dict[str, str]]:
    tasks: dict[str, dict[str, str]] = {}
    for item in release.files:
        if item.task is not None:
            tasks.setdefault(item.task, {})[item.path] = item.checksum
    return tasks
