"""RT-STRUCT (SPEC 7): every ROI read back by an independent even-odd reader, voxel for voxel.

The reader (tests/rtstruct_reader.py) knows nothing of rbexport: it takes each contour's
image from its ContourImageSequence, that image's own geometry, and fills pixel centres
even-odd; the result is compared, pixel for pixel, with the label-map voxels under each
image. Generated series: square and non-square (0.8 x 0.9 mm) pixels, a tilted series,
slices stored the other way round, multi-frame sources, a dense map, a single image; the
structures: a ring (a hole), one voxel at the image's corner, a 3x3 square, a structure on
two non-adjacent slices, two overlapping instances, pixels that touch only by corners.
Then through the CLI (bad input, warnings, tasks.json) and the flow on the Prefect server.
"""

from __future__ import annotations

import io
import json
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from rtstruct_reader import label_under_planes, off_pixel_corners, roi_masks

from rbexport.app.sample import AFFINE, nifti_bytes, write_sample_project
from rbexport.app.sample_images import dicom_series_on_grid
from rbexport.images.dicom import read_dicom_headers
from rbexport.mask_formats.dicom_seg import plan_segments
from rbexport.mask_formats.rtstruct import encode_structure_set
from rbexport.nifti import LabelMap
from rbexport.options import ExportOptions
from rbexport.segment_map import parse_segment_map
from rbexport.storage import LocalStorage
from rbexport.structures.masks import VoxelIndex
from rbexport.variants import Variant

SEGMENT_MAP = {
    "1": {"category": "Ring"},
    "2": {"category": "Dot"},
    "3": {"category": "Square"},
    "4": {"category": "Apart"},
    "5": {"category": "Left", "overlappingGroups": [7]},
    "6": {"category": "Right", "overlappingGroups": [7]},
    "8": {"category": "Checkers"},
}


def structures(shape=(12, 10, 5)) -> np.ndarray:
    """The structures, written out (NIfTI axes: column, row, slice)."""
    volume = np.zeros(shape, np.uint8)
    volume[1:6, 1:6, 1] = 1  # a ring: a 5x5 square with a hole
    volume[3, 3, 1] = 0
    volume[0, 0, 3] = 2  # one voxel, at the image's corner
    volume[7:10, 6:9, 2] = 3  # 3x3
    volume[8:10, 1:3, [0, 3]] = 4  # on two slices with none between them
    volume[1:5, 6:9, 3] = 5  # two instances overlapping where 7 is
    volume[5:8, 6:9, 3] = 6
    volume[4:6, 6:9, 3] = 7
    volume[9, 8, 4] = volume[10, 7, 4] = volume[11, 8, 4] = volume[10, 9, 4] = 8  # touching by corners only
    return volume


def rotation(degrees_about_x: float, degrees_about_z: float) -> np.ndarray:
    a, b = np.radians(degrees_about_x), np.radians(degrees_about_z)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return about_z @ about_x


def grid(spacing=(0.8, 0.8, 2.0), turn=None, reversed_slices=False) -> np.ndarray:
    turn = np.eye(3) if turn is None else turn
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, -1.0 if reversed_slices else 1.0]) @ turn @ np.diag(spacing)
    affine[:3, 3] = [90.25, -126.5, 33.0]
    return affine


def export_case(volume, affine, segment_map=SEGMENT_MAP, semantic=False, numbers=None, **series_options):
    """The structure set of `volume` on `affine`, and the DICOM images it references."""
    image = nib.Nifti1Image(volume, affine)
    image.header.set_data_dtype(volume.dtype)
    series = dicom_series_on_grid(np.zeros(volume.shape, np.int16), affine, **series_options)
    headers = read_dicom_headers(series)
    index = VoxelIndex(volume)
    rois = plan_segments(parse_segment_map(segment_map), index, semantic, numbers)
    colours = {"Ring": (10, 20, 30)}
    data = encode_structure_set(
        rois, index, LabelMap(volume, image.header), headers, "CT", "seed", colours, {"Square": "PTV"}
    )
    images = [pydicom.dcmread(BytesIO(raw), stop_before_pixels=True) for _, raw in series]
    return data, rois, images


