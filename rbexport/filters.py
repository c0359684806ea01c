"""Which tasks an export holds (SPEC 8): filters on the RedBrick export format's task fields.

A `TaskFilter` is decided once (from the CLI's flags or the flow's form) and passed whole in
the request. Several filters keep the tasks that match all of them; a field a task lacks
never matches. Filtering is pure: task dicts in, the kept ones out.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ConfigurationError

# The SDK's ground truth: tasks that went through every stage.
GROUND_TRUTH_STAGE = "END"
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (`2026-03-01T12:00:00Z`, `2026-03-01T12:00+01:00`); a date alone is
    midnight UTC; a time without a zone is UTC. ConfigurationError when it is not one."""
    value = text.strip()
    try:
        if _DATE_ONLY.match(value):
            return datetime.combine(date.fromisoformat(value), time(0), UTC)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ConfigurationError(
            f"--since {text!r} is not a time: give ISO 8601, such as 2026-03-01 or 2026-03-01T12:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _task_time(value: object) -> datetime | None:
    """A task's `updatedAt`, or None when it is missing or not a time (it then never matches)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ConfigurationError:
        return None


class TaskFilter(BaseModel):
    """Which tasks of the source an export holds, and whether it writes masks (SPEC 8)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: tuple[str, ...] = Field(
        (),
        description="Keep the tasks whose currentStageName is one of these (such as Label, Review_1). "
        "Empty: every stage.",
    )
    ground_truth: bool = Field(
        False, description="Keep only the ground truth: tasks whose currentStageName is END (as the SDK's)."
    )
    task_ids: tuple[str, ...] = Field((), description="Keep only the tasks with these taskIds. Empty: every task.")
    updated_since: datetime | None = Field(
        None,
        description="Keep the tasks whose updatedAt is at or after this time (ISO 8601; a date alone is "
        "midnight UTC). None: any time.",
    )
    without_masks: bool = Field(
        False, description="Write tasks.json and the report only, no mask file (the SDK's --without-masks)."
    )

    @field_validator("stages", "task_ids", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """`Label,Review_1` (a form field, an environment variable) is two names; blanks are none."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            value = tuple(part.strip() for part in value if isinstance(part, str) and part.strip())
        return value

    @field_validator("updated_since", mode="before")
    @classmethod
    def _parse_since(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_time(value) if value.strip() else None
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def selects(self) -> bool:
        """Whether any task can be left out."""
        return bool(self.stages or self.ground_truth or self.task_ids or self.updated_since)

    def keeps(self, task: object) -> bool:
        """Whether the export holds this task. A task that is not an object is kept (it fails
        as it would without filters)."""
        if not isinstance(task, dict):
            return True
        stage = task.get("currentStageName")
        if self.stages and stage not in self.stages:
            return False
        if self.ground_truth and stage != GROUND_TRUTH_STAGE:
            return False
        if self.task_ids and task.get("taskId") not in self.task_ids:
            return False
        if self.updated_since is not None:
            updated = _task_time(task.get("updatedAt"))
            if updated is None or updated < self.updated_since:
                return False
        return True

    def describe(self) -> dict:
        """The filters as the report and release.json record them (only those set)."""
        body = self.model_dump(mode="json", exclude_defaults=True)
        return body


def without_masks_entry(task: dict) -> dict:
    """A task's tasks.json entry when no mask is written: the task as the source has it, but
    no series names a segmentation file (there is none in the export)."""
    entry = dict(task)
    entry["series"] = _without_segmentations(task.get("series"))
    if isinstance(task.get("consensusTasks"), list):
        entry["consensusTasks"] = [
            {**item, "series": _without_segmentations(item.get("series"))} if isinstance(item, dict) else item
            for item in task["consensusTasks"]
        ]
    if isinstance(task.get("superTruth"), dict):
        entry["superTruth"] = {**task["superTruth"], "series": _without_segmentations(task["superTruth"].get("series"))}
    if entry["series"] is None:
        del entry["series"]
    return entry


def _without_segmentations(series_list: object) -> object:
    if not isinstance(series_list, list):
        return series_list
    return [
        {name: value for name, value in series.items() if name != "segmentations"}
        if isinstance(series, dict)
        else series
        for series in series_list
    ]
