"""A real `prefect server start` for the tests: the API, its services (the scheduler among
them) and, when asked, the UI, on a free loopback port with its own database.

Everything the server prints goes to a log file. `new_tracebacks()` returns what the log
gained since the last call when that holds a traceback: the suite fails every test during
which the server logged one, so an incompatible dependency (SQLAlchemy 2.1 broke the
scheduler while the API kept answering) shows up in CI, not in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PREFECT = str(Path(sys.executable).with_name("prefect"))


# Tracebacks Prefect 3.8.8's server logs under load that are its own, not a sign of the
# dependency breakage the log check is for; the tests' own assertions see whatever such a
# miss breaks, and each becomes a pytest warning instead of a failure:
# - SQLite runs most of Prefect's transactions DEFERRED; when its services and a busy test
#   write at once, one fails at once with "database is locked" and is tried again on the
#   service's next loop. (PostgreSQL would avoid it; the one that installs from the
#   registry, pgserver, lacks the pg_trgm extension Prefect's migrations need.)
# - An events client that reconnects under load sends its auth message to a socket the
#   server accepted in legacy mode, which reads it as an Event ("4 validation errors").
KNOWN_SERVER_NOISE = {
    "(sqlite3.OperationalError) database is locked": "SQLite's single writer",
    "input_value={'type': 'auth', 'token': None}": "an events client's auth message read as an event",
}
_CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def logged_errors(text: str) -> list[list[str]]:
    """The tracebacks in a log, each error's chain of blocks together (one list per error)."""
    blocks = text.split("Traceback (most recent call last):")[1:]
    errors: list[list[str]] = []
    chained = False
    for block in blocks:
        if chained:
            errors[-1].append(block)
        else:
            errors.append([block])
        chained = block.rstrip().endswith(_CHAINED)
    return errors


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrefectServer:
    def __init__(self, home: Path, ui: bool = False, scheduler_loop_seconds: float = 2) -> None:
        self.home = home
        self.port = free_port()
        self.log_path = home / "server.log"
        self.ui = ui
        self.scheduler_loop_seconds = scheduler_loop_seconds
        self.process: subprocess.Popen | None = None
        self._checked = 0
        self.noise = 0  # tracebacks of KNOWN_SERVER_NOISE the server logged

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def environment(self) -> dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        return {
            **environment,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(self.scheduler_loop_seconds),
            # Five runs ahead per schedule, not Prefect's 100: the schedule tests need four;
            # 100 per schedule (a few hundred rows per `prefect deploy --all`, every run
            # marked Late in turn) kept SQLite's one write lock taken for a minute in CI.
            "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "5",
            "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "3",
            # SQLite on a busy 2-core machine: wait longer for the write lock than 10 s.
            "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
            "PREFECT_UI_API_URL": self.api_url,
        }

    def start(self, timeout: float = 180) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    PREFECT,
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--analytics-off",
                    "--ui" if self.ui else "--no-ui",
                ],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def new_tracebacks(self) -> str:
        """What the log gained since the last call, when that holds a traceback other than
        the KNOWN_SERVER_NOISE (those are counted in `noise`); else ''."""
        text = self.log()
        gained, self._checked = text[self._checked :], len(text)
        errors = logged_errors(gained)
        # Noise when any block of the chain is: a chain holding SQLite's lock was caused by it
        # (a worker's channel closed because its first heartbeat waited for the lock, say).
        noise = [error for error in errors if any(known in block for block in error for known in KNOWN_SERVER_NOISE)]
        self.noise += len(noise)
        return gained if len(errors) > len(noise) else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
