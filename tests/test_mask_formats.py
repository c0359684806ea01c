"""mask_format (issue 13): the same structures written as PNG, MetaImage or DICOM SEG.

Every format is read back with the reader its users have (SimpleITK for MetaImage,
Pillow for PNG, highdicom and pydicom for DICOM SEG) and compared, voxel for voxel, with
the NIfTI export of the same run. Through the CLI (on SeaweedFS for MetaImage), the flow
on the Prefect server (PNG) and a served deployment (DICOM SEG).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import bucket_tree, copy_tree
from PIL import Image

from rbexport.app.sample import AFFINE, TAXONOMY, box, nifti_bytes, write_sample_project, write_training_project
from rbexport.options import ExportOptions
from rbexport.report import RunReport
from rbexport.storage import LocalStorage
from rbexport.variants import Variant

COLOURS = {"Glioma": [255, 0, 0], "Edema": [0, 255, 0], "Abscess": [0, 0, 255]}


@pytest.fixture
def sample_with_images(tmp_path) -> Path:
    source = tmp_path / "source"
    write_sample_project(LocalStorage(source), with_images=True)
    return source


def nifti_array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def series_entries(tasks: list[dict]):
    """Every exported series entry: the task's, each annotator's and the super truth's."""
    for task in tasks:
        lists = [task["series"]] + [annotator["series"] for annotator in task.get("consensusTasks", [])]
        if "superTruth" in task:
            lists.append(task["superTruth"]["series"])
        for series_list in lists:
            yield from (series for series in series_list if "segmentations" in series)


# --- MetaImage --------------------------------------------------------------------------


def test_metaimage_from_the_cli_on_s3_reads_in_simpleitk_as_the_nifti_export(run_cli, make_bucket, seaweed, tmp_path):
    import SimpleITK as sitk

    origin, destination = make_bucket("project"), make_bucket("exports")
    write_sample_project(origin)
    result = run_cli(
        "run",
        "--source",
        origin.url,
        "--dest",
        destination.url,
        "--endpoint-url",
        seaweed.endpoint_url,
        "--variant",
        "nifti:binary_mask=true",
        "--variant",
        "mhd:binary_mask=true,mask_format=mhd",
        "--variant",
        "raw:binary_mask=true,mask_format=mhd,compress=false",
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    exported = tmp_path / "exported"
    for path, data in bucket_tree(destination).items():
        (exported / path).parent.mkdir(parents=True, exist_ok=True)
        (exported / path).write_bytes(data)

    tasks = json.loads((exported / "mhd/tasks.json").read_text())
    headers = [path for series in series_entries(tasks) for path in _paths(series)]
    assert headers and all(path.endswith(".mhd") for path in headers)
    compared = 0
    for variant, data_suffix in (("mhd", ".zraw"), ("raw", ".raw")):
        for header in sorted((exported / variant).rglob("*.mhd")):
            relative = header.relative_to(exported / variant).as_posix()
            text = header.read_text()
            assert f"ElementDataFile = {header.stem}{data_suffix}\n" in text
            assert ("CompressedData = True" in text) == (data_suffix == ".zraw")
            assert (header.parent / f"{header.stem}{data_suffix}").exists()
            ours = sitk.ReadImage(str(header))
            theirs = sitk.ReadImage(str(exported / "nifti" / relative.replace(".mhd", ".nii.gz")))
            assert ours.GetSize() == theirs.GetSize(), relative
            assert ours.GetPixelIDValue() == theirs.GetPixelIDValue(), relative
            np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4, err_msg=relative)
            np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-6, err_msg=relative)
            np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6, err_msg=relative)
            assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)), relative
            compared += 1
    # Every NIfTI file (label maps and binary files) has its MetaImage, in both variants.
    assert compared == 2 * len(list((exported / "nifti/segmentations").rglob("*.nii.gz"))) > 10


def _paths(series: dict) -> list[str]:
    segmentations = series["segmentations"]
    return [segmentations] if isinstance(segmentations, str) else list(segmentations)


# --- PNG --------------------------------------------------------------------------------


