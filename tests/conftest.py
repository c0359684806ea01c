"""Real servers for the tests: one SeaweedFS (S3) and one Prefect API for the whole session.

Both bind to loopback on free ports and are started here, so the suite needs nothing
running beforehand. The Prefect API is a real `prefect server start` with its services (the
scheduler, triggers) on a temporary SQLite database; in-process flows and CLI subprocesses
are pointed at it with PREFECT_API_URL. A test during which that server logs a traceback
fails (`server_log_is_clean`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest
from prefect_server import PrefectServer

from rbexport.app.sample import write_sample_project
from rbexport.app.seaweed import SeaweedServer
from rbexport.storage import LocalStorage, S3Storage, reset_clients

# The test files that take longest (measured: `pytest --durations=0`, summed per file), run
# first: `make test` hands whole files to its workers (--dist loadfile) in collection order,
# and a long file collected last keeps one worker busy while the others wait.
LONGEST_FIRST = (
    "test_hostile.py",
    "test_mask_formats.py",
    "test_service.py",
    "test_interrupt.py",
    "test_schedules.py",
    "test_datasets.py",
    "test_cli.py",
    "test_engine_choice.py",
    "test_one_writer.py",
    "test_security.py",
    "test_scale.py",
    "test_releases.py",
    "test_credentials.py",
    "test_deployments.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


# No telemetry from the test API server (its heartbeat races the harness on SQLite).
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

ACCESS_KEY = "rbexport-test"
SECRET_KEY = "rbexport-test-secret-5f1d0c3e9a"
RBEXPORT = str(Path(sys.executable).with_name("rbexport"))


@pytest.fixture(scope="session")
def s3_credentials():
    """The test server's keys, in the environment where boto3's standard chain finds them."""
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(key, None)
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory, s3_credentials):
    with SeaweedServer(tmp_path_factory.mktemp("seaweed"), access_key=ACCESS_KEY, secret_key=SECRET_KEY) as server:
        yield server


@pytest.fixture
def make_bucket(seaweed):
    """Create a fresh bucket; returns an S3Storage on `s3://<bucket>/<prefix>`. The test's
    buckets are deleted after it: SeaweedFS gives each bucket volumes of its own, and a
    worker's server that kept every test's buckets ran out of writable volumes late in the
    suite ("No writable volumes", InternalError to every later upload)."""
    made: list[str] = []

    def make(prefix: str = "") -> S3Storage:
        name = f"t-{uuid.uuid4().hex[:12]}"
        S3Storage(name, "", seaweed.endpoint_url).create_bucket()
        made.append(name)
        return S3Storage(name, prefix, seaweed.endpoint_url)

    yield make
    _delete_buckets(seaweed.endpoint_url, made)


def _delete_buckets(endpoint_url: str, names: list[str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    for name in names:
        try:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
                versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
                if versions:
                    client.delete_objects(
                        Bucket=name,
                        Delete={"Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]},
                    )
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys})
            client.delete_bucket(Bucket=name)
        except Exception:  # noqa: BLE001 - cleanup only: a bucket under Object Lock retention stays
            pass


_servers: list[PrefectServer] = []


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> PrefectServer:
    """`prefect server start` on a free port, for in-process flows and CLI subprocesses.

    Prefect's own threads (its log worker's loop, the process pool's message forwarder) do
    not see a `temporary_settings` context: the process-global settings are refreshed from
    the environment too, or those threads start an ephemeral API of their own (which an
    xdist worker's exit then leaves running)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with PrefectServer(tmp_path_factory.mktemp("prefect-server")) as server:
        _servers.append(server)
        saved = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = server.api_url
        refresh_global_settings_context()
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                yield server
        finally:
            # Logs and events still queued go to this server before it stops, not to a dead
            # address at the interpreter's exit ("--- Error logging to API ---").
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
            _servers.remove(server)
            if saved is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = saved
            refresh_global_settings_context()


@pytest.fixture(scope="session")
def prefect_api(prefect_server) -> str:
    return prefect_server.api_url


@pytest.fixture(autouse=True)
def server_log_is_clean():
    """Fail the test during which a Prefect server of the session logged a traceback (but
    for Prefect's own noise under load, a warning: see prefect_server.KNOWN_SERVER_NOISE)."""
    for server in _servers:
        server.new_tracebacks()  # what came before this test is another test's
    noise = sum(server.noise for server in _servers)
    yield
    for server in _servers:
        logged = server.new_tracebacks()
        if logged:
            pytest.fail(f"the Prefect server logged a traceback during this test:\n{logged[-4000:]}", pytrace=False)
    if sum(server.noise for server in _servers) > noise:
        warnings.warn("the Prefect test server logged known noise (KNOWN_SERVER_NOISE) during this test", stacklevel=1)


@pytest.fixture
def sample_source(tmp_path) -> Path:
    """The generated sample project in a local folder."""
    source = tmp_path / "source"
    write_sample_project(LocalStorage(source))
    return source


@pytest.fixture
def run_cli(prefect_api, tmp_path, s3_credentials):
    """Run the installed `rbexport` command against the session's Prefect API."""

    def run(
        *arguments: str,
        ephemeral: bool = False,
        engine: str | None = None,
        timeout: float = 300,
        env: dict | None = None,
        unset: tuple = (),
    ):
        """`unset`: variables to leave out of the command's environment (e.g. the S3 keys).
        `engine`: `--engine ENGINE` for `run` (else the default, auto: the flow on the session's
        API). Tests of what an export holds use the local engine, whose files are the flow's
        byte for byte (test_golden, test_engine): a Prefect run costs a few seconds more."""
        if engine is not None:
            at = arguments.index("run") + 1
            arguments = (*arguments[:at], "--engine", engine, *arguments[at:])
        environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **(env or {})}
        for name in unset:
            environment.pop(name, None)
        if ephemeral:
            environment.pop("PREFECT_API_URL", None)
        else:
            environment["PREFECT_API_URL"] = prefect_api
        result = subprocess.run(
            [RBEXPORT, *arguments], capture_output=True, text=True, timeout=timeout, env=environment
        )
        api_log = Path(environment["PREFECT_HOME"]) / "rbexport-api.log"
        if ephemeral and api_log.exists() and "Traceback" in api_log.read_text(errors="replace"):
            pytest.fail(f"the ephemeral Prefect API logged a traceback:\n{api_log.read_text()[-4000:]}", pytrace=False)
        return result

    return run


