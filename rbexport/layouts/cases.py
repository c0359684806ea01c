"""Training cases (SPEC 6 "Cases") and the key that keeps related cases in one fold.

Without channels, every series with a segmentation is a case: named after the task's
folder when it is the task's only annotated series, else `<Task>_<Series>`. With
`channels = [NAME, ...]` a task is one case named after its folder: channel i is the
series named NAME_i, and the label is the segmentation of the task's one annotated series.
Series names are the export's (naming.series_names), so unnamed series answer to A, B, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import TaskDataError
from ..naming import deduplicate, safe_name


@dataclass(frozen=True)
class Case:
    """One training case: its identifier and which of its task's series it is made of."""

    case_id: str
    series_positions: tuple[int, ...]  # the series of each channel, in channel order
    label_position: int  # the series whose segmentation is the label


def task_cases(folder: str, series: Sequence[tuple[str, bool]], channels: Sequence[str] | None = None) -> list[Case]:
    """The cases of one task, from its folder name and its series as (name, has a segmentation).

    No channels (None or empty): one case per annotated series, possibly none. Channels:
    exactly one case; raises TaskDataError when a channel has no series or when not
    exactly one series has a segmentation.
    """
    if channels:
        return [Case(folder, channel_series([name for name, _ in series], channels), label_series(series))]
    annotated = [position for position, (_, has_segmentation) in enumerate(series) if has_segmentation]
    if len(annotated) == 1:
        return [Case(folder, (annotated[0],), annotated[0])]
    # Both parts are safe names; safe_name only shortens a name too long for a file.
    return [
        Case(safe_name(f"{folder}_{series[position][0]}") or folder, (position,), position) for position in annotated
    ]


def channel_series(series_names: Sequence[str], channels: Sequence[str]) -> tuple[int, ...]:
    """The position of the series named after each channel; TaskDataError naming any that is missing."""
    position_of: dict[str, int] = {}
    for position, name in enumerate(series_names):
        position_of.setdefault(name, position)
    missing = [channel for channel in channels if channel not in position_of]
    if missing:
        which = "channel" if len(missing) == 1 else "channels"
        raise TaskDataError(
            f"no series for {which} {_names(missing)} (the task's series: {_names(series_names) or 'none'})"
        )
    return tuple(position_of[channel] for channel in channels)


def label_series(series: Sequence[tuple[str, bool]]) -> int:
    """The position of the one series with a segmentation; TaskDataError when there is not exactly one."""
    annotated = [position for position, (_, has_segmentation) in enumerate(series) if has_segmentation]
    if len(annotated) != 1:
        found = _names(series[position][0] for position in annotated) if annotated else "none"
        raise TaskDataError(
            f"with channels, exactly one series must have a segmentation (the label); series with one: {found}"
        )
    return annotated[0]


def deduplicate_cases(cases: Sequence[Case], taken: set[str] | None = None) -> list[Case]:
    """The cases with unique ids: later repeats get `_1`, `_2`, ... (naming.deduplicate).

    Pass a run's cases in source order; `taken` holds ids used elsewhere and gains these.
    """
    unique_ids = deduplicate([case.case_id for case in cases], taken)
    return [
        case if case.case_id == case_id else replace(case, case_id=case_id)
        for case, case_id in zip(cases, unique_ids, strict=True)
    ]


def group_key(task: dict, group_by: str | None = None) -> str:
    """The fold group of a task's cases: its taskId, or the task field `group_by` names.

    `group_by` is a dotted path into the task, such as `metaData.patientId`. A task where
    that field is missing or null falls back to its own taskId, as `taskId=<id>` so that
    it never joins a group whose field value happens to equal that id.
    """
    task_id = str(task.get("taskId"))
    if not group_by:
        return task_id
    value: object = task
    for key in group_by.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return f"taskId={task_id}" if value is None else str(value)


def _names(names) -> str:
    return ", ".join(repr(name) for name in names)
