"""No lock outlives its run, and an interrupted run ends quickly (issue 19, items 1 and 2).

Locks: a lock file holding an absurd expiry never crashes a run (it is not a lease: stale);
a Prefect concurrency slot left taken by no live run (what an API restart or a killed
ephemeral API leaves) is reset by the next run, with a warning; `rbexport unlock DST` frees
what a killed run left and refuses while the holder lives.
Interruption: SIGINT to the process group (a terminal's Ctrl-C) or SIGTERM ends a run of
the local engine with exit 130 (143), one line, no traceback; tasks.json is not published;
the next run is not blocked and skips the tasks the interrupted run finished: they are
recorded in the state (each engine, local folders and S3), and the re-run's export is the
one a clean run makes, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import RBEXPORT, bucket_tree, copy_tree, tree

from benchmarks.data import write_small_project
from rbexport.lease import LEASE_KEY, Lease


def rbexport(*arguments: str, tmp_path: Path, env: dict | None = None, timeout: float = 300):
    environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **(env or {})}
    return subprocess.run([RBEXPORT, *arguments], capture_output=True, text=True, timeout=timeout, env=environment)


ABSURD_EXPIRIES = ["1e308", "NaN", "Infinity", "-Infinity", "-5", '"tomorrow"', "1" + "0" * 400, "true", "[1]"]


@pytest.mark.parametrize("expiry", ABSURD_EXPIRIES)
def test_a_lock_file_with_an_absurd_expiry_is_stale_not_a_crash(tmp_path, expiry):
    source = write_small_project(tmp_path / "source", tasks=2)
    destination = tmp_path / "export"
    (destination / ".rbexport").mkdir(parents=True)
    lock = f'{{"owner": "mallory@elsewhere pid 1", "since": 0, "expires": {expiry}}}'
    (destination / LEASE_KEY).write_text(lock)
    result = rbexport(
        "run", "--engine", "local", "--source", str(source), "--dest", str(destination), "--lock-timeout", "1",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert (destination / "tasks.json").exists()
    assert not (destination / LEASE_KEY).exists()

    (destination / LEASE_KEY).write_text(lock)
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env={"PREFECT_API_URL": ""})
    assert result.returncode == 0, result.stderr
    assert f"{destination}: removed a lock object that is not a lease" in result.stdout
    assert not (destination / LEASE_KEY).exists()


def write_lease(destination: Path, owner: str, since: float, expires: float) -> None:
    (destination / ".rbexport").mkdir(parents=True, exist_ok=True)
    (destination / LEASE_KEY).write_bytes(Lease(owner, since, expires, "t", since).to_json())


def test_unlock_frees_what_is_not_live_and_refuses_a_live_holder(tmp_path):
    destination = tmp_path / "export"
    environment = {"PREFECT_API_URL": ""}
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env=environment)
    assert (result.returncode, result.stdout.strip()) == (0, f"{destination}: no lease held it"), result.stderr

    # A live holder elsewhere: refused, naming it.
    now = time.time()
    write_lease(destination, "alice@scanner pid 42", now, now + 600)
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env=environment)
    assert result.returncode == 2, result.stdout
    [line] = result.stderr.splitlines()
    assert "held since " in line and "by alice@scanner pid 42 (its lease runs until" in line and "alive" in line
    assert (destination / LEASE_KEY).exists()

    # A live lease whose holder ran on this host and is gone: removed, saying so.
    gone = subprocess.Popen(["true"])
    gone.wait()
    import socket

    write_lease(destination, f"bob@{socket.gethostname()} pid {gone.pid}", now, now + 600)
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr
    assert "removed the lease whose holder's process is gone" in result.stdout
    assert not (destination / LEASE_KEY).exists()

    # An expired one: removed.
    write_lease(destination, "carol@scanner pid 7", now - 300, now - 180)
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env=environment)
    assert result.returncode == 0 and "expired lease of carol@scanner pid 7" in result.stdout, result.stderr
    assert not (destination / LEASE_KEY).exists()


def _take_slot_as_a_lost_lease_would(name: str) -> None:
    """The slot taken with no lease on the server: what a restarted API (leases in memory) or
    a killed ephemeral API (no repossessor) leaves behind."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=1))


