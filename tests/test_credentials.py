"""S3 credentials from Prefect blocks: prefect-aws's AwsCredentials and MinIOCredentials
(and the Secret block) against the real SeaweedFS and Prefect server.

Each block is made the way a user makes it (`AwsCredentials(...).save(NAME)`), and the
export runs with no S3 keys in its environment, so only the block's keys can work. The
endpoint comes from the block alone where the test says so.
"""

from __future__ import annotations

import json
import sys
import uuid

import pytest
from conftest import ACCESS_KEY, SECRET_KEY, after_engine_line, copy_tree
from pydantic import SecretStr

from rbexport.errors import ConfigurationError
from rbexport.storage import LocalStorage, S3Access, S3Credentials, S3Storage

# What boto3's chain would find: none of it may be in the run's environment.
KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
# No instance-metadata lookup (seconds of timeouts) when the chain is asked and finds nothing.
NO_METADATA = {"AWS_EC2_METADATA_DISABLED": "true"}
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there


def block_name() -> str:
    return f"s3-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def drop_keys(monkeypatch, fresh_clients):
    """Call it once the buckets are made: from then on this process (the in-process flows)
    has no S3 keys in its environment, and fresh boto3 sessions and clients, so nothing
    holds the keys from before."""

    def drop() -> None:
        for name in KEY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        fresh_clients()

    return drop


def exported_tasks(destination: S3Storage) -> list[str]:
    """The task ids in the destination's tasks.json, read with the test server's keys given
    explicitly (the environment may have none)."""
    keys = S3Access(destination.endpoint_url, S3Credentials(ACCESS_KEY, SecretStr(SECRET_KEY)))
    tasks = S3Storage(destination.bucket, destination.prefix, keys).read("tasks.json")
    return sorted(task["taskId"] for task in json.loads(tasks))


def test_the_cli_takes_keys_and_endpoint_from_an_aws_credentials_block(run_cli, seaweed, make_bucket, sample_source):
    from prefect_aws import AwsCredentials

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    name = block_name()
    AwsCredentials(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": seaweed.endpoint_url},
    ).save(name)
    # The environment's endpoint is a default the block's overrides: nothing listens there.
    environment = {**NO_METADATA, "AWS_ENDPOINT_URL": DEAD_ENDPOINT}
    run = ("run", "--source", source.url, "--dest", destination.url)

    without_block = run_cli(*run, "--endpoint-url", seaweed.endpoint_url, env=environment, unset=KEY_VARIABLES)
    assert without_block.returncode == 2, without_block.stderr  # no keys in the environment indeed
    assert "no S3 credentials found" in without_block.stderr

    result = run_cli(*run, "--credentials-block", f"aws-credentials/{name}", env=environment, unset=KEY_VARIABLES)
    assert result.returncode == 0, result.stderr
    assert "6 tasks exported" in result.stdout
    assert len(exported_tasks(destination)) == 6

    conflict = run_cli(
        *run,
        "--credentials-block",
        f"aws-credentials/{name}",
        "--endpoint-url",
        DEAD_ENDPOINT,
        env=environment,
        unset=KEY_VARIABLES,
    )
    assert conflict.returncode == 2
    assert after_engine_line(conflict.stderr) == [
        f"rbexport: error: two endpoints: endpoint_url {DEAD_ENDPOINT} and {seaweed.endpoint_url} from "
        f"AwsCredentials block {name!r}: give the endpoint in one place (or the same in both)"
    ]


