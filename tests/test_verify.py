"""Checksums end to end: the store refuses corrupted uploads, the state keeps every file's
checksum, and `rbexport verify` / the verify-export flow find missing and changed files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from conftest import RBEXPORT, bucket_tree, copy_tree, keys_only_in_a_secret_block
from fault_proxy import FaultProxy

import rbexport.engine
import rbexport.storage.s3
from rbexport.app.cli import main
from rbexport.app.sample import write_sample_project, write_training_project
from rbexport.engine import run_export
from rbexport.errors import ConfigurationError, TransientStorageError
from rbexport.incremental import STATE_KEY
from rbexport.options import ExportOptions
from rbexport.storage import LocalStorage, S3Storage
from rbexport.verify import verify_export

IMAGES = ExportOptions(with_images=True)
MASK = "segmentations/Brain_001/T1.nii.gz"
INSTANCE = "segmentations/Brain_004/T2/instance-2.nii.gz"
IMAGE = "images/Brain_002/FLAIR/slice-0003.dcm"


@pytest.fixture
def project(tmp_path) -> Path:
    """The sample project, with image items."""
    folder = tmp_path / "project"
    write_sample_project(LocalStorage(folder), with_images=True)
    return folder


def flip_byte(storage, key: str) -> None:
    data = bytearray(storage.read(key))
    data[len(data) // 2] ^= 0x01
    storage.write(key, bytes(data))


def run_main(*arguments: str) -> int:
    """`rbexport ...` in this process; the environment main() sets (Prefect's console
    logging off) is put back, so later CLI subprocesses do not inherit it."""
    with mock.patch.dict(os.environ):
        return main(list(arguments))


def verify(capsys, *arguments: str) -> tuple[int, list[str]]:
    code = run_main("verify", *arguments)
    return code, capsys.readouterr().out.splitlines()


def test_a_local_export_verifies_then_a_deleted_and_a_changed_file_are_named(project, tmp_path, capsys):
    export = tmp_path / "export"
    [report] = run_export(str(project), str(export), IMAGES)
    assert report.succeeded
    code, lines = verify(capsys, str(export))
    files = len(report.files) - 1  # every file but the state
    assert code == 0 and lines == [lines[0]]
    assert lines[0].startswith(f"verified {export}: all {files} files present with their recorded checksums")

    (export / MASK).unlink()
    flip_byte(LocalStorage(export), IMAGE)
    code, lines = verify(capsys, str(export))
    assert code == 1
    assert lines[:-1] == [
        f"changed: {IMAGE} (sha256 differs from the recorded one)",
        f"missing: {MASK}",
    ]
    assert lines[-1] == f"{export}: 1 missing, 1 changed; 2 of {files} files not as the export wrote them"


def test_no_export_at_the_destination_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_main("verify", str(tmp_path / "empty")) == 2
    assert capsys.readouterr().err == (
        f"rbexport: error: no export at {tmp_path / 'empty'}: neither tasks.json nor {STATE_KEY} there, "
        "nor in a variant folder\n"
    )


def test_tasks_json_and_the_files_it_names_are_checked_against_the_state(project, tmp_path):
    export = tmp_path / "export"
    run_export(str(project), str(export), IMAGES)
    tasks = json.loads((export / "tasks.json").read_text())
    tasks[0]["series"][0]["segmentations"] = "segmentations/elsewhere.nii.gz"
    (export / "segmentations/elsewhere.nii.gz").write_bytes(b"not written by the export")
    (export / "tasks.json").write_text(json.dumps(tasks))
    result = verify_export(str(export))
    assert [problem.line() for problem in result.problems] == [
        "not in the state: segmentations/elsewhere.nii.gz (tasks.json names it)",
        "changed: tasks.json (sha256 differs from the recorded one)",
    ]


def test_on_s3_copies_by_the_store_are_checked_by_etag_and_the_cli_names_both_problems(make_bucket, seaweed, project):
    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(project, source)
    [report] = run_export(source.url, destination.url, IMAGES, seaweed.endpoint_url)
    images = [record for record in report.files if record.path.startswith("images/")]
    assert images and all(record.sha256 is None and record.etag for record in images)  # copied by SeaweedFS
    state = json.loads(destination.read(STATE_KEY))
    assert state["tasks"]["task-002"]["checksums"][IMAGE].startswith("etag:")
    assert state["tasks"]["task-001"]["checksums"][MASK].startswith("sha256:")
    assert state["indexes"]["tasks.json"].startswith("sha256:") and state["images"] is True

    command = [RBEXPORT, "verify", destination.url, "--endpoint-url", seaweed.endpoint_url]
    passed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith(f"verified {destination.url}: all {len(report.files) - 1} files present")

    destination.delete(MASK)
    flip_byte(destination, IMAGE)
    flip_byte(destination, INSTANCE)
    failed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines()[:-1] == [
        f"changed: {IMAGE} (its ETag is not the one the copy had)",
        f"missing: {MASK}",
        f"changed: {INSTANCE} (sha256 differs from the recorded one)",
    ]


def test_the_flow_fails_listing_the_missing_and_the_changed_file(prefect_api, make_bucket, seaweed, project):
    from prefect.artifacts import Artifact

    from rbexport.flows.verify import verify_export_flow

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(project, source)
    [report] = run_export(source.url, destination.url, ExportOptions(), seaweed.endpoint_url)
    state = verify_export_flow(destination.url, endpoint_url=seaweed.endpoint_url, return_state=True)
    assert state.is_completed() and state.result().ok
    assert "# Export verified" in Artifact.get("verify-report").data

    destination.delete(MASK)
    flip_byte(destination, INSTANCE)
    state = verify_export_flow(destination.url, endpoint_url=seaweed.endpoint_url, return_state=True)
    assert state.is_failed()
    files = len(report.files) - 1
    assert state.message == f"{destination.url}: 1 missing, 1 changed; 2 of {files} files not as the export wrote them"
    table = Artifact.get("verify-problems").data
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows == [
        {"problem": "missing", "file": MASK, "detail": ""},
        {"problem": "changed", "file": INSTANCE, "detail": "sha256 differs from the recorded one"},
    ]


def test_keys_from_a_secret_block_for_the_cli_and_the_flow(
    prefect_api, seaweed, make_bucket, sample_source, monkeypatch, capsys, fresh_clients
):

    from rbexport.flows.verify import verify_export_flow

    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    run_export(source.url, destination.url, ExportOptions(), seaweed.endpoint_url)
    keys_only_in_a_secret_block(monkeypatch, fresh_clients, "verify-keys")
    arguments = [destination.url, "--endpoint-url", seaweed.endpoint_url]
    assert verify(capsys, *arguments)[0] == 2  # no keys
    code, lines = verify(capsys, *arguments, "--credentials-block", "verify-keys")
    assert code == 0 and lines[0].startswith(f"verified {destination.url}")
    state = verify_export_flow(
        destination.url, endpoint_url=seaweed.endpoint_url, credentials_block="verify-keys", return_state=True
    )
    assert state.is_completed() and state.result().ok


def test_the_flow_ends_failed_in_one_line_when_there_is_no_export(prefect_api, tmp_path):
    from rbexport.flows.verify import verify_export_flow

    state = verify_export_flow(str(tmp_path / "nothing"), return_state=True)
    assert state.is_failed() and state.message.startswith(f"no export at {tmp_path / 'nothing'}")
    with pytest.raises(ConfigurationError, match="no export at"):
        state.result()


def test_a_skipped_run_keeps_every_checksum(project, tmp_path):
    export = tmp_path / "export"
    run_export(str(project), str(export), IMAGES)
    before = (export / STATE_KEY).read_bytes()
    [again] = run_export(str(project), str(export), IMAGES)
    assert len(again.skipped) == 6 and not again.exported
    assert (export / STATE_KEY).read_bytes() == before
    for record in json.loads(before)["tasks"].values():
        assert record["files"] and set(record["checksums"]) == set(record["files"])
    assert verify_export(str(export)).ok


def test_an_older_state_without_checksums_is_reported_then_upgraded_by_the_next_run(project, tmp_path):
    export = tmp_path / "export"
    [first] = run_export(str(project), str(export), IMAGES)
    state = json.loads((export / STATE_KEY).read_text())
    del state["indexes"], state["images"]  # as the previous version wrote it
    for record in state["tasks"].values():
        del record["checksums"]
    (export / STATE_KEY).write_text(json.dumps(state))

    result = verify_export(str(export))
    assert not result.ok and {problem.kind for problem in result.problems} == {"no recorded checksum"}
    assert len(result.problems) == len(first.files) - 1  # every file, tasks.json included
    assert "no recorded checksum: tasks.json (export again to record it)" in [p.line() for p in result.problems]

    [upgrade] = run_export(str(project), str(export), IMAGES)
    assert len(upgrade.exported) == 6 and not upgrade.skipped  # exported again: their checksums recorded
    assert verify_export(str(export)).ok


def test_variant_folders_are_each_verified(sample_source, tmp_path):
    export = tmp_path / "export"
    run_export(str(sample_source), str(export), ExportOptions(), variants=["standard", "semantic"])
    result = verify_export(str(export))
    assert result.ok and result.roots == ["semantic", "standard"]
    assert "(2 variants: semantic, standard)" in result.summary()
    (export / "semantic" / MASK).unlink()
    tasks_json = export / "standard/tasks.json"
    tasks_json.write_bytes(tasks_json.read_bytes() + b" ")  # still valid JSON
    result = verify_export(str(export))
    assert [problem.line() for problem in result.problems] == [
        f"missing: semantic/{MASK}",
        "changed: standard/tasks.json (sha256 differs from the recorded one)",
    ]


def test_a_dataset_layout_is_verified_from_its_state(tmp_path):
    project, export = tmp_path / "project", tmp_path / "dataset"
    write_training_project(LocalStorage(project), tasks=3)
    [report] = run_export(str(project), str(export), ExportOptions(layout="nnunet", channels=("T1", "FLAIR")))
    assert report.succeeded and not (export / "tasks.json").exists()
    state = json.loads((export / STATE_KEY).read_text())
    assert set(state["indexes"]) == {"dataset.json", "splits_final.json"}
    result = verify_export(str(export))
    assert result.ok and result.checked == len(report.files) - 1

    label = next(record.path for record in report.files if record.path.startswith("labelsTr/"))
    flip_byte(LocalStorage(export), label)
    (export / "imagesTr" / sorted(os.listdir(export / "imagesTr"))[0]).unlink()
    flip_byte(LocalStorage(export), "dataset.json")
    kinds = sorted((problem.kind, problem.path.split("/")[0]) for problem in verify_export(str(export)).problems)
    assert kinds == [("changed", "dataset.json"), ("changed", "labelsTr"), ("missing", "imagesTr")]


# Checksums on receipt: the store refuses bytes changed on the way.


@pytest.fixture
def checksums_off_by_default(monkeypatch):
    """What a user's environment can say: botocore would then send no checksum of its own."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")


