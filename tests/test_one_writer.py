"""One writer per destination (issue 12): whichever deployment, engine or machine writes, a
second writer waits for the first, so two runs started together end with the export two
runs one after the other would leave; a killed writer's lease is taken over once expired;
a writer that waited too long exits 2 saying who holds the destination."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import threading
import time
import uuid

from conftest import RBEXPORT, bucket_tree
from fault_proxy import FaultProxy
from prefect_helpers import wait_for

from rbexport.app.sample import write_sample_project
from rbexport.lease import LEASE_KEY, DestinationLease, Lease
from rbexport.storage import LocalStorage

# Short leases, so that renewals happen many times during a run and a killed writer's
# lease expires within the test.
SHORT_LEASE = {"RBEXPORT_LEASE_SECONDS": "2"}


class SlowProxy(FaultProxy):
    """Every request to the store takes `slow_seconds` longer."""

    def choose(self) -> str | None:
        return "slow"


class GateProxy(FaultProxy):
    """Forwards every request, except while the gate is closed: then requests wait. A writer
    going through it holds the destination for as long as the test wants."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, share=0.0)
        self.gate = threading.Event()
        self.gate.set()

    def choose(self) -> str | None:
        self.gate.wait()
        return None


def add_task(storage, task_id: str = "task-007", name: str = "Study_007") -> None:
    """A new task lands in the source (it reuses the first task's masks)."""
    tasks = json.loads(storage.read("tasks.json"))
    extra = copy.deepcopy(tasks[0])
    extra.update(taskId=task_id, name=name)
    storage.write("tasks.json", json.dumps([*tasks, extra], indent=2).encode())


class Cli:
    """The real `rbexport` in the background, its output in a file to read while it runs."""

    def __init__(self, prefect_api: str, tmp_path, *arguments: str, env: dict | None = None) -> None:
        self.log = tmp_path / f"cli-{uuid.uuid4().hex[:8]}.log"
        environment = {
            **os.environ,
            "PREFECT_API_URL": prefect_api,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            **(env or {}),
        }
        with self.log.open("w") as log:
            self.process = subprocess.Popen([RBEXPORT, *arguments], stdout=log, stderr=log, text=True, env=environment)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.output


def export_files(storage) -> dict[str, bytes]:
    """The export as a reader sees it (the report holds timings, the rest must be equal)."""
    return {key: data for key, data in bucket_tree(storage).items() if key != "export-report.json"}


def test_writers_started_together_end_like_writers_one_after_the_other(seaweed, make_bucket, prefect_api, tmp_path):
    source, destination, reference = make_bucket("project"), make_bucket("export"), make_bucket("reference")
    write_sample_project(source)
    run = ["run", "--source", source.url, "--dest", destination.url]

    with GateProxy(upstream=seaweed.endpoint_url) as proxy:
        # The nightly (a Prefect run) takes the destination, then its store stalls.
        nightly = Cli(prefect_api, tmp_path, *run, "--endpoint-url", proxy.url)
        wait_for(lambda: any(destination.list()) or nightly.process.poll() is not None, 120, "the nightly to write")
        proxy.gate.clear()
        assert nightly.process.poll() is None, nightly.output
        # Meanwhile a task is uploaded, and an upload run (Prefect) and a run of the local
        # engine start on the same destination; both must wait for the nightly.
        add_task(source)
        upload = Cli(prefect_api, tmp_path, *run, "--endpoint-url", seaweed.endpoint_url)
        local = Cli(prefect_api, tmp_path, *run, "--engine", "local", "--endpoint-url", seaweed.endpoint_url)
        wait_for(
            lambda: all("waiting for" in cli.output or cli.process.poll() is not None for cli in (upload, local)),
            120,
            "both to wait (or, were they not to wait, to end)",
        )
        proxy.gate.set()
        results = {"nightly": nightly.finish(), "upload": upload.finish(), "local": local.finish()}

    for name, (code, output) in results.items():
        assert code == 0, f"{name}: {output}"
    # Runs one after the other end with the export of the source as it is now: nothing
    # the upload brought is lost from tasks.json or the state.
    reference_run = ["run", "--engine", "local", "--source", source.url, "--dest", reference.url]
    assert subprocess.run([RBEXPORT, *reference_run, "--endpoint-url", seaweed.endpoint_url]).returncode == 0
    entries = json.loads(destination.read("tasks.json"))
    assert [entry["taskId"] for entry in entries][-1:] == ["task-007"] and len(entries) == 7
    assert export_files(destination) == export_files(reference)

    # The upload run queued on the destination's concurrency limit (or its lease, when the
    # local engine had it first); the local engine on the lease; nobody took a lease over.
    assert f"waiting for {destination.url}: " in results["upload"][1]
    assert f"waiting for {destination.url}: busy since" in results["local"][1]
    assert not any("took over" in output for _, output in results.values())
    assert not destination.exists(LEASE_KEY)


