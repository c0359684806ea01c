"""What a release is on the store (SPEC 9): its release.json, and the export's list of its releases.

`release.json` (RELEASE_JSON, in the release, written last) holds the name, the time, the
export's URL, its options and filters, rbexport's version, the task count and every file
with its size and checksum (`Release`, `ReleaseFile`). `.rbexport/release-partial.json`
(PARTIAL_KEY) marks an unfinished release; `.rbexport/releases.json` (RELEASES_KEY, in the
export) lists the releases made from it (`ReleaseRecord`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import ConfigurationError
from .export_tree import RELEASE_JSON, RELEASES_KEY
from .storage import Storage

RELEASE_FORMAT = 1


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


def record_release(exported: Storage, record: ReleaseRecord) -> None:
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