def _active_slots(name: str) -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_an_orphaned_concurrency_slot_is_reset_by_the_next_run(prefect_api, tmp_path):
    from rbexport.tasks.one_writer import concurrency_limit_name

    source = write_small_project(tmp_path / "source", tasks=2)
    destination = tmp_path / "export"
    name = concurrency_limit_name(str(destination))
    _take_slot_as_a_lost_lease_would(name)
    # The killed holder's lease object, last renewed three minutes ago.
    now = time.time()
    write_lease(destination, "flow run killed-fox (alice@scanner pid 42)", now - 180, now - 60)
    result = rbexport(
        "run", "--engine", "prefect", "--source", str(source), "--dest", str(destination), "--lock-timeout", "60",
        tmp_path=tmp_path, env={"PREFECT_API_URL": prefect_api},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"concurrency limit {name} was taken by no live run" in result.stderr
    assert "killed-fox" in result.stderr
    assert _active_slots(name) == 0
    assert (destination / "tasks.json").exists()


def test_unlock_frees_an_orphaned_slot_and_says_who_holds_a_live_one(prefect_api, tmp_path):
    from rbexport.tasks.one_writer import concurrency_limit_name

    destination = tmp_path / "export"
    destination.mkdir()
    name = concurrency_limit_name(str(destination))
    _take_slot_as_a_lost_lease_would(name)
    environment = {"PREFECT_API_URL": prefect_api}
    now = time.time()
    write_lease(destination, "flow run live-owl (alice@scanner pid 42)", now, now + 600)
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env=environment)
    assert result.returncode == 2 and "live-owl" in result.stderr, result.stdout
    assert _active_slots(name) == 1

    (destination / LEASE_KEY).unlink()
    result = rbexport("unlock", str(destination), tmp_path=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr
    assert f"freed the Prefect concurrency slot {name}" in result.stdout
    assert _active_slots(name) == 0


def test_a_waiting_run_says_who_holds_the_destination_and_how_to_free_it(tmp_path):
    source = write_small_project(tmp_path / "source", tasks=1)
    destination = tmp_path / "export"
    now = time.time()
    write_lease(destination, "dave@scanner pid 9", now, now + 600)
    result = rbexport(
        "run", "--engine", "local", "--source", str(source), "--dest", str(destination), "--lock-timeout", "1",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "busy since " in result.stderr and "by dave@scanner pid 9 (its lease runs until " in result.stderr
    assert f"rbexport unlock {destination}" in result.stderr


class Background:
    """`rbexport run` in its own session (as a terminal's job), its stderr in a file."""

    def __init__(self, tmp_path: Path, *arguments: str, env: dict | None = None) -> None:
        self.log = tmp_path / f"run-{uuid.uuid4().hex[:8]}.log"
        environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **(env or {})}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [RBEXPORT, *arguments], stdout=log, stderr=log, env=environment, start_new_session=True
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt_when_progressing(self, number: int = signal.SIGINT) -> tuple[int, str]:
        deadline = time.monotonic() + 240
        while "] " not in self.output and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the first progress line: signal it at once, long before it ends
        assert self.process.poll() is None, self.output
        os.killpg(self.process.pid, number)
        self.process.wait(timeout=120)
        return self.process.returncode, self.output


def _interrupted_output_is_one_line(output: str) -> int:
    """The one line an interrupted run prints; returns the finished tasks it kept."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "rbexport: interrupted" in line]
    assert len(lines) == 1, output
    match = re.fullmatch(
        r"rbexport: interrupted; (\d+) finished tasks? kept for the next run; "
        r"nothing was published \(the previous export stays as it was\)",
        lines[0],
    )
    assert match, output
    return int(match.group(1))


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_local_engine_stops_on_a_signal_to_its_group(tmp_path, number, code):
    source = write_small_project(tmp_path / "source", tasks=400)
    destination = tmp_path / "export"
    run = ["run", "--engine", "local", "--source", str(source), "--dest", str(destination)]
    interrupted = Background(tmp_path, *run, "--workers", "1", "--batch-size", "1")
    returncode, output = interrupted.interrupt_when_progressing(number)
    assert returncode == code, output
    _interrupted_output_is_one_line(output)
    assert not (destination / "tasks.json").exists()  # nothing published
    assert not (destination / LEASE_KEY).exists()  # released
    again = rbexport(*run, "--lock-timeout", "5", tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((destination / "tasks.json").read_text())[0]["taskId"] == "x-0000"


def test_the_local_engine_stops_on_ctrl_c_on_s3_and_keeps_the_previous_export(seaweed, make_bucket, tmp_path):
    source, destination = make_bucket("project"), make_bucket("export")
    local = write_small_project(tmp_path / "source", tasks=40, shape=(1024, 1024))
    for path in sorted(local.rglob("*")):
        if path.is_file():
            source.write(path.relative_to(local).as_posix(), path.read_bytes())
    run = ["run", "--engine", "local", "--source", source.url, "--dest", destination.url]
    run += ["--endpoint-url", seaweed.endpoint_url]
    assert rbexport(*run, tmp_path=tmp_path).returncode == 0
    published = destination.read("tasks.json")
    interrupted = Background(tmp_path, *run, "--full", "--workers", "1", "--batch-size", "1")
    returncode, output = interrupted.interrupt_when_progressing()
    assert returncode == 130, output
    _interrupted_output_is_one_line(output)
    assert destination.read("tasks.json") == published
    assert not destination.exists(LEASE_KEY)
    assert rbexport(*run, "--lock-timeout", "5", tmp_path=tmp_path).returncode == 0


@pytest.mark.parametrize("api", ["ephemeral", "server"])
def test_the_prefect_engine_stops_on_ctrl_c_and_frees_the_destination(prefect_api, tmp_path, api):
    """The CLI's ephemeral API survives the group's SIGINT (its own session) until the flow
    run has ended and given back its slot; the next run into the destination is not blocked."""
    source = write_small_project(tmp_path / "source", tasks=60, shape=(1536, 1536))
    destination = tmp_path / "export"
    run = ["run", "--engine", "prefect", "--source", str(source), "--dest", str(destination)]
    environment = {"PREFECT_API_URL": prefect_api if api == "server" else ""}
    interrupted = Background(tmp_path, *run, "--workers", "2", "--batch-size", "2", env=environment)
    returncode, output = interrupted.interrupt_when_progressing()
    assert returncode == 130, output
    _interrupted_output_is_one_line(output)
    assert not (destination / "tasks.json").exists()
    assert not (destination / LEASE_KEY).exists()
    # The next run into the destination, on the same API (an ephemeral one: the same database),
    # takes its slot at once; a small source of its own, so it ends soon.
    small = write_small_project(tmp_path / "small", tasks=2)
    again = rbexport(
        *run[:3], "--source", str(small), *run[5:], "--lock-timeout", "20", tmp_path=tmp_path, env=environment
    )
    assert again.returncode == 0, again.stderr
    assert "waiting for" not in again.stderr


def _second_pass(tasks_json: bytes) -> bytes:
    """The source's tasks.json with every task changed (what a re-annotation does): each is
    exported again, with a tasks.json entry other than the published one."""
    return json.dumps([{**task, "metaData": {"pass": 2}} for task in json.loads(tasks_json)]).encode()


class Folder:
    """A local destination (or a clean one beside it), as the test reads it."""

    def __init__(self, path: Path) -> None:
        self.path, self.url = path, str(path)

    def tree(self) -> dict[str, bytes]:
        return tree(self.path) if self.path.exists() else {}


class Bucket:
    def __init__(self, storage) -> None:
        self.storage, self.url = storage, storage.url

    def tree(self) -> dict[str, bytes]:
        return bucket_tree(self.storage)


@pytest.mark.parametrize("engine", ["local", "prefect"])
@pytest.mark.parametrize("store", ["folder", "s3"])
def test_an_interrupted_run_keeps_its_finished_tasks_for_the_next_run(request, tmp_path, engine, store):
    """Ctrl-C mid-way through re-exporting a changed project: exit 130, tasks.json and every
    file it names as they were; the state records the finished tasks (those of the batches
    in flight too), so the re-run skips exactly them, and its export is a clean run's."""
    local = write_small_project(tmp_path / "source", tasks=300)
    # prefect: the session's server (the ephemeral API's own Ctrl-C is the test above's; each
    # start of one costs CI half a minute). --engine local never reads it.
    environment = {"PREFECT_API_URL": request.getfixturevalue("prefect_api")}
    if store == "s3":
        seaweed, make_bucket = request.getfixturevalue("seaweed"), request.getfixturevalue("make_bucket")
        source_bucket = make_bucket("project")
        copy_tree(local, source_bucket)
        source, destination, clean = source_bucket.url, Bucket(make_bucket("export")), Bucket(make_bucket("clean"))
        endpoint = ["--endpoint-url", seaweed.endpoint_url]

        def change_source() -> None:
            source_bucket.write("tasks.json", _second_pass(source_bucket.read("tasks.json")))
    else:
        source, destination, clean = str(local), Folder(tmp_path / "export"), Folder(tmp_path / "clean")
        endpoint = []

        def change_source() -> None:
            (local / "tasks.json").write_bytes(_second_pass((local / "tasks.json").read_bytes()))

    def run(where, engine: str = engine) -> subprocess.CompletedProcess:
        result = rbexport(
            "run", "--engine", engine, "--source", source, "--dest", where.url, *endpoint,
            tmp_path=tmp_path, env=environment,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result

    run(destination, "local")
    published = destination.tree()
    previous_tasks_json = published["tasks.json"]
    named = [path for entry in json.loads(previous_tasks_json) for path in _segmentations(entry)]
    change_source()

    interrupted = Background(
        tmp_path, "run", "--engine", engine, "--source", source, "--dest", destination.url, *endpoint,
        "--workers", "2", "--batch-size", "3", env=environment,
    )  # fmt: skip
    returncode, output = interrupted.interrupt_when_progressing()
    assert returncode == 130, output
    kept = _interrupted_output_is_one_line(output)
    after = destination.tree()
    assert after["tasks.json"] == previous_tasks_json  # nothing published
    assert after["export-report.json"] == published["export-report.json"]
    assert all(path in after for path in named)  # every file the previous tasks.json names
    assert LEASE_KEY not in after
    state = json.loads(after[".rbexport/state.json"])  # whole JSON: written in one step
    assert 0 < kept < 300, output
    assert len(state["unpublished"]) == kept  # every entry changed: each kept task's is there

    again = run(destination, "local")  # the state is the core's, whichever engine wrote it: the quicker one
    assert f"{300 - kept} tasks exported, {kept} skipped as unchanged" in again.stdout
    run(clean, "local")  # both engines write the same files (test_golden): the quicker one
    final, expected = destination.tree(), clean.tree()
    assert final["tasks.json"] == expected["tasks.json"]
    assert b'"unpublished"' not in final[".rbexport/state.json"]  # published: the entries are in tasks.json
    report = "export-report.json"
    assert {k: v for k, v in final.items() if k != report} == {k: v for k, v in expected.items() if k != report}


def _segmentations(entry: dict) -> list[str]:
    return [series["segmentations"] for series in entry["series"] if "segmentations" in series]