def test_prefect_runs_queue_on_the_destinations_concurrency_limit(seaweed, make_bucket, prefect_api, tmp_path):
    from prefect import get_client

    from rbexport.tasks.one_writer import concurrency_limit_name

    source, destination = make_bucket("project"), make_bucket("export")
    write_sample_project(source)
    run = ["run", "--source", source.url, "--dest", destination.url]
    name = concurrency_limit_name(destination.url)
    assert name == "rbexport:s3:" + destination.url.removeprefix("s3://").replace("/", ":")
    with GateProxy(upstream=seaweed.endpoint_url) as proxy:
        first = Cli(prefect_api, tmp_path, *run, "--endpoint-url", proxy.url)
        wait_for(lambda: destination.exists(LEASE_KEY) or first.process.poll() is not None, 120, "the first's lease")
        proxy.gate.clear()
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active_slots) == (1, 1)
        second = Cli(prefect_api, tmp_path, *run, "--endpoint-url", seaweed.endpoint_url)
        wait_for(lambda: "waiting for" in second.output or second.process.poll() is not None, 120, "the second to wait")
        proxy.gate.set()
        (first_code, first_output), (second_code, second_output) = first.finish(), second.finish()
    assert first_code == 0, first_output
    assert second_code == 0, second_output
    lease_owner = "by flow run "  # the first run's lease names it
    assert f"waiting for {destination.url}: concurrency limit {name} is taken since" in second_output
    assert lease_owner in second_output
    assert "6 skipped as unchanged" in second_output  # it read the destination after the first published
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert (limit.limit, limit.active_slots) == (1, 0)


def test_a_killed_writers_lease_is_taken_over_once_expired(seaweed, make_bucket, prefect_api, tmp_path):
    source, destination, reference = make_bucket("project"), make_bucket("export"), make_bucket("reference")
    write_sample_project(source)
    run = ["run", "--engine", "local", "--source", source.url]
    with SlowProxy(upstream=seaweed.endpoint_url, share=1.0, slow_seconds=0.2) as proxy:
        killed = Cli(
            prefect_api, tmp_path, *run, "--dest", destination.url, "--endpoint-url", proxy.url, env=SHORT_LEASE
        )
        wait_for(lambda: destination.exists(LEASE_KEY) or killed.process.poll() is not None, 60, "the writer's lease")
        os.kill(killed.process.pid, signal.SIGKILL)
        killed.process.wait()
    left = Lease.parse(destination.read(LEASE_KEY))
    assert left is not None and f"pid {killed.process.pid}" in left.owner

    # The killed writer's lease (2 s, renewed until the kill) blocks the next writer until it expires.
    code, output = Cli(
        prefect_api, tmp_path, *run, "--dest", destination.url, "--endpoint-url", seaweed.endpoint_url
    ).finish()
    assert code == 0, output
    assert f"took over the lease on {destination.url} from {left.owner}" in output
    assert not destination.exists(LEASE_KEY)
    assert (
        subprocess.run([RBEXPORT, *run, "--dest", reference.url, "--endpoint-url", seaweed.endpoint_url]).returncode
        == 0
    )
    assert export_files(destination) == export_files(reference)


