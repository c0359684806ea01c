"""Credentials stay secret; least privilege is enough: a read-only identity on the source."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from conftest import ACCESS_KEY, SECRET_KEY, copy_tree, keys_only_in_a_secret_block

from rbexport.app.seaweed import SeaweedServer
from rbexport.engine import run_export
from rbexport.errors import AccessDeniedError
from rbexport.options import ExportOptions
from rbexport.storage import S3Storage


def logs_and_artifacts_of_the_flow_run_into(destination: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> str:
        async with get_client() as client:
            # The run of this test, not the latest: a schedule an earlier test file left may have started one since.
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
            [flow_run] = [run for run in runs if run.parameters.get("destination") == destination]
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
            artifacts = await client.read_artifacts()
            return "\n".join(
                [
                    json.dumps(flow_run.parameters),
                    *(log.message for log in logs),
                    *(str(artifact.data) for artifact in artifacts),
                ]
            )

    return asyncio.run(read())


def test_no_output_of_a_failing_run_holds_the_secret(run_cli, seaweed, make_bucket, sample_source, tmp_path):
    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    source.delete("masks/brain-003.nii.gz")  # one task fails
    result = run_cli(
        "--verbose", "run", "--source", source.url, "--dest", destination.url, "--endpoint-url", seaweed.endpoint_url
    )
    assert result.returncode == 1
    assert "failed task-003: masks/brain-003.nii.gz: mask file not found" in result.stdout
    everything = "\n".join(
        [
            result.stdout,
            result.stderr,  # --verbose: Prefect's own logs too
            destination.read("export-report.json").decode(),
            destination.read("tasks.json").decode(),
            logs_and_artifacts_of_the_flow_run_into(destination.url),
        ]
    )
    assert "task-003" in everything and "Flow run" in result.stderr
    assert SECRET_KEY not in everything


IDENTITIES = {
    "identities": [
        {
            "name": "admin",
            "credentials": [{"accessKey": "admin-key", "secretKey": "admin-secret-123"}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        },
        {
            "name": "exporter",
            "credentials": [{"accessKey": "exporter-key", "secretKey": "exporter-secret-456"}],
            "actions": ["Read:scans", "List:scans", "Read:exports", "List:exports", "Write:exports"],
        },
    ]
}


@pytest.fixture(scope="module")
def store_with_identities(tmp_path_factory):
    folder = tmp_path_factory.mktemp("identities")
    config = folder / "s3.json"
    config.write_text(json.dumps(IDENTITIES))
    with SeaweedServer(folder / "data", extra_args=(f"-s3.config={config}",)) as server:
        yield server


def use_keys(monkeypatch, fresh_clients, access: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    fresh_clients()  # a fresh credential chain


WRONG_SECRET = "not-the-secret-3b9e71c0"
SESSION_TOKEN = "session-token-5a0c2d84"


def everything_prefect_recorded_since(start, destination: str) -> str:
    """What the API holds about the flow run into `destination` (its parameters, state, task runs' states,
    logs, artifacts) and every event since `start`, as text; once the run's block-loaded
    event is there, so the CLI's events have reached the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.events.filters import EventFilter, EventOccurredFilter
    from prefect_helpers import wait_for

    async def events() -> list:
        async with get_client() as client:
            page = await client.read_events(filter=EventFilter(occurred=EventOccurredFilter(since=start)), limit=50)
            found = list(page.events)
            while page.next_page:
                page = await client.read_events_page(page.next_page)
                found += page.events
            return found

    async def read() -> str:
        async with get_client() as client:
            # The run of this test, not the latest: a schedule an earlier test file left may have started one since.
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
            [flow_run] = [run for run in runs if run.parameters.get("destination") == destination]
            ids = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            task_runs = await client.read_task_runs(flow_run_filter=ids)
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
            artifacts = await client.read_artifacts(flow_run_filter=ids)
            return "\n".join(
                [
                    flow_run.model_dump_json(),
                    *(task_run.model_dump_json() for task_run in task_runs),
                    *(log.message for log in logs),
                    *(artifact.model_dump_json() for artifact in artifacts),
                ]
            )

    recorded = wait_for(
        lambda: [event for event in asyncio.run(events()) if event.event.endswith(".loaded")] and asyncio.run(events()),
        timeout=30,
        what="the run's events",
    )
    return "\n".join([asyncio.run(read()), *(event.model_dump_json() for event in recorded)])