def write_2d_project(folder: Path) -> None:
    """2D tasks (one with overlaps), and one 3D task a PNG export must refuse."""
    storage = LocalStorage(folder)
    flat = np.diag([0.3, 0.4, 1.0, 1.0])
    plain = box((40, 30, 1), 1, (2, 3, 0), (10, 5, 1), dtype=np.uint8)
    box((40, 30, 1), 2, (20, 10, 0), (6, 12, 1), out=plain)
    overlap = box((40, 30), 1, (5, 5), (10, 10), dtype=np.uint8)
    box((40, 30), 2, (12, 8), (10, 10), out=overlap)
    overlap[12:15, 8:15] = 7  # where instances 1 and 2 overlap
    wide = box((40, 30, 1), 300, (0, 0, 0), (3, 30, 1))  # a value beyond 8 bits
    storage.write("masks/plain.nii.gz", nifti_bytes(plain, flat))
    storage.write("masks/overlap.nii.gz", nifti_bytes(overlap, flat))
    storage.write("masks/wide.nii.gz", nifti_bytes(wide, flat))
    storage.write("masks/volume.nii.gz", nifti_bytes(box((8, 8, 4), 1, (1, 1, 1), (2, 2, 2))))
    tasks = [
        {
            "taskId": "plain",
            "series": [
                {
                    "name": "XR",
                    "segmentations": "masks/plain.nii.gz",
                    "segmentMap": {"1": {"category": "Edema"}, "2": {"category": "Abscess"}},
                }
            ],
        },
        {
            "taskId": "overlap",
            "series": [
                {
                    "name": "XR",
                    "segmentations": "masks/overlap.nii.gz",
                    "segmentMap": {
                        "1": {"category": "Glioma", "overlappingGroups": [7]},
                        "2": {"category": "Edema", "overlappingGroups": [7]},
                    },
                }
            ],
        },
        {
            "taskId": "wide",
            "series": [{"name": "XR", "segmentations": "masks/wide.nii.gz", "segmentMap": {"300": {"category": "X"}}}],
        },
        {
            "taskId": "volume",
            "series": [
                {"name": "CT", "segmentations": "masks/volume.nii.gz", "segmentMap": {"1": {"category": "Edema"}}}
            ],
        },
    ]
    storage.write("tasks.json", json.dumps(tasks).encode())
    storage.write("taxonomy.json", json.dumps(TAXONOMY).encode())


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture)


def test_png_from_the_flow_is_the_nifti_array_with_rows_along_its_second_axis(prefect_api, tmp_path):
    from rbexport.flows.export import export_project

    source, out = tmp_path / "source", tmp_path / "out"
    write_2d_project(source)
    variants = (
        Variant(name="nifti", options=ExportOptions(binary_mask=True)),
        Variant(name="png", options=ExportOptions(binary_mask=True, mask_format="png")),
        Variant(name="png-semantic", options=ExportOptions(semantic_mask=True, mask_format="png")),
    )
    state = export_project(str(source), str(out), custom_variants=variants, return_state=True)
    assert state.is_failed()  # some tasks failed: the 3D one (and, semantic, a category the taxonomy lacks)
    reports = {
        name: json.loads((out / name / "export-report.json").read_text()) for name in ("nifti", "png", "png-semantic")
    }
    assert reports["nifti"]["failed"] == [] and reports["png"]["failed"] == ["volume"]
    assert sorted(reports["png-semantic"]["failed"]) == ["volume", "wide"]
    [failure] = reports["png"]["failures"]
    assert failure["file"] == "masks/volume.nii.gz"
    assert "PNG masks are 2D, and this label map is 8x8x4" in failure["reason"]

    tasks = json.loads((out / "png/tasks.json").read_text())
    compared = 0
    for series in series_entries(tasks):
        for path in _paths(series):
            assert path.endswith(".png")
            expected = nifti_array(out / "nifti" / path.replace(".png", ".nii.gz"))
            expected = expected.reshape(expected.shape[:2])
            pixels = png_pixels(out / "png" / path)
            assert np.array_equal(pixels, expected.T * 255), path  # binary files: 0/255
            compared += 1
    for label_map in ("plain/XR", "overlap/XR", "wide/XR"):
        expected = nifti_array(out / f"nifti/segmentations/{label_map}.nii.gz")
        pixels = png_pixels(out / f"png/segmentations/{label_map}.png")
        assert pixels.dtype == (np.uint16 if label_map == "wide/XR" else np.uint8)
        assert pixels.shape == (30, 40)  # rows: the NIfTI's second axis; columns: its first
        assert np.array_equal(pixels, expected.reshape(40, 30).T), label_map
        compared += 1
    assert compared == 8  # five binary files and three label maps

    class_map = json.loads((out / "png/class_map.json").read_text())
    assert class_map["segmentations/overlap/XR.png"] == {
        "1": {"category": "Glioma", "color": COLOURS["Glioma"]},
        "2": {"category": "Edema", "color": COLOURS["Edema"]},
    }
    assert class_map["segmentations/wide/XR.png"]["300"]["category"] == "X"  # no taxonomy colour: the palette's
    assert len(class_map["segmentations/wide/XR.png"]["300"]["color"]) == 3
    semantic = json.loads((out / "png-semantic/class_map.json").read_text())
    assert semantic == {
        "1": {"category": "Glioma", "color": COLOURS["Glioma"]},
        "2": {"category": "Edema", "color": COLOURS["Edema"]},
        "3": {"category": "Abscess", "color": COLOURS["Abscess"]},
    }
    plain = png_pixels(out / "png-semantic/segmentations/plain/XR.png")
    assert set(np.unique(plain)) == {0, 2, 3}  # Edema and Abscess as category numbers