def assert_read_back(data: bytes, rois, volume, affine, images) -> int:
    """Every ROI filled even-odd equals its voxels on every image; returns the pixels compared as set."""
    structure_set = pydicom.dcmread(BytesIO(data))
    assert off_pixel_corners(structure_set, images) == 0  # on the voxel boundary, not anywhere between centres
    filled = roi_masks(structure_set, images)
    assert sorted(filled) == sorted(int(roi.key) for roi in rois)
    labelled = 0
    for roi in rois:
        expected = label_under_planes(np.isin(volume, roi.values), affine, images)
        got = filled[int(roi.key)]
        assert set(got) <= set(expected)
        for key, under in expected.items():
            mine = got.get(key, np.zeros_like(under, dtype=bool))
            assert np.array_equal(mine, under != 0), (roi.key, key, np.argwhere(mine != (under != 0))[:5])
            labelled += int(under.sum())
        assert sum(int(mask.sum()) for mask in got.values()) == int(np.isin(volume, roi.values).sum())
    return labelled


GEOMETRIES = {
    "square-pixels": ({}, {}),
    "non-square-pixels": ({"spacing": (0.8, 0.9, 2.5)}, {}),
    "tilted": ({"spacing": (0.8, 0.9, 2.5), "turn": rotation(25.0, 10.0)}, {}),
    "slices-the-other-way": ({"spacing": (0.8, 0.9, 2.5), "reversed_slices": True}, {}),
    "multi-frame": ({"spacing": (0.8, 0.9, 2.5)}, {"multiframe": True}),
    "multi-frame-tilted-the-other-way": (
        {"spacing": (0.9, 0.8, 1.5), "turn": rotation(-30.0, 5.0), "reversed_slices": True},
        {"multiframe": True},
    ),
}


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_every_roi_fills_back_even_odd_to_its_voxels(geometry):
    grid_options, series_options = geometry
    volume, affine = structures(), grid(**grid_options)
    data, rois, images = export_case(volume, affine, **series_options)
    assert [roi.key for roi in rois] == ["1", "2", "3", "4", "5", "6", "8"]
    assert assert_read_back(data, rois, volume, affine, images) == int((volume != 0).sum()) + int((volume == 7).sum())


def test_a_dense_map_and_a_single_image():
    """More than a quarter of the voxels labelled (the map is looked up, not indexed), and a 2D series."""
    volume = np.zeros((6, 5, 3), np.uint8)
    volume[:, :, :2] = 1
    volume[2, 2, 0] = 2
    volume[0:2, 0:2, 2] = 2
    affine = grid((0.8, 0.9, 2.0))
    data, rois, images = export_case(volume, affine, {"1": {"category": "Body"}, "2": {"category": "Spot"}})
    assert assert_read_back(data, rois, volume, affine, images) > 0
    flat = np.zeros((7, 6), np.uint8)
    flat[1:6, 1:5] = 3
    flat[3, 2] = 0
    data, rois, images = export_case(flat, grid((0.8, 0.9, 1.0)), {"3": {"category": "Lung"}})
    assert assert_read_back(data, rois, flat, grid((0.8, 0.9, 1.0)), images) == 19


