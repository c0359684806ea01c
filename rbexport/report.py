"""The run report (SPEC 4): `export-report.json` beside the export, and its markdown summary."""

from __future__ import annotations

import builtins
import hashlib
import json
from dataclasses import asdict, dataclass, field

from .display import shown
from .export_tree import REPORT_JSON
from .storage.location import join_url


@dataclass(frozen=True)
class FileRecord:
    path: str
    bytes: int
    sha256: str | None  # None for an image the store copied itself and gave no SHA-256 of
    etag: str | None = None  # such a copy's ETag (in the report only when set)

    @classmethod
    def of(cls, path: str, data: builtins.bytes) -> FileRecord:
        return cls(path, len(data), hashlib.sha256(data).hexdigest())

    @property
    def checksum(self) -> str | None:
        """What the state records to verify the file by: `sha256:<hex>`, else `etag:<ETag>`."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"etag:{self.etag}" if self.etag else None


@dataclass(frozen=True)
class Failure:
    taskId: str | None
    file: str | None
    reason: str

    @property
    def detail(self) -> str:
        """The file and the reason: `masks/a.nii.gz: mask file not found`."""
        return f"{self.file}: {self.reason}" if self.file else self.reason

    def line(self) -> str:
        return f"{self.taskId or '(no taskId)'}: {self.detail}"


@dataclass(frozen=True)
class Notice:
    """A warning: reported, never fatal."""

    taskId: str | None
    file: str | None
    message: str


@dataclass
class RunReport:
    source: str
    destination: str
    options: dict
    variant: str = "export"
    exported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    filtered: list[str] = field(default_factory=list)  # source tasks the filters left out (SPEC 8)
    filters: dict = field(default_factory=dict)  # the filters set (SPEC 8); none: every task
    failed: list[str | None] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Notice] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)  # written by this run
    pruned: list[str] = field(default_factory=list)  # deleted by this run (prune)
    dataset: dict | None = None  # a dataset layout's cases per fold and voxels per label (SPEC 6)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Where the report is written: REPORT_JSON at the variant's export root."""
        return join_url(self.destination, REPORT_JSON)

    @property
    def bytes_written(self) -> int:
        return sum(record.bytes for record in self.files)

    @property
    def succeeded(self) -> bool:
        return not self.failures

    def to_json(self) -> bytes:
        body = asdict(self)
        for record in body["files"]:
            if record.get("etag") is None:
                del record["etag"]
        body["seconds"] = round(self.seconds, 3)
        body["timings"] = {name: round(value, 3) for name, value in self.timings.items()}
        # Text from the input that is not Unicode (a lone surrogate) is kept as an escape.
        return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")

    def summary(self) -> str:
        """One line: what happened."""
        tasks = f"{len(self.exported)} task{'s' * (len(self.exported) != 1)} exported"
        parts = [tasks, f"{len(self.skipped)} skipped as unchanged"] if self.skipped else [tasks]
        if self.filtered:
            parts.append(f"{len(self.filtered)} filtered out")
        parts.append(f"{len(self.failures)} failed")
        pruned = f", {len(self.pruned)} pruned" if self.pruned else ""
        return (
            f"{', '.join(parts)}; {len(self.files)} files, {human_bytes(self.bytes_written)} written{pruned} "
            f"in {self.seconds:.1f} s"
        )

    def to_markdown(self, limit: int = 50) -> str:
        status = "completed" if self.succeeded else f"**{len(self.failures)} task(s) failed**"
        variant = f" `{self.variant}`" if self.variant != "export" else ""
        lines = [
            f"# Export{variant} {status}",
            "",
            f"{_code(self.source)} → {_code(self.destination)}",
            "",
            "| tasks exported | skipped (unchanged) | failed | warnings | files written | bytes | pruned | seconds |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(self.exported)} | {len(self.skipped)} | {len(self.failures)} | {len(self.warnings)} "
            f"| {len(self.files)} | {human_bytes(self.bytes_written)} | {len(self.pruned)} | {self.seconds:.1f} |",
            "",
            "Options: " + ", ".join(f"`{name}={json.dumps(value)}`" for name, value in self.options.items()),
        ]
        if self.filters:
            lines += [
                "",
                "Filters: "
                + ", ".join(f"`{name}={json.dumps(value)}`" for name, value in self.filters.items())
                + f"; {len(self.filtered)} task(s) filtered out",
            ]
        lines += self.dataset_markdown()
        lines += _table("Failures", "reason", [(item.taskId, item.file, item.reason) for item in self.failures], limit)
        lines += _table(
            "Warnings", "warning", [(item.taskId, item.file, item.message) for item in self.warnings], limit
        )
        return "\n".join(lines) + "\n"

    def dataset_rows(self) -> list[dict]:
        """The class balance of a dataset layout, a row per label: its voxels and share."""
        if not self.dataset:
            return []
        voxels = self.dataset["voxels_per_label"]
        total = sum(voxels.values()) or 1
        return [
            {"label": value, "name": name, "voxels": count, "share": f"{100 * count / total:.3f} %"}
            for value, (name, count) in enumerate(voxels.items())
        ]

    def dataset_markdown(self) -> list[str]:
        if not self.dataset:
            return []
        folds = self.dataset["cases_per_fold"]
        channels = ", ".join(f"{channel}: {modality}" for channel, modality in self.dataset["channels"].items())
        lines = [
            "",
            f"## Dataset ({self.dataset['layout']}): {self.dataset['cases']} cases; channels {channels or 'none'}",
            "",
            "| fold | " + " | ".join(folds) + " |",
            "|---|" + "---:|" * len(folds),
            "| cases | " + " | ".join(str(count) for count in folds.values()) + " |",
            "",
            "| label | name | voxels | share |",
            "|---:|---|---:|---:|",
        ]
        lines += [
            f"| {row['label']} | {_cell(row['name'])} | {row['voxels']} | {row['share']} |"
            for row in self.dataset_rows()
        ]
        return lines


def _table(title: str, what: str, rows: list[tuple], limit: int) -> list[str]:
    if not rows:
        return []
    lines = ["", f"## {title}", "", f"| task | file | {what} |", "|---|---|---|"]
    lines += [f"| {' | '.join(_cell(value) for value in row)} |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more in `{REPORT_JSON}`.")
    return lines


def human_bytes(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _code(text: str) -> str:
    """Markdown code for a location: control characters escaped, no backtick to end it early."""
    return "`" + shown(text).replace("`", "'") + "`"


def _cell(text: str | None) -> str:
    """A markdown table cell: control characters escaped (rbexport.display), `|` too."""
    return "" if text is None else shown(text).replace("|", "\\|")