def test_a_writer_that_waited_too_long_exits_2_naming_the_holder(
    seaweed, make_bucket, prefect_api, run_cli, sample_source, tmp_path
):
    from rbexport.flows.export import export_project

    destination = make_bucket("export")
    holder = DestinationLease(destination, owner="flow run nightly-fox (alice@scanner pid 42)", seconds=600)
    with holder.held():
        for engine in ("local", "prefect"):
            result = run_cli(
                "run", "--engine", engine, "--source", str(sample_source), "--dest", destination.url,
                "--endpoint-url", seaweed.endpoint_url, "--lock-timeout", "1",
            )  # fmt: skip
            assert result.returncode == 2, result.stderr
            [line] = [line for line in result.stderr.splitlines() if line.startswith("rbexport: error:")]
            assert f"destination {destination.url} busy since " in line
            assert "by flow run nightly-fox (alice@scanner pid 42)" in line
            assert "Traceback" not in result.stderr
        state = export_project(
            str(sample_source), destination.url, endpoint_url=seaweed.endpoint_url, lock_timeout=1, return_state=True
        )
        assert state.is_failed() and "busy since" in state.message
    assert [info.key for info in destination.list()] == []  # nothing written, the holder's lease released


def test_one_holder_at_a_time_among_racing_writers(tmp_path):
    """Eight threads take a folder's lease at once, repeatedly: never two holders."""
    storage = LocalStorage(tmp_path / "export")
    holders, overlaps, errors = [], [], []

    def writer() -> None:
        try:
            for _ in range(5):
                with DestinationLease(storage, seconds=1).held(timeout=60):
                    holders.append(threading.get_ident())
                    if len(holders) > 1:
                        overlaps.append(list(holders))
                    time.sleep(0.01)
                    holders.remove(threading.get_ident())
        except Exception as error:  # noqa: BLE001 - a writer that failed is the test's failure
            errors.append(repr(error))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert overlaps == []
    assert not storage.exists(LEASE_KEY)


def test_a_lease_outlives_its_duration_while_renewed(tmp_path):
    """A run longer than the lease keeps it: another writer waits, and gives up, naming it."""
    import pytest

    from rbexport.lease import DestinationBusy

    storage = LocalStorage(tmp_path / "export")
    with DestinationLease(storage, owner="the long run", seconds=1).held():
        with pytest.raises(DestinationBusy, match="busy since .* by the long run"):
            DestinationLease(storage, seconds=1).acquire(timeout=3)
    DestinationLease(storage, seconds=1).acquire(timeout=0)  # released: free at once


def test_a_lease_whose_holder_on_this_host_has_ended_is_taken_over_at_once(tmp_path):
    """A run killed on this host (its lease names host and pid) frees the destination at once,
    before its lease would expire; a holder whose process lives is waited for."""
    import socket

    import pytest

    from rbexport.lease import DestinationBusy

    storage = LocalStorage(tmp_path / "export")
    ended = subprocess.Popen(["true"])
    ended.wait()
    living = subprocess.Popen(["sleep", "60"])
    try:
        now = time.time()
        for pid, gone in ((living.pid, False), (ended.pid, True)):
            owner = f"flow run killed-{pid} (someone@{socket.gethostname()} pid {pid})"
            storage.write(LEASE_KEY, Lease(owner, now, now + 3600, "theirs", now).to_json())
            said: list[str] = []
            lease = DestinationLease(storage, seconds=60, notify=said.append)
            if not gone:
                with pytest.raises(DestinationBusy, match=f"by flow run killed-{pid}"):
                    lease.acquire(timeout=1)
                continue
            started = time.monotonic()
            lease.acquire(timeout=30)
            assert time.monotonic() - started < 5  # not the hour its lease had left
            assert any(f"took over the lease on {storage.url} from {owner}" in line for line in said), said
            assert any("its process has ended" in line for line in said), said
            lease.release()
    finally:
        living.kill()
        living.wait()