def test_rois_are_named_numbered_coloured_and_typed_and_reference_their_images():
    volume, affine = structures(), grid((0.8, 0.9, 2.5))
    data, _, images = export_case(volume, affine)
    structure_set = pydicom.dcmread(BytesIO(data))
    assert structure_set.SOPClassUID == pydicom.uid.RTStructureSetStorage and structure_set.Modality == "RTSTRUCT"
    first = images[0]
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "FrameOfReferenceUID"):
        assert structure_set[keyword].value == first[keyword].value, keyword
    [frame_of_reference] = structure_set.ReferencedFrameOfReferenceSequence
    assert frame_of_reference.FrameOfReferenceUID == first.FrameOfReferenceUID
    [study] = frame_of_reference.RTReferencedStudySequence
    [series] = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence} == {
        image.SOPInstanceUID for image in images
    }
    rois = {item.ROINumber: item for item in structure_set.StructureSetROISequence}
    assert {number: item.ROIName for number, item in rois.items()} == {
        int(key): entry["category"] for key, entry in SEGMENT_MAP.items()
    }
    assert all(item.ReferencedFrameOfReferenceUID == first.FrameOfReferenceUID for item in rois.values())
    colours = {item.ReferencedROINumber: list(item.ROIDisplayColor) for item in structure_set.ROIContourSequence}
    assert colours[1] == [10, 20, 30]  # the taxonomy's
    assert colours[2] == [31, 120, 180]  # the palette's, for value 2
    types = {item.ReferencedROINumber: item.RTROIInterpretedType for item in structure_set.RTROIObservationsSequence}
    assert types == {1: "ORGAN", 2: "ORGAN", 3: "PTV", 4: "ORGAN", 5: "ORGAN", 6: "ORGAN", 8: "ORGAN"}
    by_uid = {image.SOPInstanceUID: image for image in images}
    for roi in structure_set.ROIContourSequence:
        for contour in roi.ContourSequence:
            image = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            z = np.array(contour.ContourData, float).reshape(-1, 3)[:, 2]
            assert np.allclose(z, float(image.ImagePositionPatient[2]))  # an axial series: on its slice
    # Four contours on the slice of the checkers (they touch by corners only), two for the ring.
    contours = {item.ReferencedROINumber: len(item.ContourSequence) for item in structure_set.ROIContourSequence}
    assert contours[8] == 4 and contours[1] == 2 and contours[4] == 2 and contours[2] == 1


def test_decimal_strings_fit_sixteen_characters_and_the_file_is_the_same_every_time():
    volume = structures()
    affine = grid((0.7777777, 0.9111111, 2.5), rotation(33.3, 12.1))
    affine[:3, 3] = [-12345.678901, 2345.6789012, -345.67890123]
    data, _, _ = export_case(volume, affine)
    structure_set = pydicom.dcmread(BytesIO(data))
    checked = 0
    for element in structure_set.iterall():
        if element.VR == "DS":
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                assert len(value.original_string) <= 16, (element.keyword, value.original_string)
                checked += 1
    assert checked > 100
    assert export_case(volume, affine)[0] == data


def test_a_semantic_export_has_one_roi_per_category_number():
    volume = structures()
    segment_map = {key: {"category": "Tumour" if key in "156" else "Organ"} for key in SEGMENT_MAP}
    for key in ("5", "6"):
        segment_map[key]["overlappingGroups"] = [7]
    affine = grid((0.8, 0.9, 2.5))
    data, rois, images = export_case(volume, affine, segment_map, semantic=True, numbers={"Organ": 2, "Tumour": 5})
    assert [(roi.key, roi.category) for roi in rois] == [("2", "Organ"), ("5", "Tumour")]
    assert assert_read_back(data, rois, volume, affine, images) > 0
    names = {item.ROINumber: item.ROIName for item in pydicom.dcmread(BytesIO(data)).StructureSetROISequence}
    assert names == {2: "Organ", 5: "Tumour"}


# --- through the CLI and the flow --------------------------------------------------------


@pytest.fixture
def sample_with_images(tmp_path) -> Path:
    source = tmp_path / "source"
    write_sample_project(LocalStorage(source), with_images=True)
    return source


def series_entries(task: dict):
    lists = [task["series"]] + [annotator["series"] for annotator in task.get("consensusTasks", [])]
    if "superTruth" in task:
        lists.append(task["superTruth"]["series"])
    for series_list in lists:
        yield from (series for series in series_list if "segmentations" in series)


def check_structure_sets(out: Path, source: Path, nifti: str, rtstruct: str) -> int:
    """Every ROI of every structure set against the NIfTI export's instance (or category) file."""
    tasks = json.loads((out / rtstruct / "tasks.json").read_text())
    nifti_tasks = {task["taskId"]: task for task in json.loads((out / nifti / "tasks.json").read_text())}
    source_tasks = {task["taskId"]: task for task in json.loads((source / "tasks.json").read_text())}
    checked = 0
    for task in tasks:
        pairs = zip(series_entries(task), series_entries(nifti_tasks[task["taskId"]]), strict=True)
        for position, (series, nifti_series) in enumerate(pairs):
            source_series = source_tasks[task["taskId"]]["series"]
            items = source_series[position if len(source_series) > 1 else 0]["items"]
            images = [pydicom.dcmread(source / item, stop_before_pixels=True) for item in items]
            if series["segmentations"] == []:
                continue
            structure_set = pydicom.dcmread(out / rtstruct / series["segmentations"])
            filled = roi_masks(structure_set, images)
            for key, entry in series["segmentMap"].items():
                if "roiNumber" not in entry:
                    continue
                mask_file = out / nifti / nifti_series["segmentMap"][key]["mask"]
                expected = label_under_planes(
                    np.asarray(nib.load(mask_file).dataobj), nib.load(mask_file).affine, images
                )
                got = filled[entry["roiNumber"]]
                for plane, under in expected.items():
                    assert np.array_equal(got.get(plane, np.zeros_like(under, bool)), under != 0), (mask_file, plane)
                checked += 1
    return checked