@pytest.mark.parametrize(
    "kind, secret",
    [
        ("secret", SECRET_KEY),
        ("aws-credentials", SECRET_KEY),
        ("minio-credentials", SECRET_KEY),
        ("secret", WRONG_SECRET),
        ("aws-credentials", WRONG_SECRET),
        ("minio-credentials", WRONG_SECRET),
    ],
    ids=["secret", "aws", "minio", "secret-wrong", "aws-wrong", "minio-wrong"],
)
def test_no_trace_of_a_credentials_block_secret(run_cli, seaweed, make_bucket, sample_source, kind, secret):
    """A run with keys from each kind of block, right or wrong, leaves the secret (and the
    session token) nowhere: output, logs, flow and task runs, artifacts, events, report, state."""
    from prefect.blocks.system import Secret
    from prefect.types._datetime import now
    from prefect_aws import AwsCredentials, MinIOCredentials

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    source.delete("masks/brain-003.nii.gz")  # one task fails: its failure goes into the report and artifacts
    name = f"leak-{uuid.uuid4().hex[:8]}"
    endpoint = {"endpoint_url": seaweed.endpoint_url}
    if kind == "secret":
        keys = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": secret}
        if secret == WRONG_SECRET:  # SeaweedFS refuses any session token: only where the run fails anyway
            keys["aws_session_token"] = SESSION_TOKEN
        Secret(value=json.dumps(keys)).save(name)
    elif kind == "aws-credentials":
        AwsCredentials(
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            aws_session_token=SESSION_TOKEN if secret == WRONG_SECRET else None,
            aws_client_parameters=endpoint,
        ).save(name)
    else:
        MinIOCredentials(minio_root_user=ACCESS_KEY, minio_root_password=secret, aws_client_parameters=endpoint).save(
            name
        )
    start = now("UTC")
    result = run_cli(
        "--verbose",
        "run",
        "--source",
        source.url,
        "--dest",
        destination.url,
        "--credentials-block",
        f"{kind}/{name}",
        *(["--endpoint-url", seaweed.endpoint_url] if kind == "secret" else []),
        env={"AWS_EC2_METADATA_DISABLED": "true"},
        unset=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    )
    written = [key for key in ("export-report.json", "tasks.json", ".rbexport/state.json") if destination.exists(key)]
    if secret == WRONG_SECRET:
        assert result.returncode == 2, result.stderr
        denied = [
            f"rbexport: error: access denied to s3://{bucket} (403)" for bucket in (source.bucket, destination.bucket)
        ]
        assert any(line in result.stderr for line in denied), result.stderr
        assert written == []
    else:
        assert result.returncode == 1, result.stderr  # the run went through: five exported, one failed
        assert "failed task-003: masks/brain-003.nii.gz: mask file not found" in result.stdout
        assert written == ["export-report.json", "tasks.json", ".rbexport/state.json"]
    everything = "\n".join(
        [
            result.stdout,
            result.stderr,  # --verbose: Prefect's own logs too
            *(destination.read(key).decode() for key in written),
            everything_prefect_recorded_since(start, destination.url),
        ]
    )
    assert "Flow run" in result.stderr and f"{kind}/{name}" in everything  # the haystack is the run's
    for needle in (secret, SESSION_TOKEN):
        assert needle not in everything


def test_read_only_access_to_the_source_is_enough(
    store_with_identities, sample_source, tmp_path, monkeypatch, fresh_clients
):
    endpoint = store_with_identities.endpoint_url
    use_keys(monkeypatch, fresh_clients, "admin-key", "admin-secret-123")
    for bucket in ("scans", "exports"):
        S3Storage(bucket, "", endpoint).create_bucket()
    copy_tree(sample_source, S3Storage("scans", "brain", endpoint))

    use_keys(monkeypatch, fresh_clients, "exporter-key", "exporter-secret-456")
    with pytest.raises(AccessDeniedError):  # the exporter really cannot write the source...
        S3Storage("scans", "brain", endpoint).write("probe", b"x")
    reports = run_export(
        "s3://scans/brain", "s3://exports/brain", ExportOptions(), endpoint, variants=["standard", "semantic"]
    )
    assert all(len(report.exported) == 6 for report in reports)  # ...and needs not
    assert S3Storage("exports", "brain/semantic", endpoint).exists("tasks.json")


def test_a_wrong_key_is_access_denied_with_exit_code_2(run_cli, store_with_identities, tmp_path):
    result = run_cli(
        "run",
        "--source",
        "s3://scans/brain",
        "--dest",
        str(tmp_path / "export"),
        "--endpoint-url",
        store_with_identities.endpoint_url,
        env={"AWS_ACCESS_KEY_ID": "exporter-key", "AWS_SECRET_ACCESS_KEY": "not-the-secret-789"},
    )
    assert result.returncode == 2
    assert "rbexport: error: access denied to s3://scans" in result.stderr
    assert "not-the-secret-789" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_credentials_from_a_prefect_secret_block(
    prefect_api, seaweed, make_bucket, sample_source, monkeypatch, fresh_clients
):
    from prefect.blocks.system import Secret

    from rbexport.errors import ConfigurationError
    from rbexport.flows.export import export_project

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    keys_only_in_a_secret_block(monkeypatch, fresh_clients, "seaweed-keys")
    [report] = export_project(
        source.url, destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="seaweed-keys"
    )
    assert len(report.exported) == 6
    from pydantic import SecretStr

    from rbexport.storage import S3Access, S3Credentials

    keys = S3Access(seaweed.endpoint_url, S3Credentials(ACCESS_KEY, SecretStr(SECRET_KEY)))
    stored_report = S3Storage(destination.bucket, destination.prefix, keys).read("export-report.json").decode()
    assert SECRET_KEY not in logs_and_artifacts_of_the_flow_run_into(destination.url) + stored_report + repr(keys)
    with pytest.raises(ConfigurationError, match="no Prefect Secret block named 'nope'"):
        export_project(source.url, destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="nope")
    Secret(value="not json").save("broken-keys", overwrite=True)
    with pytest.raises(ConfigurationError, match="must hold a JSON object with aws_access_key_id"):
        export_project(source.url, destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="broken-keys")