ENGINE_LINES = ("rbexport: Prefect flow on ", "rbexport: local engine (")


def after_engine_line(stderr: str) -> list[str]:
    """The CLI's lines after its first, which says which engine runs (checked to be that line)."""
    first, *rest = stderr.strip().splitlines()
    assert first.startswith(ENGINE_LINES), stderr
    return rest


def tree(root: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def bucket_tree(storage: S3Storage) -> dict[str, bytes]:
    return {info.key: storage.read(info.key) for info in storage.list()}


def copy_tree(source: Path, target) -> None:
    for key, data in tree(source).items():
        target.write(key, data)


@pytest.fixture
def fresh_clients(monkeypatch):
    """`fresh_clients()` forgets this process's boto3 session and clients
    (rbexport.storage.reset_clients), so that boto3 reads the environment anew; they are
    forgotten again after the test (before monkeypatch restores the environment), so no
    client made with a test's keys outlives it."""
    yield reset_clients
    reset_clients()


def keys_only_in_a_secret_block(monkeypatch, fresh_clients, name: str) -> None:
    """The test server's keys in a Prefect Secret block `name`, and nowhere in boto3's chain
    (the process's clients forgotten): only a run that reads the block can reach the store."""
    import json

    from prefect.blocks.system import Secret

    Secret(value=json.dumps({"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY})).save(
        name, overwrite=True
    )
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    fresh_clients()