def test_rtstruct_from_the_cli_reads_back_as_the_nifti_masks(run_cli, sample_with_images, tmp_path):
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
        "rt:mask_format=rtstruct",
        "--variant",
        "nifti-semantic:semantic_mask=true,binary_mask=true",
        "--variant",
        "rt-semantic:semantic_mask=true,mask_format=rtstruct",
        engine="local",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert check_structure_sets(out, sample_with_images, "nifti", "rt") == 13
    assert check_structure_sets(out, sample_with_images, "nifti-semantic", "rt-semantic") == 12
    tasks = json.loads((out / "rt/tasks.json").read_text())
    brain_004 = next(task for task in tasks if task["taskId"] == "task-004")["series"][0]
    assert brain_004["segmentations"] == "segmentations/Brain_004/T2.dcm"
    assert {key: entry["roiNumber"] for key, entry in brain_004["segmentMap"].items()} == {"1": 1, "2": 2, "3": 3}
    assert all("mask" not in entry for entry in brain_004["segmentMap"].values())
    consensus = next(task for task in tasks if task["taskId"] == "task-005")
    assert consensus["consensusTasks"][1]["series"][0]["segmentations"] == "segmentations/Brain_005/T1_2.dcm"
    overlapping = pydicom.dcmread(out / "rt/segmentations/Brain_004/T2.dcm")
    assert [item.ROIName for item in overlapping.StructureSetROISequence] == ["Glioma", "Glioma", "Abscess"]
    assert [list(item.ROIDisplayColor) for item in overlapping.ROIContourSequence][2] == [0, 0, 255]  # the taxonomy's


def test_bad_series_fail_their_task_with_a_reason_and_an_empty_structure_set_is_a_warning(
    run_cli, sample_with_images, tmp_path
):
    tasks = json.loads((sample_with_images / "tasks.json").read_text())
    picture = io.BytesIO()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(picture, format="PNG")
    (sample_with_images / "images/chest.png").write_bytes(picture.getvalue())
    tasks[5]["series"][0]["items"] = ["images/chest.png"]  # task-006: not DICOM
    del tasks[0]["series"][0]["items"]  # task-001: no images
    tasks[1]["series"][1]["items"] = ["images/chest.png"]  # task-002's FLAIR: nothing annotated, never read
    flair = sample_with_images / "masks/brain-002-FLAIR.nii.gz"
    flair.write_bytes(nifti_bytes(np.zeros_like(np.asarray(nib.load(flair).dataobj)), AFFINE))
    (sample_with_images / "tasks.json").write_text(json.dumps(tasks))
    shifted = AFFINE.copy()  # task-003: 5 mm off its images
    shifted[0, 3] += 5.0
    label = np.asarray(nib.load(sample_with_images / "masks/brain-003.nii.gz").dataobj)
    (sample_with_images / "masks/brain-003.nii.gz").write_bytes(nifti_bytes(label, shifted))
    out = tmp_path / "out"
    result = run_cli(
        "run", "--source", str(sample_with_images), "--dest", str(out), "--mask-format", "rtstruct", engine="local"
    )
    assert result.returncode == 1, result.stderr
    report = json.loads((out / "export-report.json").read_text())
    assert sorted(report["failed"]) == ["task-001", "task-003", "task-006"]
    reasons = {failure["taskId"]: failure for failure in report["failures"]}
    assert reasons["task-006"]["file"] == "images/chest.png"
    assert (
        "its images are picture, not DICOM; an RT Structure Set references DICOM images"
        in (reasons["task-006"]["reason"])
    )
    assert (
        "series T1 has no image items: an RT Structure Set references its DICOM images"
        in (reasons["task-001"]["reason"])
    )
    assert (
        "series A: the label map does not lie on its DICOM images' grid: label map shape (48, 48, 16)"
        in (reasons["task-003"]["reason"])
    )
    assert (out / "segmentations/Brain_002/T1.dcm").exists()
    assert not (out / "segmentations/Brain_002/FLAIR.dcm").exists()
    assert {
        "taskId": "task-002",
        "file": "masks/brain-002-FLAIR.nii.gz",
        "message": "series FLAIR: no annotated voxels: no RT Structure Set written",
    } in report["warnings"]
    assert "Traceback" not in result.stdout + result.stderr


