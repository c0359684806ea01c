"""Credentials stay secret; least privilege is enough: a read-only identity on the source."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import ACCESS_KEY, SECRET_KEY, copy_tree

from app.seaweed import SeaweedServer
from rbexport.engine import run_export
from rbexport.errors import AccessDeniedError
from rbexport.options import ExportOptions
from rbexport.storage import S3Storage


def logs_and_artifacts_of_the_latest_flow_run() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> str:
        async with get_client() as client:
            [flow_run] = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
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
            logs_and_artifacts_of_the_latest_flow_run(),
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


def use_keys(monkeypatch, access: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setattr("rbexport.storage._session", None)  # a fresh credential chain
    monkeypatch.setattr("rbexport.storage._clients", {})
    from rbexport.task_export import storage_for

    storage_for.cache_clear()


def test_read_only_access_to_the_source_is_enough(store_with_identities, sample_source, tmp_path, monkeypatch):
    endpoint = store_with_identities.endpoint_url
    use_keys(monkeypatch, "admin-key", "admin-secret-123")
    for bucket in ("scans", "exports"):
        S3Storage(bucket, "", endpoint).create_bucket()
    copy_tree(sample_source, S3Storage("scans", "brain", endpoint))

    use_keys(monkeypatch, "exporter-key", "exporter-secret-456")
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


def test_credentials_from_a_prefect_secret_block(prefect_api, seaweed, make_bucket, sample_source, monkeypatch):
    from prefect.blocks.system import Secret

    from flows.export import export_project
    from rbexport.errors import ConfigurationError

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    Secret(value=json.dumps({"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY})).save(
        "seaweed-keys", overwrite=True
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # nothing in boto3's chain
        monkeypatch.delenv(name)
    monkeypatch.setattr("rbexport.storage._session", None)
    monkeypatch.setattr("rbexport.storage._clients", {})
    from rbexport.task_export import storage_for

    storage_for.cache_clear()
    [report] = export_project(
        source.url, destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="seaweed-keys"
    )
    assert len(report.exported) == 6
    from pydantic import SecretStr

    from rbexport.storage import S3Access, S3Credentials

    keys = S3Access(seaweed.endpoint_url, S3Credentials(ACCESS_KEY, SecretStr(SECRET_KEY)))
    stored_report = S3Storage(destination.bucket, destination.prefix, keys).read("export-report.json").decode()
    assert SECRET_KEY not in logs_and_artifacts_of_the_latest_flow_run() + stored_report + repr(keys)
    with pytest.raises(ConfigurationError, match="no Prefect Secret block named 'nope'"):
        export_project(source.url, destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="nope")
    Secret(value="not json").save("broken-keys", overwrite=True)
    with pytest.raises(ConfigurationError, match="must hold a JSON object with aws_access_key_id"):
        export_project(source.url, destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="broken-keys")
