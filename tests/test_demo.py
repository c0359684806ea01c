"""`rbexport demo --keep` (`make serve-demo`): a local SeaweedFS with the sample project, kept
running until Ctrl-C, and the variables that point the README's deployment steps at it."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import threading
from pathlib import Path

import boto3
from conftest import RBEXPORT


class Served:
    """`rbexport demo --keep` as a user starts it, its output read line by line."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [RBEXPORT, "demo", "--keep"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, marker: str, timeout: float = 180) -> list[str]:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"demo --keep ended before {marker!r}:\n" + "\n".join(self.output))
            self.output.append(line)
            if marker in line:
                return self.output

    def variables(self) -> dict[str, str]:
        """What the printed `export` lines set, as a shell would read them."""
        found = {}
        for line in self.output:
            if line.startswith("export "):
                for word in shlex.split(line)[1:]:
                    name, _, value = word.partition("=")
                    found[name] = value
        return found


def test_demo_keep_serves_the_sample_project_until_ctrl_c(tmp_path):
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    environment["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    served = Served(environment)
    try:
        served.until("Ctrl-C stops the server")
        variables = served.variables()
        assert variables["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert variables["RBEXPORT_ENDPOINT_URL"] == variables["AWS_ENDPOINT_URL"]
        data_dir = Path(served.output[0].split("data in ")[1])
        assert data_dir.is_dir()

        # The printed variables are all a client needs: the sample project is there ...
        s3 = boto3.client(
            "s3",
            endpoint_url=variables["AWS_ENDPOINT_URL"],
            aws_access_key_id=variables["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=variables["AWS_SECRET_ACCESS_KEY"],
            region_name=variables["AWS_DEFAULT_REGION"],
        )
        bucket, _, prefix = variables["RBEXPORT_SOURCE"].removeprefix("s3://").partition("/")
        tasks = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/tasks.json")["Body"].read())
        assert len(tasks) == 6

        # ... and `rbexport run` with nothing else in its environment exports it to the destination.
        run_environment = {**environment, **variables}
        run_environment.pop("PREFECT_API_URL", None)
        result = subprocess.run(
            [RBEXPORT, "run", "--source", variables["RBEXPORT_SOURCE"], "--dest", variables["RBEXPORT_DESTINATION"]],
            capture_output=True,
            text=True,
            env=run_environment,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "6 tasks exported, 0 failed" in result.stdout
        bucket, _, prefix = variables["RBEXPORT_DESTINATION"].removeprefix("s3://").partition("/")
        exported = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/tasks.json")["Body"].read())
        assert [task["taskId"] for task in exported] == [task["taskId"] for task in tasks]
        assert served.process.poll() is None  # still serving

        served.process.send_signal(signal.SIGINT)  # Ctrl-C
        served.until("SeaweedFS stopped", timeout=60)
        assert served.process.wait(timeout=60) == 0
        assert not any("Traceback" in line for line in served.output), served.output
        assert not data_dir.exists()  # its data went with it
        try:
            s3.list_buckets()
        except Exception:  # noqa: BLE001 - nothing answers any more: the server is gone
            pass
        else:
            raise AssertionError("SeaweedFS still answers after Ctrl-C")
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()
