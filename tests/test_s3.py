"""Exports on a real S3-compatible server (SeaweedFS started by the tests), and the storage layer."""

from __future__ import annotations

import json
import os

import pytest
from conftest import bucket_tree, copy_tree, tree

from rbexport.app.sample import write_sample_project
from rbexport.errors import AccessDeniedError, ObjectNotFoundError
from rbexport.nifti import read_label_map
from rbexport.storage import MULTIPART_THRESHOLD, LocalStorage, S3Storage


def test_s3_to_s3_export_equals_the_local_folder_export_file_for_file(
    run_cli, seaweed, make_bucket, sample_source, tmp_path
):
    source = make_bucket("studies/brain")
    copy_tree(sample_source, source)
    source_before = bucket_tree(source)
    destination = make_bucket("exports/v1")

    # The flow on the session's API (the default where one is configured) beside the local engine.
    result = run_cli("run", "--source", source.url, "--dest", destination.url, "--endpoint-url", seaweed.endpoint_url)
    assert result.returncode == 0, result.stderr
    local = tmp_path / "local-export"
    result = run_cli("run", "--source", str(sample_source), "--dest", str(local), engine="local")
    assert result.returncode == 0, result.stderr

    on_s3, on_disk = bucket_tree(destination), tree(local)
    assert set(on_s3) == set(on_disk)
    # The report holds timings and locations, the state the mask objects' versions
    # (S3 ETags there, file times here); every exported file is the same.
    for path in set(on_disk) - {"export-report.json", ".rbexport/state.json"}:
        assert on_s3[path] == on_disk[path], path
    assert len([path for path in on_s3 if path.startswith("segmentations/")]) == 12
    report = json.loads(on_s3["export-report.json"])
    assert report["source"] == source.url and report["destination"] == destination.url
    for record in report["files"]:
        assert on_s3[record["path"]].__len__() == record["bytes"]
    assert bucket_tree(source) == source_before  # the source is never written to


def test_endpoint_from_the_environment(run_cli, seaweed, make_bucket, sample_source, tmp_path):
    source = make_bucket("p")
    copy_tree(sample_source, source)
    result = run_cli(
        "run",
        "--source",
        source.url,
        "--dest",
        str(tmp_path / "export"),
        "--no-consensus",
        env={"AWS_ENDPOINT_URL": seaweed.endpoint_url},
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    assert "6 tasks exported" in result.stdout


def test_mask_urls_outside_the_source_need_an_allowed_bucket(run_cli, seaweed, make_bucket, sample_source, tmp_path):
    source = make_bucket("project")
    elsewhere = make_bucket("shared-masks")
    copy_tree(sample_source, source)
    elsewhere.write("brain-001.nii.gz", (sample_source / "masks/brain-001.nii.gz").read_bytes())
    tasks = json.loads((sample_source / "tasks.json").read_text())
    tasks[0]["series"][0]["segmentations"] = elsewhere.url_of("brain-001.nii.gz")
    tasks[1]["series"][0]["segmentations"] = source.url_of("masks/brain-002-T1.nii.gz")  # inside: always fine
    source.write("tasks.json", json.dumps(tasks).encode())
    arguments = ("run", "--source", source.url, "--endpoint-url", seaweed.endpoint_url)

    refused = run_cli(*arguments, "--dest", str(tmp_path / "refused"), engine="local")
    assert refused.returncode == 1
    assert (
        f"failed task-001: {elsewhere.url_of('brain-001.nii.gz')}: lies outside the source {source.url}; "
        f"allow bucket '{elsewhere.bucket}' explicitly to read it"
    ) in refused.stdout
    assert "task-002" not in refused.stdout

    allowed = run_cli(
        *arguments, "--dest", str(tmp_path / "allowed"), "--allow-bucket", elsewhere.bucket, engine="local"
    )
    assert allowed.returncode == 0, allowed.stdout
    exported = read_label_map((tmp_path / "allowed/segmentations/Brain_001/T1.nii.gz").read_bytes())
    original = read_label_map((sample_source / "masks/brain-001.nii.gz").read_bytes())
    assert (exported.values == original.values).all() and exported.values.any()


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, make_bucket):
    return LocalStorage(tmp_path / "store") if request.param == "local" else make_bucket("root/prefix")


def test_storage_reads_writes_lists_and_deletes(storage):
    storage.write("a/b/one.bin", b"1")
    storage.write("a/two.bin", b"22")
    storage.write("three.bin", b"333")
    assert storage.read("a/b/one.bin") == b"1"
    assert [(info.key, info.size) for info in storage.list("a/")] == [("a/b/one.bin", 1), ("a/two.bin", 2)]
    assert sorted(info.key for info in storage.list()) == ["a/b/one.bin", "a/two.bin", "three.bin"]
    assert storage.stat("a/two.bin").size == 2 and storage.stat("missing") is None
    storage.write("a/two.bin", b"new")
    assert storage.read("a/two.bin") == b"new"
    storage.delete("a/two.bin")
    assert not storage.exists("a/two.bin")
    with pytest.raises(ObjectNotFoundError, match="not found: .*missing.bin"):
        storage.read("missing.bin")


def test_large_objects_go_up_in_parts(make_bucket):
    storage = make_bucket("big")
    data = os.urandom(MULTIPART_THRESHOLD + 5 * 1024**2)
    storage.write("volume.nii", data)
    assert storage.read("volume.nii") == data
    head = storage.client.head_object(Bucket=storage.bucket, Key=storage._key("volume.nii"))
    assert "-" in head["ETag"]  # a multipart upload's ETag is "<md5 of parts>-<part count>"


def test_wrong_credentials_are_access_denied(seaweed, make_bucket, monkeypatch, fresh_clients):
    storage = make_bucket("p")
    storage.write("x", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
    fresh = S3Storage(storage.bucket, storage.prefix, seaweed.endpoint_url)
    fresh_clients()  # boto3 reads the environment anew
    with pytest.raises(AccessDeniedError) as denied:
        fresh.read("x")
    assert "wrong-secret-123" not in str(denied.value)
    assert "access denied" in str(denied.value)


def test_s3_source_with_a_local_destination_and_the_sample_project_api(seaweed, make_bucket, tmp_path):
    from rbexport.engine import run_export
    from rbexport.options import ExportOptions

    source = make_bucket("p")
    write_sample_project(source)
    [report] = run_export(source.url, str(tmp_path / "export"), ExportOptions(), endpoint_url=seaweed.endpoint_url)
    assert report.succeeded and len(report.exported) == 6
    assert (tmp_path / "export/segmentations/Brain_004/T2/instance-2.nii.gz").exists()
