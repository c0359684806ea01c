"""Upload to export: `python -m benchmarks.latency [--project DIR] [--runs 5] [--only served|worker]`.

A real `prefect server start`, SeaweedFS with the sample project, the receiver
(deployments/receiver.py) and export-on-upload run by `python -m rbexport.deployments.serve` or by a
process worker (`prefect deploy`, `prefect worker start`). Each run uploads one new task
(its mask, then its JSON), posts the store's notification to the receiver and times until
the task is in the destination's standard/tasks.json. Prints the median of `--runs` (after
one warm-up upload, which also exports the sample). `--project /work/main` measures another
checkout's deployments with the same harness (today's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))

KEY, SECRET_KEY, WEBHOOK = "bench-key", "bench-secret-7a1c", "bench-webhook-3f2e"
PREFECT = str(Path(sys.executable).with_name("prefect"))


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except Exception:  # not there yet
            pass
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def notification(bucket: str, *keys: str) -> bytes:
    records = [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}} for key in keys
    ]
    return json.dumps({"Records": records}).encode()


def post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Authorization": f"Bearer {WEBHOOK}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.status


def measure(kind: str, project: Path, runs: int) -> list[float]:
    from prefect_server import PrefectServer, free_port

    from rbexport.app.sample import box, nifti_bytes, write_sample_project
    from rbexport.app.seaweed import SeaweedServer
    from rbexport.storage import LocalStorage, S3Storage

    work = Path(tempfile.mkdtemp(prefix="rbexport-latency-"))
    server = PrefectServer(work / "prefect").start()
    processes: list[subprocess.Popen] = []
    with SeaweedServer(work / "seaweed", access_key=KEY, secret_key=SECRET_KEY) as seaweed:
        environment = {
            **server.environment(),
            "PREFECT_API_URL": server.api_url,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": str(project),
            "RBEXPORT_SOURCE": "s3://bench-source/brain",
            "RBEXPORT_DESTINATION": "s3://bench-export/live",
            "RBEXPORT_ENDPOINT_URL": seaweed.endpoint_url,
            "RBEXPORT_WEBHOOK_SECRET": WEBHOOK,
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),  # as the README says
            "PWD": str(project),
        }
        os.environ.update({name: environment[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        source = S3Storage("bench-source", "brain", seaweed.endpoint_url)
        destination = S3Storage("bench-export", "live/standard", seaweed.endpoint_url)
        for bucket in ("bench-source", "bench-export"):
            S3Storage(bucket, "", seaweed.endpoint_url).create_bucket()
        sample = work / "sample"
        write_sample_project(LocalStorage(sample))
        for path in sorted(sample.rglob("*")):
            if path.is_file():
                source.write(path.relative_to(sample).as_posix(), path.read_bytes())

        def start(*command: str) -> subprocess.Popen:
            process = subprocess.Popen(
                command,
                cwd=project,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            processes.append(process)
            return process

        try:
            port = free_port()
            environment["RBEXPORT_RECEIVER_PORT"] = str(port)
            start(sys.executable, "-m", "rbexport.deployments.receiver")
            receiver = f"http://127.0.0.1:{port}/"
            wait_for(lambda: urllib.request.urlopen(receiver, timeout=2).status == 200, 60, "the receiver")
            if kind == "served":
                start(sys.executable, "-m", "rbexport.deployments.serve", "export-on-upload")
            else:
                for command in (
                    [PREFECT, "work-pool", "create", "rbexport", "--type", "process", "--overwrite"],
                    [PREFECT, "--no-prompt", "deploy", "--name", "export-on-upload"],
                ):
                    subprocess.run(command, cwd=project, env=environment, check=True, capture_output=True)
                start(PREFECT, "worker", "start", "--pool", "rbexport")
            wait_for(lambda: automation_ready(server.api_url), 180, "the deployment's automation")
            mask = nifti_bytes(box((16, 16, 4), 1, (2, 2, 1), (5, 5, 2)))
            delays = []
            for number in range(runs + 1):
                task_id = f"latency-{number}"
                source.write(f"masks/{task_id}.nii.gz", mask)
                task = {
                    "taskId": task_id,
                    "series": [
                        {"segmentations": f"masks/{task_id}.nii.gz", "segmentMap": {"1": {"category": "Glioma"}}}
                    ],
                }
                source.write(f"tasks/{task_id}.json", json.dumps(task).encode())
                posted, posted_at = time.perf_counter(), time.time()
                post(
                    receiver,
                    notification("bench-source", f"brain/masks/{task_id}.nii.gz", f"brain/tasks/{task_id}.json"),
                )
                wait_for(lambda task_id=task_id: task_id in destination.read("tasks.json").decode(), 300, task_id)
                delay = time.perf_counter() - posted
                if number:  # the first also exports the sample and warms up
                    delays.append(delay)
                print(
                    f"  {kind} {task_id}: {delay:.1f} s ({breakdown(server.api_url, delay, posted_at)})",
                    file=sys.stderr,
                )
                time.sleep(12)  # past the trigger's 10 s window: the next upload starts a run of its own
            return delays
        finally:
            for process in processes:
                os.killpg(process.pid, signal.SIGINT)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
            server.stop()


def breakdown(api_url: str, delay: float, posted_at: float) -> str:
    """Where the time went, from the newest flow run's timestamps: the trigger (upload to
    the run's creation; of it, the automation's action: from the automation's firing to the
    run's creation), the pick-up (creation to start: polling, the process starting) and the
    run (start to the task being published, about its end); of the pick-up, the poll (creation to
    Pending, when the runner or worker took it) and the process (Pending to Running: a new
    interpreter importing Prefect and the flow, the engine's start)."""
    from datetime import UTC, datetime

    def finished():
        [run] = api(api_url, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 1})
        return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED") else None

    run = wait_for(finished, 60, "the run to end")
    created, started = (datetime.fromisoformat(run[name]) for name in ("created", "start_time"))
    total = run.get("total_run_time") or 0.0
    pickup = (started - created).total_seconds()
    pending = [
        datetime.fromisoformat(state["timestamp"])
        for state in api(api_url, f"/flow_run_states/?flow_run_id={run['id']}")
        if state["type"] == "PENDING"
    ]
    parts = ""
    if pending:
        poll, process = (pending[0] - created).total_seconds(), (started - pending[0]).total_seconds()
        parts = f" (the poll {poll:.1f} s, the process {process:.1f} s)"
    since = datetime.fromtimestamp(posted_at - 1, UTC).isoformat()
    fired = api(
        api_url,
        "/events/filter",
        {"filter": {"occurred": {"since": since}, "event": {"name": ["prefect.automation.triggered"]}}, "limit": 1},
    )["events"]
    action = f" (the action {(created - datetime.fromisoformat(fired[0]['occurred'])).total_seconds():.1f} s)"
    return f"trigger {delay - pickup - total:.1f} s{action if fired else ''}, pick-up {pickup:.1f} s{parts}, run {total:.1f} s"


def api(api_url: str, path: str, query: dict | None = None):
    """The Prefect API's answer to GET `path`, or to POST `query` (a filter) to it."""
    request = urllib.request.Request(
        f"{api_url}{path}",
        data=None if query is None else json.dumps(query).encode(),
        method="GET" if query is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def automation_ready(api_url: str) -> bool:
    return bool(api(api_url, "/automations/filter", {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=HERE, help="the checkout whose deployments run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["served", "worker"])
    arguments = parser.parse_args()
    targets = {"served": 5.0, "worker": 15.0}
    for kind in [arguments.only] if arguments.only else ["served", "worker"]:
        delays = measure(kind, arguments.project.resolve(), arguments.runs)
        print(
            f"{kind}: notification to task in tasks.json, median of {len(delays)}: {statistics.median(delays):.1f} s"
            f" (target at most {targets[kind]:.0f} s; {arguments.project})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