def test_the_flow_with_a_minio_credentials_block(prefect_api, seaweed, make_bucket, sample_source, drop_keys):
    from prefect_aws import MinIOCredentials

    from rbexport.flows.export import export_project
    from rbexport.flows.watch import watch_source

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    drop_keys()
    name = block_name()
    MinIOCredentials(
        minio_root_user=ACCESS_KEY,
        minio_root_password=SECRET_KEY,
        aws_client_parameters={"endpoint_url": seaweed.endpoint_url, "verify": False},
    ).save(name)

    [report] = export_project(source.url, destination.url, credentials_block=f"minio-credentials/{name}")
    assert len(report.exported) == 6
    assert len(exported_tasks(destination)) == 6
    # The watcher reads the source with the block too: its first watch records the objects
    # already there as its baseline (no event), a later one finds a new object.
    assert watch_source(source.url, credentials_block=f"minio-credentials/{name}") == 0
    keys = S3Access(seaweed.endpoint_url, S3Credentials(ACCESS_KEY, SecretStr(SECRET_KEY)))
    S3Storage(source.bucket, source.prefix, keys).write("masks/late.nii.gz", b"not read by this test")
    assert watch_source(source.url, credentials_block=f"minio-credentials/{name}") == 1
    [again] = export_project(  # the same endpoint given twice is one endpoint
        source.url,
        destination.url,
        endpoint_url=seaweed.endpoint_url + "/",
        credentials_block=f"minio-credentials/{name}",
    )
    assert len(again.skipped) == 6

    with pytest.raises(ConfigurationError, match=r"two endpoints: endpoint_url http://127\.0\.0\.1:9 and http://"):
        export_project(
            source.url, destination.url, endpoint_url=DEAD_ENDPOINT, credentials_block=f"minio-credentials/{name}"
        )
    with pytest.raises(ConfigurationError, match="no S3 credentials found"):  # the keys were the block's
        export_project(source.url, destination.url, endpoint_url=seaweed.endpoint_url)


