"""Reading releases (SPEC 9): whether a location is one, its manifest, its check, two compared, an export's list.

`verify_release` checks every file of a release against its release.json (there, its
size, its checksum) and that no other file is there; `diff_releases` gives the tasks
added, removed and changed between two releases by their files' checksums. A run never
writes into a release (`refuse_release_destination`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import ConfigurationError
from .export_tree import PARTIAL_KEY, RELEASE_JSON
from .incremental import export_roots
from .release_manifest import Release, ReleaseRecord, list_releases_of
from .storage import Location, S3Access, open_storage
from .verify import CHANGED, MISSING, NOT_RECORDED, Problem, VerifyResult, read_digest


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


def is_release(url: str, access: S3Access | str | None = None) -> bool:
    storage = open_storage(Location.parse(url), access)
    return storage.exists(RELEASE_JSON) or storage.exists(PARTIAL_KEY)


def read_release(release_url: str, access: S3Access | str | None = None) -> Release:
    released = open_storage(Location.parse(release_url), access)
    released.check_reachable()
    if not released.exists(RELEASE_JSON):
        unfinished = " (an unfinished one: run its release create again)" if released.exists(PARTIAL_KEY) else ""
        raise ConfigurationError(f"no release at {released.url}: no {RELEASE_JSON} there{unfinished}")
    return Release.parse(released.read(RELEASE_JSON), released.url)


def list_releases(export_url: str, access: S3Access | str | None = None) -> list[ReleaseRecord]:
    exported = open_storage(Location.parse(export_url), access)
    exported.check_reachable()
    if not export_roots(info.key for info in exported.list()):
        raise ConfigurationError(f"no export at {exported.url}")
    return list_releases_of(exported)


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


@dataclass
class ReleaseDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{kind} {task}" for kind in ("added", "removed", "changed") for task in getattr(self, kind)]


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