@pytest.mark.parametrize("size", [3000, 12 * 1024**2], ids=["put-object", "multipart"])
def test_a_corrupted_upload_is_refused_and_stores_nothing(make_bucket, monkeypatch, checksums_off_by_default, size):
    monkeypatch.setattr(rbexport.storage.s3, "MULTIPART_THRESHOLD", 6 * 1024**2)  # 12 MiB: two 8 MiB parts
    bucket = make_bucket("corrupted")
    data = os.urandom(size)
    with FaultProxy(bucket.endpoint_url, share=0, corrupt_bodies=1) as proxy:
        through = S3Storage(bucket.bucket, bucket.prefix, proxy.url)
        with pytest.raises(TransientStorageError, match="the bytes it received do not match their checksum"):
            through.write("scan.nii", data)
        assert len(proxy.corrupted) == 1
    assert bucket.stat("scan.nii") is None


def test_an_export_through_a_corrupting_link_retries_and_verifies(
    make_bucket, monkeypatch, checksums_off_by_default, sample_source
):
    monkeypatch.setattr(rbexport.engine, "BACKOFF_SECONDS", 0.05)
    source, destination = make_bucket("project"), make_bucket("export")
    copy_tree(sample_source, source)
    with FaultProxy(source.endpoint_url, share=0, corrupt_bodies=3) as proxy:
        [report] = run_export(source.url, destination.url, ExportOptions(), proxy.url)
    assert len(proxy.corrupted) == 3 and report.succeeded and len(report.exported) == 6
    assert verify_export(destination.url, source.endpoint_url).ok
    clean = Path(str(sample_source) + "-clean")
    run_export(str(sample_source), str(clean), ExportOptions())
    stored = bucket_tree(destination)
    for path in json.loads((clean / STATE_KEY).read_text())["tasks"]["task-001"]["files"]:
        assert stored[path] == (clean / path).read_bytes()


def test_verify_waits_for_a_writer_to_publish(sample_source, tmp_path):
    """A check never runs halfway through a write: it waits for the writer's lease, or
    gives up saying who holds the destination."""
    import threading

    import pytest

    from rbexport.engine import run_export
    from rbexport.lease import DestinationBusy, DestinationLease
    from rbexport.storage import LocalStorage
    from rbexport.verify import verify_settled

    destination = tmp_path / "export"
    run_export(str(sample_source), str(destination), variants=["standard", "semantic"])
    writer = DestinationLease(LocalStorage(destination), owner="the nightly", seconds=5)
    said: list[str] = []
    with writer.held():
        with pytest.raises(DestinationBusy, match="busy since .* by the nightly"):
            verify_settled(str(destination / "standard"), timeout=0.5)
        checking = threading.Thread(
            target=lambda: said.append(verify_settled(str(destination / "standard"), notify=said.append).summary())
        )
        checking.start()
        checking.join(timeout=1.0)
        assert checking.is_alive()  # waiting for the writer
    checking.join(timeout=30)
    assert said[0].startswith(f"waiting for {destination / 'standard'}: a run writes it, since ")
    assert said[-1].startswith(f"verified {destination / 'standard'}: all ")