# --- DICOM SEG --------------------------------------------------------------------------


def nifti_under_frame(array: np.ndarray, affine: np.ndarray, image: pydicom.Dataset) -> np.ndarray:
    """The NIfTI voxels under each pixel of a DICOM image, from the image's own geometry."""
    rows, columns = int(image.Rows), int(image.Columns)
    row_direction = np.array(image.ImageOrientationPatient[:3], float)
    column_direction = np.array(image.ImageOrientationPatient[3:], float)
    between_rows, between_columns = (float(value) for value in image.PixelSpacing)
    r, c = np.mgrid[0:rows, 0:columns]
    lps = (
        np.array(image.ImagePositionPatient, float)[:, None, None]
        + c * between_columns * row_direction[:, None, None]
        + r * between_rows * column_direction[:, None, None]
    )
    ras = np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])])
    ijk = np.rint(np.einsum("ij,jrc->irc", np.linalg.inv(affine), ras)[:3]).astype(int)
    if array.ndim == 2:
        array = array[:, :, None]
    return array[ijk[0], ijk[1], ijk[2]]


def check_segmentations(
    out: Path, source: Path, nifti_variant: str, seg_variant: str, semantic: bool, seg_type: str = "auto"
) -> int:
    """Read every SEG back with highdicom and pydicom; compare each segment, source image by
    source image, with the NIfTI export's binary file of that instance (or category)."""
    import highdicom as hd

    tasks = json.loads((out / seg_variant / "tasks.json").read_text())
    nifti_tasks = {task["taskId"]: task for task in json.loads((out / nifti_variant / "tasks.json").read_text())}
    source_tasks = {task["taskId"]: task for task in json.loads((source / "tasks.json").read_text())}
    checked = 0
    for task in tasks:
        items = [source / item for item in source_tasks[task["taskId"]]["series"][0]["items"]]
        images = [pydicom.dcmread(path, stop_before_pixels=True) for path in items]
        nifti_series = list(series_entries([nifti_tasks[task["taskId"]]]))
        for position, series in enumerate(series_entries([task])):
            if task["taskId"] == "task-002":  # two series, each with its own images
                items = [source / item for item in source_tasks["task-002"]["series"][position]["items"]]
                images = [pydicom.dcmread(path, stop_before_pixels=True) for path in items]
            path = series["segmentations"]
            assert isinstance(path, str) and path.endswith(".dcm")
            raw = pydicom.dcmread(out / seg_variant / path)
            seg = hd.seg.segread(out / seg_variant / path)
            overlapping = any("overlappingGroups" in entry for entry in _source_segment_map(source_tasks, task, series))
            if seg_type == "auto":
                assert raw.SegmentationType == ("BINARY" if overlapping and not semantic else "LABELMAP") or semantic
            else:
                assert raw.SegmentationType == seg_type.upper()
            assert raw.Modality == "SEG" and raw.StudyInstanceUID == images[0].StudyInstanceUID
            referenced = {
                item.ReferencedSOPInstanceUID
                for reference in raw.ReferencedSeriesSequence
                for item in reference.ReferencedInstanceSequence
            }
            assert referenced == {image.SOPInstanceUID for image in images}
            assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == images[0].SeriesInstanceUID
            assert raw.FrameOfReferenceUID == images[0].FrameOfReferenceUID
            frames_kept = int(raw.NumberOfFrames)

            nifti_entry = nifti_series[position]
            labelled_frames = 0
            for key, entry in series["segmentMap"].items():
                if "segmentNumber" not in entry:
                    continue
                number = entry["segmentNumber"]
                [description] = [item for item in raw.SegmentSequence if item.SegmentNumber == number]
                assert description.SegmentLabel == entry["category"]
                assert description.SegmentAlgorithmType == "MANUAL"
                assert "RecommendedDisplayCIELabValue" in description
                mask_file = out / nifti_variant / nifti_entry["segmentMap"][key]["mask"]
                mask, affine = nifti_array(mask_file), nib.load(mask_file).affine
                pixels = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=[image.SOPInstanceUID for image in images],
                    segment_numbers=[number],
                    assert_missing_frames_are_empty=True,
                )
                for image, frame in zip(images, pixels, strict=True):
                    expected = nifti_under_frame(mask, affine, image)
                    assert np.array_equal(frame[:, :, 0] != 0, expected != 0), (path, key, image.SOPInstanceUID)
                    labelled_frames += int(expected.any())
                checked += 1
            if raw.SegmentationType == "BINARY":
                assert frames_kept == labelled_frames  # one frame per segment and labelled slice: no empty frames
            else:
                assert frames_kept <= len(images)
    return checked