def test_rtstruct_from_the_flow_with_roi_types_from_the_taxonomy(prefect_api, sample_with_images, tmp_path):
    from rbexport.flows.export import export_project

    taxonomy = json.loads((sample_with_images / "taxonomy.json").read_text())
    taxonomy["objectTypes"][0]["rtRoiInterpretedType"] = "GTV"  # Glioma
    (sample_with_images / "taxonomy.json").write_text(json.dumps(taxonomy))
    out = tmp_path / "out"
    variants = (
        Variant(name="nifti", options=ExportOptions(semantic_mask=True, binary_mask=True)),
        Variant(name="rt", options=ExportOptions(semantic_mask=True, mask_format="rtstruct")),
    )
    state = export_project(str(sample_with_images), str(out), custom_variants=variants, return_state=True)
    assert state.is_completed(), state
    assert check_structure_sets(out, sample_with_images, "nifti", "rt") == 12
    structure_set = pydicom.dcmread(out / "rt/segmentations/Brain_001/T1.dcm")
    names = {item.ROINumber: item.ROIName for item in structure_set.StructureSetROISequence}
    assert names == {1: "Glioma", 2: "Edema"}  # category numbers
    types = {item.ReferencedROINumber: item.RTROIInterpretedType for item in structure_set.RTROIObservationsSequence}
    assert types == {1: "GTV", 2: "ORGAN"}

    taxonomy["objectTypes"][1]["rtRoiInterpretedType"] = "not a code"
    (sample_with_images / "taxonomy.json").write_text(json.dumps(taxonomy))
    state = export_project(
        str(sample_with_images),
        str(tmp_path / "again"),
        options=ExportOptions(mask_format="rtstruct"),
        return_state=True,
    )
    assert state.is_failed()
    assert "rtRoiInterpretedType of category 'Edema' must be a DICOM code string" in str(state.message)


def test_images_without_patient_coordinates_fail_with_a_reason():
    """An X-ray without ImagePositionPatient or a Frame of Reference: contours have nowhere to lie."""
    from rbexport.app.sample_images import xray_image
    from rbexport.errors import TaskDataError

    name, raw = xray_image(np.zeros((6, 5), np.uint16))
    headers = read_dicom_headers([(name, raw)])
    volume = np.zeros((6, 5), np.uint8)
    volume[1:3, 1:3] = 1
    image = nib.Nifti1Image(volume, headers.affine)
    index = VoxelIndex(volume)
    rois = plan_segments(parse_segment_map({"1": {"category": "Nodule"}}), index, False, None)
    label_map = LabelMap(volume, image.header)
    with pytest.raises(TaskDataError, match="series PA: a DICOM image without ImagePositionPatient; an RT Structure"):
        encode_structure_set(rois, index, label_map, headers, "PA", "seed")
    del headers.datasets[0].FrameOfReferenceUID
    with pytest.raises(TaskDataError, match="no Frame of Reference .* an RT Structure Set places contours"):
        encode_structure_set(rois, index, label_map, headers, "PA", "seed")


def test_a_category_with_a_backslash_or_control_characters_is_still_one_roi_name():
    volume = np.zeros((4, 4, 2), np.uint8)
    volume[1, 1, 0] = 1
    data, _, _ = export_case(volume, grid(), {"1": {"category": "Liver\\left\tlobe é"}})
    [roi] = pydicom.dcmread(BytesIO(data)).StructureSetROISequence
    assert roi.ROIName == "Liver left lobe é"  # UTF-8 (ISO_IR 192), one value
