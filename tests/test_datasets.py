"""Training layouts (SPEC 6): nnU-Net v2 and Medical Segmentation Decathlon datasets.

The training project (rbexport.app.sample.write_training_project) gives every study T1 and
FLAIR DICOM series of known voxels (200 + 40 * channel + 25 * label + (i + j + k) % 9)
on the label's grid, every other study with its label's slices stored the other way
round, and two studies per patient: so an image that is not on its label's grid, a label
that is not consecutive, and a fold that splits a patient all show.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import bucket_tree, copy_tree

import rbexport.source
from rbexport.app.sample import AFFINE, nifti_bytes, write_training_project
from rbexport.app.sample_images import dicom_series_on_grid
from rbexport.engine import run_export
from rbexport.errors import ConfigurationError
from rbexport.options import ExportOptions
from rbexport.storage import LocalStorage
from rbexport.variants import Preset, Variant, parse_variant_argument

CHANNELS = ("T1", "FLAIR")
NNUNET = ExportOptions(layout="nnunet", channels=CHANNELS, group_by="metaData.patientId", dataset_name="Brain")
MSD = ExportOptions(layout="msd", channels=CHANNELS, description="Two MR channels")


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "source"
    write_training_project(LocalStorage(folder), tasks=6)
    return folder


def tasks_of(source: Path) -> list[dict]:
    return json.loads((source / "tasks.json").read_text())


def save_tasks(source: Path, tasks: list[dict]) -> None:
    (source / "tasks.json").write_text(json.dumps(tasks))


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def expected_channel(label: np.ndarray, channel: int) -> np.ndarray:
    return 200 + 40 * channel + 25 * label.astype(np.int32) + np.indices(label.shape).sum(axis=0) % 9


def test_an_nnunet_dataset_pairs_every_channel_with_its_label_on_one_grid(source, tmp_path):
    destination = tmp_path / "Dataset501_Brain"
    [report] = run_export(str(source), str(destination), NNUNET)
    assert report.succeeded and len(report.exported) == 6

    dataset = json.loads((destination / "dataset.json").read_text())
    assert dataset == {
        "channel_names": {"0": "MR", "1": "MR"},
        "labels": {"background": 0, "Glioma": 1, "Edema": 2, "Abscess": 3},
        "numTraining": 6,
        "file_ending": ".nii.gz",
        "name": "Brain",
    }
    for number in range(1, 7):
        case = f"Study_{number:03d}"
        source_label, source_affine = load(source / f"masks/study-{number:03d}.nii.gz")
        label, affine = load(destination / f"labelsTr/{case}.nii.gz")
        assert label.dtype == np.uint8 and np.allclose(affine, source_affine)
        # Glioma and Edema overlap as value 3 in every third study: the lower category wins.
        assert np.array_equal(label, np.where(source_label == 3, 1, source_label))
        for channel in range(2):
            image, image_affine = load(destination / f"imagesTr/{case}_{channel:04d}.nii.gz")
            assert np.allclose(image_affine, affine, atol=1e-3)
            assert np.array_equal(image, expected_channel(source_label, channel))
    assert sorted(path.name for path in (destination / "imagesTr").iterdir())[:3] == [
        "Study_001_0000.nii.gz",
        "Study_001_0001.nii.gz",
        "Study_002_0000.nii.gz",
    ]
    assert not (destination / "tasks.json").exists() and not (destination / "segmentations").exists()

    splits = json.loads((destination / "splits_final.json").read_text())
    assert len(splits) == 5
    for split in splits:
        assert sorted(split["train"] + split["val"]) == [f"Study_{n:03d}" for n in range(1, 7)]
    # Two studies per patient (group_by metaData.patientId): a patient's studies share a fold.
    assert [split["val"] for split in splits] == [
        ["Study_001", "Study_002"],
        ["Study_003", "Study_004"],
        ["Study_005", "Study_006"],
        [],
        [],
    ]
    assert report.dataset["cases_per_fold"] == {"0": 2, "1": 2, "2": 2, "3": 0, "4": 0}


def test_an_msd_dataset_stacks_channels_and_lists_cases_with_folds(source, tmp_path):
    destination = tmp_path / "Task01_Brain"
    [report] = run_export(str(source), str(destination), MSD)
    assert report.succeeded
    dataset = json.loads((destination / "dataset.json").read_text())
    assert dataset["name"] == "" and dataset["description"] == "Two MR channels"
    assert dataset["modality"] == {"0": "MR", "1": "MR"}
    assert dataset["labels"] == {"0": "background", "1": "Glioma", "2": "Edema", "3": "Abscess"}
    assert dataset["numTraining"] == 6 and dataset["test"] == []
    assert dataset["training"][0] == {
        "image": "./imagesTr/Study_001.nii.gz",
        "label": "./labelsTr/Study_001.nii.gz",
        "fold": 0,
    }
    assert [entry["fold"] for entry in dataset["training"]] == [0, 1, 2, 3, 4, 0]  # no groups: one per fold
    source_label, _ = load(source / "masks/study-002.nii.gz")
    image, _ = load(destination / "imagesTr/Study_002.nii.gz")
    assert image.shape == (*source_label.shape, 2)
    for channel in range(2):
        assert np.array_equal(image[..., channel], expected_channel(source_label, channel))
    assert not (destination / "splits_final.json").exists()


def test_labels_are_consecutive_in_category_order_and_unclaimed_values_are_zero(source, tmp_path):
    taxonomy = {
        "objectTypes": [
            {"category": "Edema", "classId": 7},
            {"category": "Glioma", "classId": 2},
            {"category": "Tumour", "classId": 4, "children": []},
        ]
    }
    (source / "taxonomy.json").write_text(json.dumps(taxonomy))
    tasks = tasks_of(source)
    tasks[0]["series"][0]["segmentMap"] = {"1": {"category": "Glioma"}}  # value 2 no longer claimed
    save_tasks(source, tasks)
    [report] = run_export(str(source), str(tmp_path / "out"), NNUNET)
    assert report.succeeded
    labels = json.loads((tmp_path / "out/dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "Glioma": 1, "Tumour": 2, "Edema": 3}  # classIds 2, 4, 7
    source_label, _ = load(source / "masks/study-002.nii.gz")
    label, _ = load(tmp_path / "out/labelsTr/Study_002.nii.gz")
    assert np.array_equal(label, np.select([source_label == 1, source_label == 2], [1, 3], 0))
    first, _ = load(tmp_path / "out/labelsTr/Study_001.nii.gz")
    assert set(np.unique(first)) == {0, 1}
    [warning] = [notice for notice in report.warnings if notice.taskId == "study-001"]
    assert "case Study_001:" in warning.message and "2" in warning.message
    assert report.dataset["voxels_per_label"]["Tumour"] == 0


def test_without_channels_each_annotated_series_is_a_case(source, tmp_path):
    tasks = tasks_of(source)
    tasks[1]["series"][1].update(segmentations="masks/study-002.nii.gz", segmentMap={"1": {"category": "Glioma"}})
    save_tasks(source, tasks)
    [report] = run_export(str(source), str(tmp_path / "out"), ExportOptions(layout="nnunet"))
    assert report.succeeded
    cases = sorted(path.name for path in (tmp_path / "out/labelsTr").iterdir())
    assert cases[:4] == ["Study_001.nii.gz", "Study_002_FLAIR.nii.gz", "Study_002_T1.nii.gz", "Study_003.nii.gz"]
    assert (tmp_path / "out/imagesTr/Study_002_FLAIR_0000.nii.gz").exists()
    assert not (tmp_path / "out/imagesTr/Study_001_0001.nii.gz").exists()
    assert json.loads((tmp_path / "out/dataset.json").read_text())["channel_names"] == {"0": "MR"}


def test_folds_stay_across_runs_and_new_cases_fill_the_smallest_fold(source, tmp_path):
    destination = tmp_path / "out"
    options = ExportOptions(layout="nnunet", channels=CHANNELS)
    run_export(str(source), str(destination), options)
    first = json.loads((destination / "splits_final.json").read_text())
    written = {path: path.stat().st_mtime_ns for path in (destination / "imagesTr").iterdir()}

    more = tmp_path / "more"
    write_training_project(LocalStorage(more), tasks=9)
    tasks = tasks_of(more)
    for path in (more / "masks").iterdir():
        if path.name >= "study-007":
            (source / "masks" / path.name).write_bytes(path.read_bytes())
    for task in tasks[6:]:
        for series in task["series"]:
            for item in series["items"]:
                (source / item).parent.mkdir(parents=True, exist_ok=True)
                (source / item).write_bytes((more / item).read_bytes())
    save_tasks(source, [*reversed(tasks_of(source)), *tasks[6:]])  # new order, three new tasks
    [report] = run_export(str(source), str(destination), options)
    assert sorted(report.exported) == ["study-007", "study-008", "study-009"] and len(report.skipped) == 6
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in written.items())
    splits = json.loads((destination / "splits_final.json").read_text())
    for fold in range(5):  # the first six keep their folds; 7, 8, 9 join folds 1, 2, 3 (one case each)
        assert set(first[fold]["val"]) <= set(splits[fold]["val"])
    assert [split["val"] for split in splits] == [
        ["Study_001", "Study_006"],
        ["Study_002", "Study_007"],
        ["Study_003", "Study_008"],
        ["Study_004", "Study_009"],
        ["Study_005"],
    ]
    assert json.loads((destination / "dataset.json").read_text())["numTraining"] == 9

    [again] = run_export(str(source), str(destination), options, incremental=False)  # a full run: same folds
    assert json.loads((destination / "splits_final.json").read_text()) == splits and len(again.exported) == 9


def test_removed_tasks_stay_in_the_dataset_until_pruned(source, tmp_path):
    destination = tmp_path / "out"
    options = ExportOptions(layout="msd", channels=CHANNELS)
    run_export(str(source), str(destination), options)
    save_tasks(source, tasks_of(source)[1:])
    run_export(str(source), str(destination), options)
    dataset = json.loads((destination / "dataset.json").read_text())
    assert dataset["numTraining"] == 6 and (destination / "imagesTr/Study_001.nii.gz").exists()

    [report] = run_export(str(source), str(destination), options, prune=True)
    assert sorted(report.pruned) == ["imagesTr/Study_001.nii.gz", "labelsTr/Study_001.nii.gz"]
    dataset = json.loads((destination / "dataset.json").read_text())
    assert dataset["numTraining"] == 5 and "./labelsTr/Study_001.nii.gz" not in json.dumps(dataset)
    assert [entry["fold"] for entry in dataset["training"]] == [1, 2, 3, 4, 0]  # the others keep theirs
    assert not (destination / "imagesTr/Study_001.nii.gz").exists()


def test_a_case_the_task_no_longer_has_leaves_the_dataset_at_once(source, tmp_path):
    destination = tmp_path / "out"
    tasks = tasks_of(source)
    tasks[0]["series"][1].update(segmentations="masks/study-001.nii.gz", segmentMap={"1": {"category": "Glioma"}})
    save_tasks(source, tasks)
    run_export(str(source), str(destination), ExportOptions(layout="nnunet"))
    assert (destination / "labelsTr/Study_001_FLAIR.nii.gz").exists()
    del tasks[0]["series"][1]["segmentations"]
    save_tasks(source, tasks)
    [report] = run_export(str(source), str(destination), ExportOptions(layout="nnunet"))
    assert sorted(report.pruned) == [
        "imagesTr/Study_001_FLAIR_0000.nii.gz",
        "imagesTr/Study_001_T1_0000.nii.gz",
        "labelsTr/Study_001_FLAIR.nii.gz",
        "labelsTr/Study_001_T1.nii.gz",
    ]
    assert sorted(path.name for path in (destination / "labelsTr").iterdir())[0] == "Study_001.nii.gz"
    assert json.loads((destination / "dataset.json").read_text())["numTraining"] == 6


def test_bad_tasks_fail_with_one_line_each_and_the_others_export(source, tmp_path):
    tasks = tasks_of(source)
    del tasks[0]["series"][0]["items"]  # the labelled series has no image
    tasks[1]["series"][1]["name"] = "T2"  # no FLAIR
    # Study 3's FLAIR on another grid (slices 3 mm apart instead of 2.5)
    affine = AFFINE.copy()
    affine[2, 2] = 3.0
    for name, data in dicom_series_on_grid(np.zeros((40, 36, 12), np.int16), affine, modality="MR"):
        (source / "thick" / name).parent.mkdir(exist_ok=True)
        (source / "thick" / name).write_bytes(data)
    tasks[2]["series"][1]["items"] = [f"thick/slice-{k:04d}.dcm" for k in range(1, 13)]
    tasks[3]["series"][0]["segmentMap"]["1"]["category"] = "Nowhere"
    save_tasks(source, tasks)
    destination = tmp_path / "out"
    [report] = run_export(str(source), str(destination), NNUNET)
    reasons = {failure.taskId: failure.reason for failure in report.failures}
    assert reasons["study-001"] == "series T1 has no image (no items)"
    assert reasons["study-002"] == "no series for channel 'FLAIR' (the task's series: 'T1', 'T2')"
    assert reasons["study-003"].startswith("series FLAIR: the image's grid does not match its label's")
    assert "not in taxonomy.json" in reasons["study-004"] and reasons["study-004"].startswith("case Study_004: ")
    assert all("\n" not in reason for reason in reasons.values())
    assert report.exported == ["study-005", "study-006"]
    assert sorted(path.name for path in (destination / "labelsTr").iterdir()) == [
        "Study_005.nii.gz",
        "Study_006.nii.gz",
    ]
    assert json.loads((destination / "dataset.json").read_text())["numTraining"] == 2


def test_a_channel_without_a_modality_asks_for_the_option(source, tmp_path):
    for number in (1, 2):
        label, affine = load(source / f"masks/study-{number:03d}.nii.gz")
        (source / f"nifti/{number}.nii.gz").parent.mkdir(exist_ok=True)
        (source / f"nifti/{number}.nii.gz").write_bytes(
            nifti_bytes(expected_channel(label, 0).astype(np.int16), affine)
        )
    tasks = tasks_of(source)[:2]
    for number, task in enumerate(tasks, start=1):
        task["series"][0]["items"] = f"nifti/{number}.nii.gz"
    save_tasks(source, tasks)
    [report] = run_export(str(source), str(tmp_path / "out"), ExportOptions(layout="nnunet"))
    assert [failure.reason for failure in report.failures] == [
        "no modality known for channel T1: give the modality option (nnU-Net normalises CT differently from other images)"
    ] * 2
    [report] = run_export(str(source), str(tmp_path / "out"), ExportOptions(layout="nnunet", modality="MR"))
    assert report.succeeded
    assert json.loads((tmp_path / "out/dataset.json").read_text())["channel_names"] == {"0": "MR"}
    # A series' own DICOM Modality wins over the option, with a warning.
    [report] = run_export(
        str(source), str(tmp_path / "ct"), ExportOptions(layout="nnunet", modality="CT", channels=CHANNELS)
    )
    assert report.succeeded
    assert json.loads((tmp_path / "ct/dataset.json").read_text())["channel_names"] == {"0": "CT", "1": "MR"}
    assert any("the series' Modality is MR, the modality option CT" in notice.message for notice in report.warnings)


def test_two_cases_with_one_id_are_told_apart_and_said_so(source, tmp_path):
    tasks = tasks_of(source)[:2]
    tasks[0]["series"][1].update(segmentations="masks/study-001.nii.gz", segmentMap={"1": {"category": "Glioma"}})
    tasks[1]["name"] = "Study_001_T1"  # the case id the first task's T1 series gets
    tasks.reverse()
    save_tasks(source, tasks)
    [report] = run_export(str(source), str(tmp_path / "out"), ExportOptions(layout="nnunet"))
    assert report.succeeded
    assert sorted(path.name for path in (tmp_path / "out/labelsTr").iterdir()) == [
        "Study_001_FLAIR.nii.gz",
        "Study_001_T1.nii.gz",
        "Study_001_T1_1.nii.gz",
    ]
    [notice] = [notice for notice in report.warnings if "another case" in notice.message]
    assert notice.taskId == "study-001"
    assert notice.message == "case id Study_001_T1 is another case's; this case is Study_001_T1_1"


def test_a_dataset_needs_the_taxonomy(source, tmp_path):
    (source / "taxonomy.json").unlink()
    with pytest.raises(ConfigurationError, match=r"the nnunet layout \(one label per category\) needs taxonomy.json"):
        run_export(str(source), str(tmp_path / "out"), NNUNET)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_one_run_writes_the_redbrick_export_and_a_dataset_from_one_decode(source, tmp_path, monkeypatch):
    decoded = []
    original = rbexport.source.MaskReader._decode
    monkeypatch.setattr(
        rbexport.source.MaskReader,
        "_decode",
        staticmethod(lambda reference, raw: decoded.append(reference) or original(reference, raw)),
    )
    variants = [Preset.standard, parse_variant_argument("Dataset501_Brain:layout=nnunet,channels=T1,FLAIR,modality=MR")]
    assert variants[1] == Variant(
        name="Dataset501_Brain", options=ExportOptions(layout="nnunet", channels=CHANNELS, modality="MR")
    )
    reports = run_export(str(source), str(tmp_path / "out"), ExportOptions(), variants=variants)
    assert all(report.succeeded for report in reports)
    assert sorted(decoded) == [f"masks/study-{n:03d}.nii.gz" for n in range(1, 7)]
    assert (tmp_path / "out/standard/segmentations/Study_001/T1.nii.gz").exists()
    assert (tmp_path / "out/Dataset501_Brain/imagesTr/Study_001_0001.nii.gz").exists()


def test_the_cli_writes_both_layouts_on_s3(run_cli, make_bucket, source, seaweed):
    origin, destination = make_bucket("studies"), make_bucket("nnUNet_raw")
    copy_tree(source, origin)
    common = ["--source", origin.url, "--endpoint-url", seaweed.endpoint_url, "--channels", "T1,FLAIR"]
    result = run_cli(
        "run",
        *common,
        "--dest",
        destination.url + "/Dataset501_Brain",
        "--layout",
        "nnunet",
        "--group-by",
        "metaData.patientId",
        "--dataset-name",
        "Brain",
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    assert "6 tasks exported" in result.stdout
    result = run_cli("run", *common, "--dest", destination.url + "/Task01_Brain", "--layout", "msd", engine="local")
    assert result.returncode == 0, result.stderr
    exported = bucket_tree(destination)
    assert json.loads(exported["Dataset501_Brain/dataset.json"])["name"] == "Brain"
    assert "Dataset501_Brain/imagesTr/Study_006_0001.nii.gz" in exported
    assert len(json.loads(exported["Dataset501_Brain/splits_final.json"])) == 5
    assert json.loads(exported["Task01_Brain/dataset.json"])["numTraining"] == 6

    result = run_cli(
        "run", *common, "--dest", destination.url + "/x", "--layout", "nnunet", "--variant", "standard", engine="local"
    )
    assert result.returncode == 2 and "--variant Dataset501_Name:layout=nnunet" in result.stderr


def test_the_flow_shows_the_class_balance_as_a_table(prefect_api, source, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from rbexport.flows.export import export_project

    [report] = export_project(str(source), str(tmp_path / "out"), NNUNET)
    assert report.dataset["cases"] == 6

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dataset-export"]))
            )

    import asyncio

    artifacts = asyncio.run(read())
    assert artifacts and artifacts[0].type == "table"
    rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    assert [row["name"] for row in rows] == ["background", "Glioma", "Edema", "Abscess"]
    assert rows[1]["voxels"] == report.dataset["voxels_per_label"]["Glioma"] > 0
    assert "6 cases" in artifacts[0].description


def test_a_deployment_run_writes_a_dataset(prefect_api, source, tmp_path):
    """export-manual served from prefect.yaml, started with the parameters the UI form sends."""
    from prefect.deployments import run_deployment
    from prefect_helpers import served

    destination = tmp_path / "nnUNet_raw"
    with served(prefect_api, "export-manual") as server:
        flow_run = run_deployment(
            "export-project/export-manual",
            parameters={
                "source": str(source),
                "destination": str(destination),
                "variants": ["standard"],
                "custom_variants": [
                    {
                        "name": "Dataset501_Brain",
                        "options": {"layout": "nnunet", "channels": ["T1", "FLAIR"], "group_by": "metaData.patientId"},
                    }
                ],
            },
            timeout=180,
            poll_interval=1,
        )
        assert flow_run.state.is_completed(), (flow_run.state, server.stdout.read1().decode()[-3000:])
    dataset = json.loads((destination / "Dataset501_Brain/dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MR", "1": "MR"} and dataset["numTraining"] == 6
    assert (destination / "standard/tasks.json").exists()


def test_a_tasks_cases_and_its_export_share_one_parse_of_its_annotations(source, tmp_path, monkeypatch):
    """Issue 21 item 3: the run's planning (the dataset's cases, the fingerprints' masks) and
    the task's export read the task's annotations from one parse (the job's ParsedTask), not
    one parse per phase."""
    import rbexport.annotations

    parsed: list[str] = []
    real = rbexport.annotations._annotations
    monkeypatch.setattr(
        rbexport.annotations,
        "_annotations",
        lambda task, options: parsed.append(task["taskId"]) or real(task, options),
    )
    [report] = run_export(str(source), str(tmp_path / "out"), NNUNET)
    assert report.succeeded
    tasks = [task["taskId"] for task in tasks_of(source)]
    assert sorted(parsed) == sorted(tasks)  # once each: planning the cases and exporting them