def _source_segment_map(source_tasks: dict, task: dict, series: dict) -> list[dict]:
    source = source_tasks[task["taskId"]]
    for candidate in series_entries([source]):
        if candidate.get("name") == series.get("name"):
            return list(candidate["segmentMap"].values())
    return []


def test_dicom_seg_from_the_cli_matches_the_nifti_masks_and_references_its_images(
    run_cli, sample_with_images, tmp_path
):
    import highdicom as hd

    codes = {"Glioma": {"code": "393564001", "meaning": "Glioma", "scheme": "SCT"}}
    (sample_with_images / "segment_codes.json").write_text(json.dumps(codes))
    out = tmp_path / "out"
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        str(out),
        "--variant",
        "nifti:binary_mask=true",
        "--variant",
        "seg:mask_format=dicom-seg",
        "--variant",
        "nifti-semantic:semantic_mask=true,binary_mask=true",
        "--variant",
        "seg-semantic:semantic_mask=true,mask_format=dicom-seg",
        engine="local",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The sample's PatientName has one component: highdicom's warning about it is not the user's.
    assert "Warning" not in result.stdout + result.stderr, result.stderr
    assert check_segmentations(out, sample_with_images, "nifti", "seg", semantic=False) == 13
    assert check_segmentations(out, sample_with_images, "nifti-semantic", "seg-semantic", semantic=True) == 12

    overlapping = pydicom.dcmread(out / "seg/segmentations/Brain_004/T2.dcm")
    assert overlapping.SegmentationType == "BINARY" and overlapping.SegmentsOverlap == "YES"
    assert [item.SegmentLabel for item in overlapping.SegmentSequence] == ["Glioma", "Glioma", "Abscess"]
    glioma, abscess = overlapping.SegmentSequence[0], overlapping.SegmentSequence[2]
    assert glioma.SegmentedPropertyTypeCodeSequence[0].CodeValue == "393564001"  # segment_codes.json
    assert abscess.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # the default: Tissue
    assert abscess.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    assert abscess.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert tuple(abscess.RecommendedDisplayCIELabValue) == tuple(
        hd.color.CIELabColor.from_rgb(0, 0, 255).value
    )  # the taxonomy's blue
    plain = pydicom.dcmread(out / "seg/segmentations/Brain_001/T1.dcm")
    assert plain.SegmentationType == "LABELMAP"
    tasks = json.loads((out / "seg/tasks.json").read_text())
    brain_004 = next(task for task in tasks if task["taskId"] == "task-004")["series"][0]
    assert brain_004["segmentations"] == "segmentations/Brain_004/T2.dcm"
    assert {key: entry["segmentNumber"] for key, entry in brain_004["segmentMap"].items()} == {"1": 1, "2": 2, "3": 3}
    consensus = next(task for task in tasks if task["taskId"] == "task-005")
    assert consensus["consensusTasks"][1]["series"][0]["segmentations"] == "segmentations/Brain_005/T1_2.dcm"

    # The same export again: the same UIDs (a PACS replaces the object, never duplicates it).
    again = tmp_path / "again"
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        str(again),
        "--variant",
        "seg:mask_format=dicom-seg",
        "--variant",
        "standard",
        "--engine",
        "local",
        engine="local",
    )
    assert result.returncode == 0, result.stderr
    repeated = pydicom.dcmread(again / "seg/segmentations/Brain_004/T2.dcm")
    assert repeated.SOPInstanceUID == overlapping.SOPInstanceUID


