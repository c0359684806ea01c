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

Here, making a release; what release.json holds is rbexport.release_manifest's, reading,
verifying, comparing and listing releases rbexport.release_reading's (all named here).
The core never imports Prefect; flows/release.py wraps it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version

from .errors import ConfigurationError, ObjectNotFoundError
from .export_tree import PARTIAL_KEY, RELEASE_JSON, REPORT_JSON, STATE_KEY, TASKS_JSON
from .incremental import ExportState, export_roots
from .lease import WAIT_SECONDS, DestinationLease
from .naming import safe_name

# Reading releases (rbexport.release_reading) and their manifest: the names imported `as`
# themselves are named here too, the releases API being this module.
from .release_manifest import RELEASES_KEY as RELEASES_KEY
from .release_manifest import Release, ReleaseFile, ReleaseRecord, record_release
from .release_manifest import list_releases_of as list_releases_of
from .release_reading import ReleaseDiff as ReleaseDiff
from .release_reading import diff_releases as diff_releases
from .release_reading import is_release as is_release
from .release_reading import list_releases as list_releases
from .release_reading import read_release as read_release
from .release_reading import refuse_release_destination as refuse_release_destination
from .release_reading import verify_release as verify_release
from .storage import Location, ObjectInfo, S3Access, S3Storage, Storage, open_storage

# Copies asked of the store at once (each is one request the store serves by itself).
COPY_THREADS = 16

Hold = Callable[[DestinationLease], AbstractContextManager]


def check_release_name(name: str) -> str:
    if not name or safe_name(name) != name or name in {".", ".."}:
        raise ConfigurationError(
            f"release name {name!r} is not a safe name: use letters, digits and _ . - (no slashes, "
            "no trailing dot or space)"
        )
    return name


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
        record_release(exported, ReleaseRecord(name, released.url, release.created, release.tasks))
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
        if prefix + REPORT_JSON in listing:
            try:
                report = json.loads(exported.read(prefix + REPORT_JSON))
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