def test_an_aws_credentials_block_with_a_profile(
    prefect_api, seaweed, make_bucket, sample_source, drop_keys, tmp_path, monkeypatch
):
    from prefect_aws import AwsCredentials

    from rbexport.flows.export import export_project

    (tmp_path / "credentials").write_text(
        f"[seaweed]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    (tmp_path / "config").write_text("[profile seaweed]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    drop_keys()
    name, missing = block_name(), block_name()
    AwsCredentials(profile_name="seaweed", aws_client_parameters={"endpoint_url": seaweed.endpoint_url}).save(name)
    AwsCredentials(profile_name="nope", aws_client_parameters={"endpoint_url": seaweed.endpoint_url}).save(missing)

    [report] = export_project(source.url, destination.url, credentials_block=f"aws-credentials/{name}")
    assert len(report.exported) == 6
    with pytest.raises(ConfigurationError, match=r"no AWS profile 'nope' in this machine's AWS config files"):
        export_project(source.url, destination.url, credentials_block=f"aws-credentials/{missing}")


def test_a_block_that_is_not_there_or_not_a_credentials_block_is_named(run_cli, prefect_api, sample_source, tmp_path):
    from rbexport.tasks.credentials import s3_access

    for block, message in [
        ("aws-credentials/not-there", "no Prefect AwsCredentials block named 'not-there'"),
        (
            "s3-bucket/exports",
            "credentials block 's3-bucket/exports': name a block as secret/NAME, aws-credentials/NAME or "
            "minio-credentials/NAME (a bare NAME is a Secret block)",
        ),
    ]:
        result = run_cli(
            "run", "--source", str(sample_source), "--dest", str(tmp_path / "export"), "--credentials-block", block
        )
        assert result.returncode == 2, (block, result.stderr)
        if block.startswith("s3-bucket/"):  # a name of the wrong form: refused before any engine starts
            assert result.stderr.strip().splitlines() == [f"rbexport: error: {message}"]
        else:  # the block is looked for by the flow
            assert after_engine_line(result.stderr) == [f"rbexport: error: {message}"]
    assert not (tmp_path / "export").exists()
    for block, message in [
        ("minio-credentials/not-there", "no Prefect MinIOCredentials block named 'not-there'"),
        ("secret/not-there", "no Prefect Secret block named 'not-there'"),
        ("not-there", "no Prefect Secret block named 'not-there'"),
        ("aws-credentials/", "credentials block 'aws-credentials/': name a block as secret/NAME"),
        ("secret/a/b", "credentials block 'secret/a/b': name a block as secret/NAME"),
    ]:
        with pytest.raises(ConfigurationError, match=f"^{message}"):
            s3_access(None, block)


def test_what_a_block_holds_that_rbexport_cannot_honour_is_refused(prefect_api):
    from prefect_aws import AwsCredentials, MinIOCredentials

    from rbexport.tasks.credentials import s3_access

    refused = {
        "config": (
            AwsCredentials(
                aws_access_key_id="key",
                aws_secret_access_key="secret-of-a-refused-block",
                aws_client_parameters={"config": {"signature_version": "s3v4"}},
            ),
            r"does not support aws_client_parameters config: remove it from the block",
        ),
        "half-keys": (
            AwsCredentials(aws_access_key_id="key"),
            "needs both aws_access_key_id and aws_secret_access_key",
        ),
        "profile-and-keys": (
            AwsCredentials(
                profile_name="p", aws_access_key_id="key", aws_secret_access_key="secret-of-a-refused-block"
            ),
            "has keys and a profile_name: keep one of them",
        ),
        "no-tls": (
            MinIOCredentials(
                minio_root_user="user",
                minio_root_password="secret-of-a-refused-block",
                aws_client_parameters={"use_ssl": False, "endpoint_url": "https://minio.example.org"},
            ),
            r"does not support aws_client_parameters use_ssl: .*give an http:// endpoint_url",
        ),
        "bad-endpoint": (
            MinIOCredentials(
                minio_root_user="user",
                minio_root_password="secret-of-a-refused-block",
                aws_client_parameters={"endpoint_url": "minio.example.org:9000"},
            ),
            r"invalid endpoint URL 'minio\.example\.org:9000' in aws_client_parameters",
        ),
    }
    for label, (block, message) in refused.items():
        name = f"{label}-{uuid.uuid4().hex[:6]}"
        block.save(name)
        kind = "aws-credentials" if isinstance(block, AwsCredentials) else "minio-credentials"
        with pytest.raises(ConfigurationError, match=message) as raised:
            s3_access(None, f"{kind}/{name}")
        assert "secret-of-a-refused-block" not in str(raised.value)

    # What it does honour: region, TLS verification, the endpoint (with a same run endpoint).
    MinIOCredentials(
        minio_root_user="user",
        minio_root_password="pw",
        region_name="eu-west-1",
        aws_client_parameters={"endpoint_url": "http://minio:9000", "use_ssl": False, "verify": False},
    ).save("honoured", overwrite=True)
    access = s3_access("http://minio:9000", "minio-credentials/honoured")
    assert (access.endpoint_url, access.region_name, access.verify) == ("http://minio:9000", "eu-west-1", False)
    assert access.credentials is not None and access.credentials.access_key_id == "user"


def test_without_prefect_aws_the_error_says_what_to_install(prefect_api, monkeypatch):
    from rbexport.tasks.credentials import s3_access

    monkeypatch.setitem(sys.modules, "prefect_aws", None)  # `import prefect_aws` fails as when not installed
    with pytest.raises(ConfigurationError) as raised:
        s3_access(None, "aws-credentials/s3-keys")
    assert str(raised.value) == (
        "the credentials block aws-credentials/s3-keys needs prefect-aws, which is not installed: "
        "pip install 'rbexport[aws]'"
    )


def test_a_secret_block_by_its_slug_with_the_environment_s_endpoint(
    run_cli, seaweed, make_bucket, sample_source, tmp_path
):
    """A Secret block has no endpoint: AWS_ENDPOINT_URL, the default, still applies."""
    from prefect.blocks.system import Secret

    source = make_bucket("project")
    copy_tree(sample_source, source)
    name = block_name()
    Secret(value=json.dumps({"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY})).save(name)
    result = run_cli(
        "run",
        "--source",
        source.url,
        "--dest",
        str(tmp_path / "export"),
        "--credentials-block",
        f"secret/{name}",
        env={**NO_METADATA, "AWS_ENDPOINT_URL": seaweed.endpoint_url},
        unset=KEY_VARIABLES,
    )
    assert result.returncode == 0, result.stderr
    assert "6 tasks exported" in result.stdout
    assert len(json.loads(LocalStorage(tmp_path / "export").read("tasks.json"))) == 6