def test_dicom_seg_from_s3_of_series_stored_the_other_way_round_matches_the_nifti_masks(
    run_cli, make_bucket, seaweed, tmp_path
):
    """Half the studies' DICOM stack their slices against the label's third axis; some overlap
    (BINARY). The images' headers are streamed from S3, each read up to its pixel data."""
    source, out = tmp_path / "source", tmp_path / "out"
    write_training_project(LocalStorage(source), tasks=6)
    origin = make_bucket("studies")
    copy_tree(source, origin)
    arguments = ["run", "--source", origin.url, "--dest", str(out), "--endpoint-url", seaweed.endpoint_url]
    result = run_cli(
        *arguments,
        "--engine",
        "local",
        "--variant",
        "nifti:binary_mask=true",
        "--variant",
        "seg:mask_format=dicom-seg",
        engine="local",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert check_segmentations(out, source, "nifti", "seg", semantic=False) == 12
    types = {pydicom.dcmread(path).SegmentationType for path in (out / "seg").rglob("*.dcm")}
    assert types == {"BINARY", "LABELMAP"}


def test_series_without_dicom_images_or_off_their_grid_fail_their_task_with_a_reason_the_others_export(
    run_cli, sample_with_images, tmp_path
):
    tasks = json.loads((sample_with_images / "tasks.json").read_text())
    picture = io.BytesIO()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(picture, format="PNG")
    (sample_with_images / "images/chest.png").write_bytes(picture.getvalue())
    tasks[5]["series"][0]["items"] = ["images/chest.png"]  # task-006: a PNG picture, not DICOM
    del tasks[0]["series"][0]["items"]  # task-001: no images at all
    # task-002: its FLAIR series has no annotated voxels, so nothing needs its images (a PNG)
    tasks[1]["series"][1]["items"] = ["images/chest.png"]
    flair = sample_with_images / "masks/brain-002-FLAIR.nii.gz"
    flair.write_bytes(nifti_bytes(np.zeros_like(nifti_array(flair)), AFFINE))
    (sample_with_images / "tasks.json").write_text(json.dumps(tasks))
    shifted = AFFINE.copy()  # task-003: its label map 5 mm off its images
    shifted[0, 3] += 5.0
    label = nifti_array(sample_with_images / "masks/brain-003.nii.gz")
    (sample_with_images / "masks/brain-003.nii.gz").write_bytes(nifti_bytes(label, shifted))
    out = tmp_path / "out"
    result = run_cli(
        "run", "--source", str(sample_with_images), "--dest", str(out), "--mask-format", "dicom-seg", engine="local"
    )
    assert result.returncode == 1, result.stderr
    report = json.loads((out / "export-report.json").read_text())
    assert sorted(report["failed"]) == ["task-001", "task-003", "task-006"]
    reasons = {failure["taskId"]: failure for failure in report["failures"]}
    assert reasons["task-006"]["file"] == "images/chest.png"
    assert (
        "series PA: its images are picture, not DICOM; a DICOM SEG references DICOM images"
        in (reasons["task-006"]["reason"])
    )
    assert "series T1 has no image items: a DICOM SEG references its DICOM images" in reasons["task-001"]["reason"]
    assert (
        "the label map does not lie on its DICOM images' grid: label map shape (48, 48, 16)"
        in (reasons["task-003"]["reason"])
    )
    assert len(report["exported"]) == 3 and (out / "segmentations/Brain_004/T2.dcm").exists()
    assert (out / "segmentations/Brain_002/T1.dcm").exists()
    assert not (out / "segmentations/Brain_002/FLAIR.dcm").exists()
    assert {
        "taskId": "task-002",
        "file": "masks/brain-002-FLAIR.nii.gz",
        "message": "series FLAIR: no annotated voxels: no DICOM SEG written",
    } in report["warnings"]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_served_deployment_writes_dicom_seg_from_the_forms_options(prefect_api, sample_with_images, tmp_path):
    """export-manual served from prefect.yaml, started with `options: {mask_format: dicom-seg}` as the UI sends it."""
    from prefect.deployments import run_deployment
    from prefect_helpers import served

    destination = tmp_path / "out"
    with served(prefect_api, "export-manual") as server:
        flow_run = run_deployment(
            "export-project/export-manual",
            parameters={
                "source": str(sample_with_images),
                "destination": str(destination),
                "options": {"mask_format": "dicom-seg", "semantic_mask": True},
            },
            timeout=180,
            poll_interval=1,
        )
        assert flow_run.state.is_completed(), (flow_run.state, server.stdout.read1().decode()[-3000:])
    report = json.loads((destination / "export-report.json").read_text())
    assert report["options"]["mask_format"] == "dicom-seg" and report["failed"] == []
    seg = pydicom.dcmread(destination / "segmentations/Brain_001/T1.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "LABELMAP"  # no overlaps
    labels = {item.SegmentNumber: item.SegmentLabel for item in seg.SegmentSequence}
    assert labels == {0: "Background", 1: "Glioma", 2: "Edema"}  # categories in category-number order


# --- seg_type and seg_compression -------------------------------------------------------

SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"
RLE_LOSSLESS, JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"


def _failure(report: dict, task_id: str) -> dict:
    return next(failure for failure in report["failures"] if failure["taskId"] == task_id)


def without_overlaps(source: Path) -> Path:
    """The sample without task-004, whose instances (and categories) overlap."""
    tasks = json.loads((source / "tasks.json").read_text())
    (source / "tasks.json").write_text(json.dumps([task for task in tasks if task["taskId"] != "task-004"]))
    return source


def test_seg_type_and_compression_from_the_cli_read_back_as_the_nifti_masks_and_the_uncompressed_seg(
    run_cli, sample_with_images, tmp_path
):
    """Brain_004/T2 overlaps: binary writes it as before; a compression or labelmap fails its task with the reason."""
    import highdicom as hd

    out = tmp_path / "out"
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        str(out),
        "--variant",
        "nifti:binary_mask=true",
        "--variant",
        "seg:mask_format=dicom-seg",
        "--variant",
        "seg-binary:mask_format=dicom-seg,seg_type=binary",
        "--variant",
        "seg-jpegls:mask_format=dicom-seg,seg_type=auto,seg_compression=jpegls",
        engine="local",
    )
    assert result.returncode == 1, result.stdout + result.stderr  # task-004 of seg-jpegls
    assert check_segmentations(out, sample_with_images, "nifti", "seg-binary", False, seg_type="binary") == 13
    binaries = sorted((out / "seg-binary").rglob("*.dcm"))
    assert len(binaries) == 9
    for path in binaries:
        raw = pydicom.dcmread(path)
        assert raw.SOPClassUID == SEGMENTATION_STORAGE and raw.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert raw.SegmentsOverlap == ("YES" if path.parent.name == "Brain_004" else "NO")

    report = json.loads((out / "seg-jpegls/export-report.json").read_text())
    assert report["failed"] == ["task-004"]
    assert _failure(report, "task-004")["reason"].startswith(
        "series T2: segments Glioma (2), Abscess (3) overlap, so its DICOM SEG is BINARY, whose 1-bit frames "
        "cannot be compressed (jpegls); export with seg_compression none"
    )
    assert check_segmentations(out, sample_with_images, "nifti", "seg-jpegls", False) == 10

    # The flags of a single export: labelmap, RLE.
    flagged = tmp_path / "flagged"
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        str(flagged),
        "--mask-format",
        "dicom-seg",
        "--seg-type",
        "labelmap",
        "--seg-compression",
        "rle",
        engine="local",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((flagged / "export-report.json").read_text())
    assert report["failed"] == ["task-004"] and report["options"]["seg_compression"] == "rle"
    assert (
        "overlap, and a LABELMAP DICOM SEG gives each voxel one segment; export with seg_type binary"
        in (_failure(report, "task-004")["reason"])
    )
    assert "Traceback" not in result.stdout + result.stderr
    compared = 0
    for variant, syntax in (("seg-jpegls", JPEG_LS_LOSSLESS), ("flagged", RLE_LOSSLESS)):
        root = flagged if variant == "flagged" else out / variant
        for path in sorted(root.rglob("*.dcm")):
            plain_path = out / "seg" / path.relative_to(root)
            raw, plain = pydicom.dcmread(path), pydicom.dcmread(plain_path)
            assert raw.file_meta.TransferSyntaxUID == syntax and raw.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE
            assert np.array_equal(raw.pixel_array, plain.pixel_array), path
            volume, plain_volume = hd.seg.segread(path).get_volume(), hd.seg.segread(plain_path).get_volume()
            assert np.array_equal(volume.array, plain_volume.array) and np.allclose(volume.affine, plain_volume.affine)
            compared += 1
    assert compared == 16  # 8 SEGs each: every one but task-004's


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seg-type", "fractional"], "argument --seg-type: invalid choice: 'fractional'"),
        (["--seg-compression", "jpeg2000"], "argument --seg-compression: invalid choice: 'jpeg2000'"),
        (
            ["--seg-type", "binary", "--seg-compression", "rle"],
            "seg_compression rle compresses LABELMAP SEGs only: BINARY frames are 1 bit a pixel",
        ),
        (["--variant", "s:mask_format=dicom-seg,seg_compression=zip"], "seg_compression: Input should be 'none'"),
        (
            ["--variant", "s:mask_format=dicom-seg,seg_type=binary,seg_compression=jpegls"],
            "seg_compression jpegls compresses LABELMAP SEGs only",
        ),
    ],
)
def test_a_bad_seg_type_or_compression_is_a_usage_error(run_cli, sample_with_images, tmp_path, arguments, message):
    out = tmp_path / "out"
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        str(out),
        "--mask-format",
        "dicom-seg",
        *arguments,
        engine="local",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_flow_form_offers_seg_type_and_compression_and_writes_what_it_is_sent(
    prefect_api, sample_with_images, tmp_path
):
    from prefect.utilities.callables import parameter_schema

    from rbexport.flows.export import export_project

    schema = parameter_schema(export_project).model_dump_for_openapi()
    fields = schema["definitions"]["ExportOptions"]["properties"]
    assert fields["seg_type"]["enum"] == ["auto", "binary", "labelmap"] and fields["seg_type"]["default"] == "auto"
    assert fields["seg_compression"]["enum"] == ["none", "rle", "jpegls"]

    out = tmp_path / "out"
    options = {"mask_format": "dicom-seg", "seg_type": "binary"}  # as the form sends them
    variants = [
        {"name": "rle", "options": {"mask_format": "dicom-seg", "semantic_mask": True, "seg_compression": "rle"}}
    ]
    state = export_project(str(sample_with_images), str(out), options=options, return_state=True)
    assert state.is_completed(), state
    assert {pydicom.dcmread(path).SOPClassUID for path in out.rglob("*.dcm")} == {SEGMENTATION_STORAGE}
    without_overlaps(sample_with_images)
    state = export_project(str(sample_with_images), str(tmp_path / "v"), custom_variants=variants, return_state=True)
    assert state.is_completed(), state
    for path in (tmp_path / "v").rglob("*.dcm"):
        raw = pydicom.dcmread(path)
        assert raw.file_meta.TransferSyntaxUID == RLE_LOSSLESS and raw.pixel_array.any(), path


