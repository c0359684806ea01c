"""Running an export from the command line, with a progress display: on the Prefect flow
(`run_flow`, on the ephemeral API or PREFECT_API_URL's server) or on the local engine
(`run_local`, which never imports Prefect). Both print the summary and return the reports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EPHEMERAL_START_SECONDS = 120


def run_local(request, workers: int | None = None, task_runner: str = "threads", batch_size: int | None = None):
    """The local engine with a progress display; print and return the reports. Never imports Prefect."""
    from rbexport import engine, progress

    workers = workers or engine.DEFAULT_WORKERS
    with progress.observing(_progress_display(f"{request.source} → {request.destination}")) as display:
        try:
            reports = engine.run_local(request, workers, task_runner, batch_size or 0)
        finally:
            display.close()
    _print_reports(reports)
    return reports


def run_flow(source, destination, options, title=None, workers=None, **parameters):
    """Run the export flow with a progress display; print and return the reports.

    Raises what the flow raises, except that a run with failed tasks returns its reports.
    """
    from flows.export import export_project
    from rbexport import progress
    from rbexport.errors import ExportIncomplete

    if workers:
        parameters["workers"] = workers
    parameters["allowed_buckets"] = list(parameters.get("allowed_buckets") or [])
    start_ephemeral_api()
    with progress.observing(_progress_display(title or f"{source} → {destination}")) as display:
        try:
            reports = export_project(source=source, destination=destination, options=options, **parameters)
        except ExportIncomplete as incomplete:
            reports = incomplete.report
        finally:
            display.close()
    _print_reports(reports)
    return reports


def _print_reports(reports) -> None:
    for report in reports:
        _print_report(report, prefix=f"{report.variant}: " if len(reports) > 1 else "")


def _print_report(report, prefix: str = "") -> None:
    from rbexport.report import REPORT_NAME

    print(f"{prefix}{report.summary()}")
    if report.warnings:
        print(f"{prefix}{len(report.warnings)} warning{'s' * (len(report.warnings) != 1)} (see the report)")
    for failure in report.failures:
        print(f"  failed {failure.line()}")
    print(f"{prefix}report: {report.destination.rstrip('/')}/{REPORT_NAME}")


def start_ephemeral_api() -> None:
    """Start Prefect's ephemeral API now, with its output in a log file, not on our terminal.

    Without PREFECT_API_URL, Prefect starts a temporary API server as a child process that
    shares our stdout and stderr; its shutdown can print CancelledError tracebacks. Started
    here with both streams pointed at PREFECT_HOME/rbexport-api.log, the child keeps that
    file, and the flow finds this server already running.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return
    log_path = Path(PREFECT_HOME.value()) / "rbexport-api.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            # Prefect's default of 20 s is too short on a busy 2-core machine (seen: 30 s).
            SubprocessASGIServer().start(
                timeout=max(EPHEMERAL_START_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
            )
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _PlainProgress:
    """Lines for logs and pipes: failures as they happen, and a line every 10%."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.total = 0
        self.done = 0
        self.failed = 0
        self.next_line = 0

    def started(self, total: int, skipped: int) -> None:
        self.total = total
        unchanged = f" ({skipped} unchanged, skipped)" if skipped else ""
        _say(f"exporting {total} tasks{unchanged}: {self.title}")

    def task_done(self, task_id: str, error: str | None) -> None:
        self.done += 1
        if error:
            self.failed += 1
            _say(f"[{self.done}/{self.total}] {task_id} failed: {error}")
        if self.done * 10 >= self.next_line * self.total and self.done:
            _say(f"[{self.done}/{self.total}] {self.done - self.failed} exported, {self.failed} failed")
            self.next_line = self.done * 10 // max(self.total, 1) + 1

    def close(self) -> None:
        pass


class _BarProgress(_PlainProgress):
    """A progress bar on a terminal; failures printed above it."""

    def __init__(self, title: str) -> None:
        super().__init__(title)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]exporting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task: TaskID | None = None

    def started(self, total: int, skipped: int) -> None:
        self.total = total
        unchanged = f" ({skipped} unchanged, skipped)" if skipped else ""
        self.bar.console.print(f"exporting {total} tasks{unchanged}: {self.title}", highlight=False)
        self.task = self.bar.add_task("export", total=total)
        self.bar.start()

    def task_done(self, task_id: str, error: str | None) -> None:
        if error:
            from rich.text import Text

            self.bar.console.print(Text.assemble(("failed ", "red"), f"{task_id}: {error}"))
        if self.task is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        self.bar.stop()


def _progress_display(title: str) -> _PlainProgress:
    return _BarProgress(title) if sys.stderr.isatty() else _PlainProgress(title)


def _say(message: str) -> None:
    print(f"rbexport: {message}", file=sys.stderr)
