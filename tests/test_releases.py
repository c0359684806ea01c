"""Releases (SPEC 9): named, immutable copies of an export, through the CLI and the flow,
on SeaweedFS and local folders."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import bucket_tree, copy_tree, tree

import rbexport.releases
from rbexport.app.sample import write_training_project
from rbexport.engine import run_export
from rbexport.errors import ConfigurationError
from rbexport.lease import DestinationLease
from rbexport.options import ExportOptions
from rbexport.releases import create_release
from rbexport.storage import LocalStorage, S3Storage

INTERNAL = (".rbexport/", "export-report.json")


def released_part(files: dict[str, bytes]) -> dict[str, bytes]:
    """What of an export a release holds: everything but its state, lease and report."""
    return {key: data for key, data in files.items() if not key.startswith(INTERNAL)}


def local_cli(run_cli, *arguments: str):
    return run_cli(*arguments, ephemeral=True)


def test_a_release_of_a_folder_export_is_its_files_and_a_manifest_written_last(run_cli, sample_source, tmp_path):
    export, release = tmp_path / "export", tmp_path / "releases" / "v1"
    run_export(str(sample_source), str(export))
    result = run_cli("release", "create", str(export), str(release))
    assert result.returncode == 0, result.stderr
    assert "release v1 of" in result.stdout and "6 tasks, 13 files" in result.stdout
    files = tree(release)
    manifest = json.loads(files.pop("release.json"))
    assert files == released_part(tree(export))
    assert manifest["name"] == "v1" and manifest["export"] == str(export) and manifest["tasks"] == 6
    assert manifest["exports"][""]["options"]["binary_mask"] is None and manifest["exports"][""]["filters"] == {}
    recorded = {item["path"]: item for item in manifest["files"]}
    import hashlib

    assert all(recorded[path]["sha256"] == hashlib.sha256(data).hexdigest() for path, data in files.items())
    assert recorded["segmentations/Brain_001/T1.nii.gz"]["task"] == "task-001"
    result = run_cli("verify", str(release))
    assert result.returncode == 0 and "all 13 files present" in result.stdout
    (release / "segmentations/Brain_001/T1.nii.gz").write_bytes(b"changed")
    (release / "extra.txt").write_text("x")
    result = run_cli("verify", str(release))
    assert result.returncode == 1
    assert "changed: segmentations/Brain_001/T1.nii.gz" in result.stdout
    assert "not in the state: extra.txt (release.json does not list it)" in result.stdout


def test_list_and_diff_name_the_releases_and_the_tasks_that_changed(run_cli, sample_source, tmp_path):
    export = tmp_path / "export"
    run_export(str(sample_source), str(export))
    assert run_cli("release", "create", str(export), str(tmp_path / "r" / "one")).returncode == 0
    tasks = json.loads((sample_source / "tasks.json").read_text())
    removed = tasks.pop(1)
    added = json.loads(json.dumps(tasks[2]))
    added["taskId"], added["name"] = "task-007", "Brain_007"
    tasks.append(added)
    (sample_source / "tasks.json").write_text(json.dumps(tasks))
    (sample_source / "masks/brain-003.nii.gz").write_bytes((sample_source / "masks/brain-001.nii.gz").read_bytes())
    run_export(str(sample_source), str(export), prune=True)
    result = run_cli("release", "create", str(export), str(tmp_path / "r" / "two"), "--name", "2026-03-02")
    assert result.returncode == 0, result.stderr
    result = run_cli("release", "list", str(export))
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["one", "2026-03-02"]
    assert lines[0].split("\t")[2:] == ["6 tasks", str(tmp_path / "r" / "one")]
    result = run_cli("release", "diff", str(tmp_path / "r" / "one"), str(tmp_path / "r" / "two"))
    assert result.returncode == 0, result.stderr
    assert f"removed {removed['taskId']}" in result.stdout and "added task-007" in result.stdout
    assert "changed task-003" in result.stdout
    assert "task-001" not in result.stdout  # its files are the same
    # The first release is as it was made: the export's prune did not touch it.
    assert run_cli("verify", str(tmp_path / "r" / "one")).returncode == 0


def test_a_release_is_never_written_again(run_cli, sample_source, tmp_path):
    export, release = tmp_path / "export", tmp_path / "release"
    run_export(str(sample_source), str(export))
    assert run_cli("release", "create", str(export), str(release)).returncode == 0
    before = tree(release)
    cases = {
        ("release", "create", str(export), str(release)): "is already a release (release.json is there)",
        ("run", "--engine", "local", "--source", str(sample_source), "--dest", str(release)): "is a release",
        (
            "run",
            "--engine",
            "local",
            "--source",
            str(sample_source),
            "--dest",
            str(release / "standard"),
        ): "is a release",
        ("run", "--source", str(sample_source), "--dest", str(release), "--prune", "--replace-layout"): "is a release",
    }
    for arguments, message in cases.items():
        result = run_cli(*arguments)
        assert result.returncode == 2, (arguments, result.stdout)
        [line] = result.stderr.strip().splitlines()
        assert message in line and "Traceback" not in result.stderr
    # Later runs of the export, pruned, of another layout: the release stays as it was.
    (sample_source / "tasks.json").write_text(json.dumps(json.loads((sample_source / "tasks.json").read_text())[:2]))
    run_export(str(sample_source), str(export), prune=True)
    run_export(str(sample_source), str(export), variants=["standard", "semantic"], replace_layout=True, prune=True)
    assert tree(release) == before


def test_bad_input_is_one_line_and_nothing_is_lost(run_cli, sample_source, tmp_path):
    export = tmp_path / "export"
    run_export(str(sample_source), str(export))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    cases = {
        (
            str(export),
            str(occupied),
        ): "is not empty (1 object, such as notes.txt): a release goes into an empty location",
        (str(tmp_path / "nothing"), str(tmp_path / "r1")): "no export at",
        (str(export), str(tmp_path / "r2"), "--name", "../v1"): "is not a safe name",
        (str(export), str(export / "releases" / "v1")): "overlap: a release goes outside its export",
    }
    for arguments, message in cases.items():
        result = run_cli("release", "create", *arguments)
        assert result.returncode == 2, arguments
        [line] = result.stderr.strip().splitlines()
        assert message in line, line
    assert (occupied / "notes.txt").read_text() == "mine" and len(list(occupied.iterdir())) == 1
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    assert not (export / "releases").exists()


def test_an_interrupted_release_looks_unfinished_and_the_same_command_finishes_it(sample_source, tmp_path, monkeypatch):
    export, release = tmp_path / "export", tmp_path / "release"
    run_export(str(sample_source), str(export))
    real = LocalStorage.copy_from
    copies = []

    def failing(self, source, source_key, key, size=None):
        if len(copies) >= 4:
            raise KeyboardInterrupt  # as Ctrl-C mid-copy
        copies.append(key)
        return real(self, source, source_key, key, size)

    monkeypatch.setattr(LocalStorage, "copy_from", failing)
    monkeypatch.setattr(rbexport.releases, "COPY_THREADS", 1)
    with pytest.raises(KeyboardInterrupt):
        create_release(str(export), str(release))
    assert not (release / "release.json").exists()  # nothing that looks complete
    assert (release / ".rbexport/release-partial.json").exists()
    monkeypatch.setattr(LocalStorage, "copy_from", real)
    with pytest.raises(
        ConfigurationError, match="holds an unfinished release of .* named 'release': run that command again"
    ):
        create_release(str(export), str(release), name="other")
    finished = create_release(str(export), str(release))
    assert finished.copied == len(finished.files) - 4  # what the first run copied is kept
    assert not (release / ".rbexport/release-partial.json").exists()
    assert rbexport.releases.verify_release(str(release)).ok


def test_a_release_waits_for_the_run_that_writes_the_export(run_cli, sample_source, tmp_path):
    export = tmp_path / "export"
    run_export(str(sample_source), str(export))
    lease = DestinationLease(LocalStorage(export), "nightly run")
    with lease.held(5):
        result = run_cli("release", "create", str(export), str(tmp_path / "r"), "--lock-timeout", "1")
    assert result.returncode == 2
    assert "busy since" in result.stderr and "by nightly run" in result.stderr
    assert not (tmp_path / "r" / "release.json").exists()


def test_an_s3_release_is_copied_by_the_store_and_retained_with_object_lock(
    run_cli, make_bucket, seaweed, sample_source, monkeypatch
):
    origin, exports = make_bucket("studies"), make_bucket("exports/brain")
    copy_tree(sample_source, origin)
    [report] = run_export(origin.url, exports.url, ExportOptions(), origin.access)
    assert report.succeeded
    plain = make_bucket("releases")
    # A bucket without Object Lock: refused before anything is copied.
    result = run_cli(
        "release",
        "create",
        exports.url,
        plain.url + "/v1",
        "--retain-days",
        "2",
        "--endpoint-url",
        seaweed.endpoint_url,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"bucket {plain.bucket!r} has no S3 Object Lock" in line
    assert not list(plain.list())

    locked_name = f"t-lock-{uuid.uuid4().hex[:8]}"
    S3Storage(locked_name, "", seaweed.endpoint_url).create_bucket(object_lock=True)
    read_here = []
    for name in ("read", "open"):
        real = getattr(S3Storage, name)

        def spy(self, key, real=real):
            read_here.append(key)
            return real(self, key)

        monkeypatch.setattr(S3Storage, name, spy)
    release = create_release(exports.url, f"s3://{locked_name}/v1", origin.access, retain_days=2)
    assert not [key for key in read_here if key.startswith("segmentations/")]  # no mask byte came here
    monkeypatch.undo()
    released = S3Storage(locked_name, "v1", seaweed.endpoint_url)
    files = bucket_tree(released)
    manifest = json.loads(files.pop("release.json"))
    assert files == released_part(bucket_tree(exports))
    assert manifest["retain_until"] == release.retain_until
    client = released.client
    for key in [*files, "release.json"]:
        retention = client.get_object_retention(Bucket=locked_name, Key=f"v1/{key}")["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        assert retention["RetainUntilDate"] > datetime.now(UTC)
    version = client.list_object_versions(Bucket=locked_name, Prefix="v1/tasks.json")["Versions"][0]["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=locked_name, Key="v1/tasks.json", VersionId=version)
    result = run_cli("verify", f"s3://{locked_name}/v1", "--endpoint-url", seaweed.endpoint_url)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_release_of_an_nnunet_dataset_is_that_dataset(make_bucket, tmp_path):
    project = tmp_path / "training"
    write_training_project(LocalStorage(project), tasks=4)
    origin, dataset = make_bucket("studies"), make_bucket("nnUNet_raw/Dataset501_Brain")
    copy_tree(project, origin)
    [report] = run_export(
        origin.url, dataset.url, ExportOptions(layout="nnunet", channels=("T1", "FLAIR")), origin.access
    )
    assert report.succeeded
    releases = make_bucket("releases")
    create_release(dataset.url, releases.url + "/Dataset501_Brain", origin.access)
    released = S3Storage(releases.bucket, "releases/Dataset501_Brain", releases.endpoint_url)
    files = bucket_tree(released)
    assert set(files) == set(released_part(bucket_tree(dataset))) | {"release.json"}
    dataset_json = json.loads(files["dataset.json"])
    images = sorted(key for key in files if key.startswith("imagesTr/"))
    labels = sorted(key for key in files if key.startswith("labelsTr/"))
    # nnU-Net reads dataset.json and lists imagesTr/ and labelsTr/ by file_ending: every label
    # has its channels, and release.json at the top is not one of its files.
    assert dataset_json["numTraining"] == len(labels) == 4
    for label in labels:
        case = Path(label).name.removesuffix(dataset_json["file_ending"])
        assert {f"imagesTr/{case}_{channel:04d}.nii.gz" for channel in range(2)} <= set(images)
    assert json.loads(files["splits_final.json"])


def test_the_release_flow_makes_a_release_with_its_artifact_and_event(prefect_api, sample_source, tmp_path):
    from test_operations import artifacts_of

    from rbexport.flows.release import RELEASE_CREATED, release_export

    export = tmp_path / "export"
    run_export(str(sample_source), str(export))
    state = release_export(str(export), str(tmp_path / "releases"), return_state=True)
    assert state.is_completed(), state.message
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    release = tmp_path / "releases" / today
    assert json.loads((release / "release.json").read_text())["name"] == today
    [artifact] = artifacts_of(state.state_details.flow_run_id, "release-report")
    assert f"Release `{today}`" in artifact.data

    event = _wait_for_event(RELEASE_CREATED, f"rbexport.release.{release}")
    assert event.payload["name"] == today and event.payload["tasks"] == 6 and event.payload["export"] == str(export)

    again = release_export(str(export), str(tmp_path / "releases"), return_state=True)
    assert again.is_failed() and "is already a release" in again.message


def _wait_for_event(name: str, resource: str, timeout: float = 30):
    import time

    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource]))
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=10).events
        if events:
            return events[0]
        assert time.monotonic() < deadline, f"no {name} event about {resource}"
        time.sleep(0.5)


def test_a_release_of_variant_folders_holds_each_variant(run_cli, sample_source, tmp_path):
    export, release = tmp_path / "export", tmp_path / "release"
    run_export(str(sample_source), str(export), variants=["standard", "semantic"])
    result = run_cli("release", "create", str(export), str(release), "--name", "both")
    assert result.returncode == 0, result.stderr
    files = tree(release)
    manifest = json.loads(files.pop("release.json"))
    assert files == {
        key: data
        for key, data in tree(export).items()
        if "/.rbexport/" not in key and not key.endswith("export-report.json") and not key.startswith(".rbexport/")
    }
    assert set(manifest["exports"]) == {"standard", "semantic"}
    assert manifest["exports"]["semantic"]["options"]["semantic_mask"] is True
    assert "semantic/tasks.json" in files and manifest["tasks"] == 6
    assert run_cli("verify", str(release)).returncode == 0


def test_served_deployments_export_the_ground_truth_and_release_it_by_name_and_by_date(
    prefect_api, sample_source, tmp_path
):
    from prefect.deployments import run_deployment
    from prefect_helpers import scheduled_runs_of, served, wait_for
    from test_filters import stage_tasks
    from test_schedules import run_to_completion

    stage_tasks(sample_source)
    export, releases = tmp_path / "ground-truth", tmp_path / "releases"
    settings = {
        "RBEXPORT_SOURCE": str(sample_source),
        "RBEXPORT_GROUND_TRUTH_DESTINATION": str(export),
        "RBEXPORT_RELEASES": str(releases),
        "RBEXPORT_ENDPOINT_URL": "",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    names = ("export-ground-truth-nightly", "release-manual", "release-weekly")
    with served(prefect_api, *names, env=settings) as server:
        nightly = wait_for(
            lambda: scheduled_runs_of("export-project/export-ground-truth-nightly"), 60, "ground-truth nightly runs"
        )
        state = run_to_completion(min(nightly, key=lambda run: run.expected_start_time))
        assert state.is_completed(), (state, server.stdout.read1().decode(errors="replace")[-4000:])
        assert [task["taskId"] for task in json.loads((export / "tasks.json").read_text())] == [
            "task-001",
            "task-003",
            "task-005",
        ]
        by_hand = run_deployment(
            "release-export/release-manual", parameters={"name": "v1"}, timeout=240, poll_interval=1
        )
        assert by_hand.state.is_completed(), by_hand.state
        assert json.loads((releases / "v1" / "release.json").read_text())["tasks"] == 3
        weekly = wait_for(lambda: scheduled_runs_of("release-export/release-weekly"), 60, "weekly release runs")
        state = run_to_completion(min(weekly, key=lambda run: run.expected_start_time))
        assert state.is_completed(), state
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert json.loads((releases / today / "release.json").read_text())["name"] == today