def test_a_served_deployment_writes_the_seg_type_and_compression_of_the_form(prefect_api, sample_with_images, tmp_path):
    """export-manual served from prefect.yaml, started with the SEG drop-downs' values as the UI sends them."""
    from prefect.deployments import run_deployment
    from prefect_helpers import served

    destination = tmp_path / "out"
    without_overlaps(sample_with_images)
    options = {"mask_format": "dicom-seg", "seg_type": "labelmap", "seg_compression": "jpegls"}
    with served(prefect_api, "export-manual") as server:
        flow_run = run_deployment(
            "export-project/export-manual",
            parameters={"source": str(sample_with_images), "destination": str(destination), "options": options},
            timeout=180,
            poll_interval=1,
        )
        assert flow_run.state.is_completed(), (flow_run.state, server.stdout.read1().decode()[-3000:])
    report = json.loads((destination / "export-report.json").read_text())
    assert report["options"]["seg_compression"] == "jpegls" and report["failed"] == []
    segs = sorted(destination.rglob("*.dcm"))
    assert len(segs) == 8
    for path in segs:
        raw = pydicom.dcmread(path)
        assert raw.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE and raw.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
        assert raw.pixel_array.any(), path


def test_changing_seg_type_or_compression_exports_the_tasks_again(sample_with_images, tmp_path):
    from rbexport.engine import run_export

    out = tmp_path / "out"
    without_overlaps(sample_with_images)

    def export(**options) -> RunReport:
        [report] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="dicom-seg", **options))
        return report

    assert len(export().exported) == 5 and len(export().skipped) == 5
    binary = export(seg_type="binary")
    assert len(binary.exported) == 5
    assert pydicom.dcmread(out / "segmentations/Brain_001/T1.dcm").SegmentationType == "BINARY"
    assert len(export(seg_type="binary").skipped) == 5
    labelmap = export(seg_type="labelmap")
    assert len(labelmap.exported) == 5
    compressed = export(seg_type="labelmap", seg_compression="jpegls")
    assert len(compressed.exported) == 5
    seg = pydicom.dcmread(out / "segmentations/Brain_001/T1.dcm")
    assert seg.SegmentationType == "LABELMAP" and seg.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    assert len(export(seg_type="labelmap", seg_compression="jpegls").skipped) == 5
    assert len(export().exported) == 5  # back to the defaults


