"""Running an export from the command line, with a progress display: on the Prefect flow
(`run_flow`, on the ephemeral API or PREFECT_API_URL's server) or on the local engine
(`run_local`, which never imports Prefect). Both print the summary and return the reports.
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager
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
    from contextlib import ExitStack

    from rbexport import progress
    from rbexport.errors import ExportIncomplete

    with ExitStack() as stack:
        api = EphemeralAPI.if_needed()
        if api is not None:
            # At exit, after Prefect's log and event workers (registered later, run
            # earlier) have sent what they hold to it.
            atexit.register(api.stop)
        from rbexport.flows.export import export_project  # while the ephemeral API starts

        _heartbeats_stop_without_waiting()

        if api is not None:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            api.wait_ready()
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api.url}))
        if workers:
            parameters["workers"] = workers
        parameters["allowed_buckets"] = list(parameters.get("allowed_buckets") or [])
        with progress.observing(_progress_display(title or f"{source} → {destination}")) as display:
            try:
                reports = export_project(source=source, destination=destination, options=options, **parameters)
            except ExportIncomplete as incomplete:
                reports = incomplete.report
            finally:
                display.close()
    _print_reports(reports)
    return reports


def _heartbeats_stop_without_waiting() -> None:
    """End a run without waiting up to a second for Prefect's heartbeat thread.

    The sync flow engine joins that thread when the run ends, and it sleeps in 1 s steps:
    0.5 s on average at the end of every CLI run, after the run's final state is set.
    Prefect's async engine does not join it (`join_on_exit=False`); here neither does the
    sync one. The thread still stops at its next step without sending anything more (it
    checks the stop event before every heartbeat), and is a daemon, so it never holds the
    process up. Only this process's runs: workers and served runs are left as they are.
    """
    import functools
    import inspect

    from prefect import flow_engine

    heartbeats = flow_engine._send_heartbeats
    if getattr(heartbeats, "rbexport_no_join", False) or "join_on_exit" not in inspect.signature(heartbeats).parameters:
        return
    patched = functools.partial(heartbeats, join_on_exit=False)
    patched.rbexport_no_join = True  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = patched


@contextmanager
def prefect_api():
    """Talk to PREFECT_API_URL's server, else to an ephemeral API started for this process."""
    api = EphemeralAPI.if_needed()
    if api is None:
        yield
        return
    atexit.register(api.stop)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api.wait_ready()
    with temporary_settings(updates={PREFECT_API_URL: api.url}):
        yield


def _print_reports(reports) -> None:
    for report in reports:
        _print_report(report, prefix=f"{report.variant}: " if len(reports) > 1 else "")


def _print_report(report, prefix: str = "") -> None:
    from rbexport.display import shown

    prefix = shown(prefix)
    print(f"{prefix}{report.summary()}")
    if report.warnings:
        print(f"{prefix}{len(report.warnings)} warning{'s' * (len(report.warnings) != 1)} (see the report)")
    for notice in report.warnings:
        if notice.taskId is None and notice.file is None:  # about the whole export (filters that keep nothing)
            print(f"{prefix}warning: {notice.message}")
    for failure in report.failures:
        print(f"  failed {shown(failure.line())}")
    print(f"{prefix}report: {shown(report.url)}")


class EphemeralAPI:
    """Prefect's ephemeral API for a run without PREFECT_API_URL, started our way.

    Prefect would start the same server (uvicorn on `create_app`, UI off) itself, but only
    after importing its server code into this process (5 s on a 2-core machine) and with
    the child writing to our terminal, where its shutdown can print CancelledError
    tracebacks. Here the child is launched at once, with its output in
    PREFECT_HOME/rbexport-api.log, and starts while this process imports the flow; the
    run then talks to it as to any server.
    """

    def __init__(self) -> None:
        import socket
        import subprocess
        from importlib.util import find_spec

        from prefect.settings import PREFECT_HOME, get_current_settings

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = Path(PREFECT_HOME.value()) / "rbexport-api.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec = find_spec("prefect")
        assert spec is not None and spec.submodule_search_locations
        environment = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(Path(spec.submodule_search_locations[0]).parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: a terminal's Ctrl-C (SIGINT to our process group) must not
                # kill it before the flow run has ended and released its slot; stop() ends it last.
                start_new_session=True,
            )

    @classmethod
    def if_needed(cls) -> EphemeralAPI | None:
        """Started when no Prefect API is configured (environment or profile), else None."""
        from prefect.settings import PREFECT_API_URL

        return None if PREFECT_API_URL.value() else cls()

    def wait_ready(self, timeout: float = EPHEMERAL_START_SECONDS) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Prefect's ephemeral API exited with code {self.process.returncode} (see {self.log_path})"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Prefect's ephemeral API did not start in {timeout:.0f} s (see {self.log_path})")

    def stop(self) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _PlainProgress:
    """Lines for logs and pipes: failures as they happen, and a line every 10%."""

    def __init__(self, title: str) -> None:
        from rbexport.display import shown

        self.title = shown(title)
        self.total = 0
        self.done = 0
        self.failed = 0
        self.next_line = 0

    def started(self, total: int, skipped: int) -> None:
        self.total = total
        unchanged = f" ({skipped} unchanged, skipped)" if skipped else ""
        say(f"exporting {total} tasks{unchanged}: {self.title}")

    def task_done(self, task_id: str, error: str | None) -> None:
        self.done += 1
        if error:
            self.failed += 1
            say(f"[{self.done}/{self.total}] {task_id} failed: {error}")
        if self.done * 10 >= self.next_line * self.total and self.done:
            say(f"[{self.done}/{self.total}] {self.done - self.failed} exported, {self.failed} failed")
            self.next_line = self.done * 10 // max(self.total, 1) + 1

    def notice(self, message: str) -> None:
        say(message)

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
        self.bar.console.print(f"exporting {total} tasks{unchanged}: {self.title}", highlight=False, markup=False)
        self.task = self.bar.add_task("export", total=total)
        self.bar.start()

    def task_done(self, task_id: str, error: str | None) -> None:
        if error:
            from rich.text import Text

            from rbexport.display import shown

            self.bar.console.print(Text.assemble(("failed ", "red"), shown(f"{task_id}: {error}")))
        if self.task is not None:
            self.bar.advance(self.task)

    def notice(self, message: str) -> None:
        from rbexport.display import shown

        self.bar.console.print(f"rbexport: {shown(message)}", highlight=False, markup=False)

    def close(self) -> None:
        self.bar.stop()


def _progress_display(title: str) -> _PlainProgress:
    return _BarProgress(title) if sys.stderr.isatty() else _PlainProgress(title)


def say(message: str) -> None:
    """One line for the user on stderr: `rbexport: <message>` (what came from the input
    with its control characters escaped: it stays one line, and moves no cursor)."""
    from rbexport.display import shown

    print(f"rbexport: {shown(message)}", file=sys.stderr)
