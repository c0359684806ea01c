"""Progress of a run as tasks finish, for whoever is watching (the CLI's bar, or nobody).

The flow reports to the current observer; the CLI installs one before it runs the flow.
Deployments run with the silent default and rely on Prefect's logs and artifacts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar


class ProgressObserver(Protocol):
    def started(self, total: int, skipped: int) -> None:
        """`total` tasks to export; `skipped` unchanged since the last export, not exported."""

    def task_done(self, task_id: str, error: str | None) -> None:
        """One task finished: exported (`error` None) or failed (`error`: file and reason, one line)."""

    def notice(self, message: str) -> None:
        """Something the watcher should know meanwhile (waiting for the destination, ...)."""


class _Silent:
    def started(self, total: int, skipped: int) -> None:
        pass

    def task_done(self, task_id: str, error: str | None) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


_current: ProgressObserver = _Silent()


def current() -> ProgressObserver:
    return _current


Observer = TypeVar("Observer", bound=ProgressObserver)


@contextmanager
def observing(observer: Observer) -> Iterator[Observer]:
    global _current
    previous, _current = _current, observer
    try:
        yield observer
    finally:
        _current = previous