# --- options ----------------------------------------------------------------------------


def test_dataset_layouts_refuse_another_mask_format_in_one_line(run_cli, sample_with_images, tmp_path):
    out = str(tmp_path / "out")
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        out,
        "--layout",
        "nnunet",
        "--mask-format",
        "png",
        engine="local",
    )
    assert result.returncode == 2
    assert "the nnunet layout writes NIfTI labels only" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(
        "run",
        "--source",
        str(sample_with_images),
        "--dest",
        out,
        "--variant",
        "D501_X:layout=msd,mask_format=mhd",
        engine="local",
    )
    assert result.returncode == 2 and "the msd layout writes NIfTI labels only" in result.stderr


def test_changing_the_mask_format_or_a_segs_images_exports_the_tasks_again(sample_with_images, tmp_path):
    from rbexport.engine import run_export

    out = tmp_path / "out"
    [first] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="mhd"))
    [same] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="mhd"))
    [changed] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="dicom-seg"))
    assert len(first.exported) == 6 and len(same.skipped) == 6 and len(changed.exported) == 6
    assert (out / "segmentations/Brain_001/T1.dcm").exists()

    # A DICOM SEG references its images: a new version of one of them exports its task again.
    tasks = json.loads((sample_with_images / "tasks.json").read_text())
    item = sample_with_images / tasks[0]["series"][0]["items"][0]
    image = pydicom.dcmread(item)
    image.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["a new version"])
    image.save_as(item)
    [again] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="dicom-seg"))
    assert again.exported == ["task-001"] and len(again.skipped) == 5
    seg = pydicom.dcmread(out / "segmentations/Brain_001/T1.dcm")
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert image.SOPInstanceUID in referenced

    # Its segments' codes and colours: a new segment_codes.json, then a new colour in the taxonomy.
    (sample_with_images / "segment_codes.json").write_text(
        json.dumps({"Glioma": {"code": "393564001", "meaning": "Glioma"}})
    )
    [recoded] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="dicom-seg"))
    assert len(recoded.exported) == 6, recoded
    seg = pydicom.dcmread(out / "segmentations/Brain_001/T1.dcm")
    glioma = next(item for item in seg.SegmentSequence if item.SegmentLabel == "Glioma")
    assert glioma.SegmentedPropertyTypeCodeSequence[0].CodeValue == "393564001"
    red = list(glioma.RecommendedDisplayCIELabValue)
    taxonomy = json.loads((sample_with_images / "taxonomy.json").read_text())
    next(kind for kind in taxonomy["objectTypes"] if kind["category"] == "Glioma")["color"] = "#010203"
    (sample_with_images / "taxonomy.json").write_text(json.dumps(taxonomy))
    [recoloured] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="dicom-seg"))
    assert len(recoloured.exported) == 6, recoloured
    seg = pydicom.dcmread(out / "segmentations/Brain_001/T1.dcm")
    glioma = next(item for item in seg.SegmentSequence if item.SegmentLabel == "Glioma")
    assert list(glioma.RecommendedDisplayCIELabValue) != red
    [unchanged] = run_export(str(sample_with_images), str(out), ExportOptions(mask_format="dicom-seg"))
    assert len(unchanged.skipped) == 6


def test_a_task_reserves_the_memory_its_binary_segmentation_holds(sample_with_images, tmp_path):
    """A BINARY SEG holds one segment's frames at a time (a byte a voxel), its file, and every segment's bits."""
    from rbexport.engine import run_export
    from rbexport.memory import process_budget

    tasks = json.loads((sample_with_images / "tasks.json").read_text())
    (sample_with_images / "tasks.json").write_text(json.dumps([task for task in tasks if task["taskId"] == "task-004"]))
    budget = process_budget()
    budget.peak = 0
    [report] = run_export(str(sample_with_images), str(tmp_path / "out"), ExportOptions(mask_format="dicom-seg"))
    assert report.exported == ["task-004"]
    voxels = 48 * 48 * 16
    decoding = voxels * (2 + 6)  # the uint16 map and its working bytes (rbexport.memory)
    assert budget.peak >= decoding + voxels * (2 + 1)  # and the SEG of three overlapping instances
