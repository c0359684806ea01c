"""Images in the export (SPEC 5): copied byte for byte, or one NIfTI per series on its label's grid.

The sample project with images gives every series a generated DICOM series on its label
map's grid whose voxels are 40 + 30 * label + (i + j + k) % 7 in HU, so an exported image
is checked voxel for voxel against its label: any misalignment shows.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from conftest import bucket_tree, copy_tree, tree

import rbexport.task_export
from rbexport.app.sample import write_sample_project
from rbexport.app.sample_images import dicom_series_on_grid
from rbexport.engine import run_export
from rbexport.options import ExportOptions
from rbexport.storage import LocalStorage, S3Storage

NIFTI = ExportOptions(image_format="nifti")
COPIES = ExportOptions(with_images=True)


@pytest.fixture
def source(tmp_path):
    """The sample project, with a DICOM series for every series."""
    folder = tmp_path / "source"
    write_sample_project(LocalStorage(folder), with_images=True)
    return folder


def tasks_of(root) -> dict[str, dict]:
    return {task["taskId"]: task for task in json.loads((root / "tasks.json").read_text())}


def expected_image(label: np.ndarray) -> np.ndarray:
    return 40 + 30 * label.astype(np.int32) + np.indices(label.shape).sum(axis=0) % 7


def test_copies_are_byte_identical_under_images_task_series(source, tmp_path):
    export = tmp_path / "export"
    [report] = run_export(str(source), str(export), COPIES)
    assert report.succeeded
    items = tasks_of(export)["task-001"]["series"][0]["items"]
    assert items == [f"images/Brain_001/T1/slice-{k:04d}.dcm" for k in range(1, 17)]
    source_items = tasks_of(source)["task-001"]["series"][0]["items"]
    for exported, original in zip(items, source_items, strict=False):
        assert (export / exported).read_bytes() == (source / original).read_bytes()
    # Unnamed series are A, B as for masks; the unlabelled series B keeps its images too.
    assert [series["items"][0] for series in tasks_of(export)["task-003"]["series"]] == [
        "images/task-003/A/slice-0001.dcm",
        "images/task-003/B/slice-0001.dcm",
    ]
    image_records = [record for record in report.files if record.path.startswith("images/")]
    assert len(image_records) == 16 * 6 + 16 + 1  # six 16-slice series, the unlabelled one, the X-ray
    assert all(record.sha256 for record in image_records)  # streamed here, so hashed


def test_repeated_base_names_get_their_position(tmp_path):
    from rbexport.naming import image_file_names

    assert image_file_names(["a/x.dcm", "b/x.dcm", "c/y.dcm"]) == ["x-0.dcm", "x-1.dcm", "y.dcm"]
    assert image_file_names([f"s{k}/img.nii.gz" for k in range(10)])[3] == "img-03.nii.gz"
    assert image_file_names(["../../etc/pass wd?"]) == ["pass wd-"]


def test_nifti_images_lie_on_their_label_grid_voxel_for_voxel(source, tmp_path):
    export = tmp_path / "export"
    [report] = run_export(str(source), str(export), NIFTI)
    assert report.succeeded, report.failures
    tasks = tasks_of(export)
    assert tasks["task-001"]["series"][0]["items"] == "images/Brain_001/T1.nii.gz"
    checked = 0
    for task in tasks.values():
        series_list = task.get("superTruth", task)["series"]
        for series, described in zip(series_list, task["series"], strict=False):
            image = nib.load(export / described["items"])
            if "segmentations" not in series:
                continue
            mask = series["segmentations"]
            label = nib.load(export / (mask if isinstance(mask, str) else mask[0].rsplit("/", 1)[0] + ".nii.gz"))
            assert image.shape == label.shape
            np.testing.assert_allclose(image.affine, label.affine, atol=1e-4)
            np.testing.assert_array_equal(np.asarray(image.dataobj), expected_image(np.asarray(label.dataobj)))
            checked += 1
    assert checked == 7  # every labelled series, the flipped slice stacks and the 2D X-ray included
    xray = nib.load(export / tasks["task-006"]["series"][0]["items"])
    assert xray.ndim == 2 and xray.get_data_dtype() == np.int16


def test_an_image_whose_grid_differs_fails_its_task_naming_both_grids(source, tmp_path):
    # Brain_002's T1 image one slice thicker than its label: not a flip or an axis order.
    label = nib.load(source / "masks/brain-002-T1.nii.gz")
    affine = label.affine.copy()
    affine[2, 2] = 3.0
    tasks = json.loads((source / "tasks.json").read_text())
    for name, data in dicom_series_on_grid(np.zeros(label.shape, np.int16), affine):
        (source / "shifted" / name).parent.mkdir(exist_ok=True)
        (source / "shifted" / name).write_bytes(data)
    tasks[1]["series"][0]["items"] = [f"shifted/slice-{k:04d}.dcm" for k in range(1, 17)]
    (source / "tasks.json").write_text(json.dumps(tasks))
    [report] = run_export(str(source), str(tmp_path / "export"), NIFTI)
    [failure] = report.failures
    assert failure.taskId == "task-002"
    assert failure.reason.startswith("series T1: the image's grid does not match its label's: image ")
    assert "2.5" in failure.reason and "3" in failure.reason and " vs label " in failure.reason
    assert len(report.exported) == 5
    assert not (tmp_path / "export/images/Brain_002").exists()


@pytest.mark.parametrize("options", [COPIES, NIFTI], ids=["copies", "nifti"])
def test_bad_items_fail_their_task_with_the_file_named(source, tmp_path, options):
    tasks = json.loads((source / "tasks.json").read_text())
    by_id = {task["taskId"]: task for task in tasks}
    by_id["task-001"]["series"][0]["items"].append("nowhere/missing.dcm")
    by_id["task-003"]["series"][0]["items"] = ["s3://another-bucket/x.dcm"]
    (source / "not-an-image.dcm").write_bytes(b"plain text, no DICOM")
    by_id["task-002"]["series"][1]["items"] = ["not-an-image.dcm"]
    (source / "tasks.json").write_text(json.dumps(tasks))
    [report] = run_export(str(source), str(tmp_path / "export"), options)
    failures = {failure.taskId: failure for failure in report.failures}
    assert failures["task-001"].file == "nowhere/missing.dcm" and failures["task-001"].reason == "image item not found"
    assert failures["task-003"].file == "s3://another-bucket/x.dcm"
    assert "outside the source" in failures["task-003"].reason and "allow bucket" in failures["task-003"].reason
    if options.images == "nifti":
        assert failures["task-002"].file == "not-an-image.dcm"
        assert set(failures) == {"task-001", "task-002", "task-003"}
    else:  # a copy is byte for byte, whatever the file holds
        assert set(failures) == {"task-001", "task-003"}
    assert {"task-004", "task-005", "task-006"} <= set(report.exported)
    assert not (tmp_path / "export/images/Brain_001").exists()  # a failed task writes nothing


def test_a_series_with_a_missing_slice_fails_naming_the_gap(source, tmp_path):
    tasks = json.loads((source / "tasks.json").read_text())
    del tasks[0]["series"][0]["items"][7]
    (source / "tasks.json").write_text(json.dumps(tasks))
    [report] = run_export(str(source), str(tmp_path / "export"), NIFTI)
    [failure] = report.failures
    assert failure.taskId == "task-001" and "slice" in failure.reason and "spacing" in failure.reason, failure


def test_images_join_the_fingerprint_and_prune(source, tmp_path):
    export = tmp_path / "export"
    run_export(str(source), str(export), COPIES)
    first = {path: (export / path).stat().st_mtime_ns for path in tree(export)}
    [again] = run_export(str(source), str(export), COPIES)
    assert len(again.skipped) == 6 and not again.exported
    assert {path: (export / path).stat().st_mtime_ns for path in first if path != "export-report.json"} == {
        path: mtime for path, mtime in first.items() if path != "export-report.json"
    }

    slice_file = source / json.loads((source / "tasks.json").read_text())[1]["series"][1]["items"][0]
    slice_file.write_bytes(slice_file.read_bytes())  # a new version of one image object
    os.utime(slice_file, ns=(0, 10**18))
    [changed] = run_export(str(source), str(export), COPIES)
    assert changed.exported == ["task-002"]

    tasks = json.loads((source / "tasks.json").read_text())
    (source / "tasks.json").write_text(json.dumps([task for task in tasks if task["taskId"] != "task-001"]))
    [pruned] = run_export(str(source), str(export), COPIES, prune=True)
    assert "images/Brain_001/T1/slice-0001.dcm" in pruned.pruned
    assert not (export / "images/Brain_001").exists()
    # Without images asked for, a run leaves them as they are (another fingerprint: all exported again).
    assert (export / "images/Brain_002/T1/slice-0001.dcm").exists()


def test_several_variants_each_hold_their_images(source, tmp_path):
    from rbexport.variants import Variant

    variants = [
        "standard",
        Variant(name="nifti", options=NIFTI),
        Variant(name="raw", options=ExportOptions(compress=False, image_format="nifti")),
    ]
    reports = run_export(str(source), str(tmp_path / "export"), COPIES, variants=variants)
    assert all(report.succeeded for report in reports)
    assert (tmp_path / "export/standard/images/Brain_001/T1/slice-0001.dcm").exists()
    assert (tmp_path / "export/nifti/images/Brain_001/T1.nii.gz").exists()
    raw = nib.load(tmp_path / "export/raw/images/Brain_001/T1.nii")
    packed = nib.load(tmp_path / "export/nifti/images/Brain_001/T1.nii.gz")
    np.testing.assert_array_equal(np.asarray(raw.dataobj), np.asarray(packed.dataobj))


def test_converting_a_series_reserves_its_memory(source, tmp_path, monkeypatch):
    reserved = []
    budget = rbexport.task_export.process_budget()
    real = budget.reserve

    def recording(amount):
        reserved.append(amount)
        return real(amount)

    monkeypatch.setattr(budget, "reserve", recording)
    run_export(str(source), str(tmp_path / "masks-only"), ExportOptions(), incremental=False)
    run_export(str(source), str(tmp_path / "nifti"), NIFTI, incremental=False)
    masks_only, with_images = reserved[:6], reserved[6:]
    series_bytes = sum((source / item).stat().st_size for item in tasks_of(source)["task-001"]["series"][0]["items"])
    assert with_images[0] - masks_only[0] == 2 * series_bytes


def test_s3_to_s3_copies_are_made_by_the_store(make_bucket, source, monkeypatch):
    origin, destination = make_bucket("studies"), make_bucket("exports")
    copy_tree(source, origin)
    read_here = []
    for name in ("read", "open"):
        real = getattr(S3Storage, name)

        def spy(self, key, real=real):
            read_here.append(key)
            return real(self, key)

        monkeypatch.setattr(S3Storage, name, spy)
    [report] = run_export(origin.url, destination.url, COPIES, origin.access)
    assert report.succeeded
    assert not [key for key in read_here if key.startswith("images/")]  # no image byte came here
    exported = bucket_tree(destination)
    for task in json.loads(exported["tasks.json"]):
        originals = tasks_of(source)[task["taskId"]]["series"]
        for series, original_series in zip(task["series"], originals, strict=True):
            for copied, original in zip(series["items"], original_series["items"], strict=True):
                assert exported[copied] == (source / original).read_bytes()
    assert all(record.sha256 is None for record in report.files if record.path.startswith("images/"))


def test_large_objects_are_copied_in_parts_by_the_store(make_bucket, monkeypatch):
    import rbexport.storage.s3

    origin, destination = make_bucket("big"), make_bucket("copy")
    data = os.urandom(12 * 1024**2)
    origin.write("scan.nii", data)
    monkeypatch.setattr(rbexport.storage.s3, "COPY_PART_THRESHOLD", 5 * 1024**2)  # S3's least part size
    monkeypatch.setattr(S3Storage, "open", lambda *_: pytest.fail("streamed through here"))
    copied = destination.copy_from(origin, "scan.nii", "copied/scan.nii")
    assert copied.bytes == len(data) and copied.sha256 is None
    assert destination.read("copied/scan.nii") == data


def test_s3_to_a_folder_streams_and_hashes(make_bucket, source, tmp_path):
    origin = make_bucket("studies")
    copy_tree(source, origin)
    export = tmp_path / "export"
    [report] = run_export(origin.url, str(export), NIFTI, origin.access)
    assert report.succeeded
    [report] = run_export(origin.url, str(tmp_path / "copies"), COPIES, origin.access)
    records = {record.path: record for record in report.files}
    import hashlib

    record = records["images/Brain_001/T1/slice-0001.dcm"]
    assert record.sha256 == hashlib.sha256((tmp_path / "copies" / record.path).read_bytes()).hexdigest()


def test_the_cli_converts_images_on_s3(run_cli, make_bucket, source, seaweed):
    origin, destination = make_bucket("studies"), make_bucket("exports")
    copy_tree(source, origin)
    result = run_cli(
        "run",
        "--source",
        origin.url,
        "--dest",
        destination.url,
        "--endpoint-url",
        seaweed.endpoint_url,
        "--images-as-nifti",
        "--variant",
        "standard",
        "--variant",
        "copies:with_images=true",
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    exported = bucket_tree(destination)
    assert "standard/images/Chest_006/PA.nii.gz" in exported
    assert "copies/images/Chest_006/PA/slice-0001.dcm" in exported
    task = json.loads(exported["copies/tasks.json"])[0]
    assert task["series"][0]["items"][0] == "images/Brain_001/T1/slice-0001.dcm"
