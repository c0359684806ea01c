"""One contract for every mask writer in the registry (rbexport.mask_formats.WRITERS).

Each format is exported from a generated project and read back with the reader its users
have (nibabel, SimpleITK, Pillow, highdicom, an independent even-odd contour filler); every
instance it holds must be, voxel for voxel, the instance's voxels in the *source* label
map (its own value and its overlap groups). The same suite also checks, for every writer:
the registry is the options' drop-down and the CLI's choices, every path tasks.json names
exists with the writer's suffix, the report lists every file with its sha256, and (except
DICOM SEG, which holds its creation time) the same export again gives the same bytes.
A new format is one module in rbexport/mask_formats, a line in the registry, and a case here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import nibabel as nib
import numpy as np
import pydicom
import pytest
from rtstruct_reader import label_under_planes, roi_masks
from test_mask_formats import write_2d_project

from rbexport.app.sample import write_sample_project
from rbexport.engine import run_export
from rbexport.mask_formats import WRITERS, writer_named
from rbexport.options import ExportOptions, MaskFormat
from rbexport.storage import LocalStorage

Reader = Callable[[Path, dict, str, list[pydicom.Dataset]], dict]


@dataclass(frozen=True)
class WriterCase:
    project: str  # "3d" (the sample, with DICOM series) or "2d"
    options: dict  # beyond mask_format
    read: Callable  # (export root, exported series, key, images) -> what it holds of that instance
    deterministic: bool = True


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj) != 0


def read_nifti(root: Path, series: dict, key: str, images) -> np.ndarray:
    return _array(root / series["segmentMap"][key]["mask"])


def read_metaimage(root: Path, series: dict, key: str, images) -> np.ndarray:
    import SimpleITK as sitk

    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / series["segmentMap"][key]["mask"])))
    return voxels.transpose(tuple(range(voxels.ndim))[::-1]) != 0  # ITK's z, y, x to NIfTI's x, y, z


def read_png(root: Path, series: dict, key: str, images) -> np.ndarray:
    from PIL import Image

    with Image.open(root / series["segmentMap"][key]["mask"]) as picture:
        return np.asarray(picture).T != 0  # PNG rows run along the NIfTI's second axis


def read_dicom_seg(root: Path, series: dict, key: str, images) -> dict:
    import highdicom as hd

    seg = hd.seg.segread(root / series["segmentations"])
    uids = [image.SOPInstanceUID for image in images]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[series["segmentMap"][key]["segmentNumber"]],
        assert_missing_frames_are_empty=True,
    )
    return {(uid, None): frame[:, :, 0] != 0 for uid, frame in zip(uids, pixels, strict=True)}


def read_rtstruct(root: Path, series: dict, key: str, images) -> dict:
    structure_set = pydicom.dcmread(root / series["segmentations"])
    return roi_masks(structure_set, images)[series["segmentMap"][key]["roiNumber"]]


CASES: dict[str, WriterCase] = {
    "nifti": WriterCase("3d", {"binary_mask": True}, read_nifti),
    "png": WriterCase("2d", {"binary_mask": True}, read_png),
    "mhd": WriterCase("3d", {"binary_mask": True}, read_metaimage),
    "dicom-seg": WriterCase("3d", {}, read_dicom_seg, deterministic=False),
    "rtstruct": WriterCase("3d", {}, read_rtstruct),
}


def test_every_writer_in_the_registry_is_a_choice_of_the_form_and_the_cli_and_has_a_case_here():
    from rbexport.app.cli import build_parser

    assert list(WRITERS) == list(get_args(MaskFormat)) == list(CASES)
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    [mask_format] = [action for action in run._actions if action.dest == "mask_format"]
    assert list(mask_format.choices) == list(WRITERS)
    for name in WRITERS:
        assert writer_named(name).name == name


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    three_d, two_d = tmp_path_factory.mktemp("sample-3d"), tmp_path_factory.mktemp("sample-2d")
    write_sample_project(LocalStorage(three_d), with_images=True)
    write_2d_project(two_d)
    return {"3d": three_d, "2d": two_d}


def annotated_series(exported: dict, source: dict) -> Iterator[tuple[int, dict, dict]]:
    """(position, exported series, source series) of every annotated series of a task entry."""
    lists = [(exported["series"], source["series"])]
    lists += list(
        zip(
            [annotator["series"] for annotator in exported.get("consensusTasks", [])],
            [annotator["series"] for annotator in source.get("consensusTasks", [])],
            strict=True,
        )
    )
    if "superTruth" in exported:
        lists.append((exported["superTruth"]["series"], source["superTruth"]["series"]))
    for exported_list, source_list in lists:
        for position, (series, original) in enumerate(zip(exported_list, source_list, strict=True)):
            if original.get("segmentations") is not None:
                yield position, series, original


def instance_voxels(source: Path, original: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """An instance's voxels in the source label map (its value and its groups), and the map's affine."""
    image = nib.load(source / original["segmentations"])
    values = [int(key), *original["segmentMap"][key].get("overlappingGroups", [])]
    return np.isin(np.rint(np.asarray(image.dataobj)).astype(np.int64), values), image.affine


@pytest.mark.parametrize("mask_format", list(CASES))
def test_each_writer_holds_every_instance_as_the_source_label_map_does(mask_format, projects, tmp_path):
    case, writer = CASES[mask_format], writer_named(mask_format)
    source = projects[case.project]
    options = ExportOptions(mask_format=mask_format, **case.options)
    [report] = run_export(str(source), str(tmp_path / "out"), options)
    out = tmp_path / "out"
    assert report.exported and all(failure.reason.startswith("PNG masks are 2D") for failure in report.failures)

    source_tasks = {task["taskId"]: task for task in json.loads((source / "tasks.json").read_text())}
    compared = 0
    for task in json.loads((out / "tasks.json").read_text()):
        original_task = source_tasks[task["taskId"]]
        for position, series, original in annotated_series(task, original_task):
            paths = [series["segmentations"]] if isinstance(series["segmentations"], str) else series["segmentations"]
            assert all(path.endswith(writer.suffix(options)) and (out / path).is_file() for path in paths), paths
            items = original_task["series"][position].get("items") or []
            images = [pydicom.dcmread(source / item, stop_before_pixels=True) for item in items]
            for key in original["segmentMap"]:
                expected, affine = instance_voxels(source, original, key)
                if not expected.any():
                    continue
                got = case.read(out, series, key, images)
                if isinstance(got, dict):  # per source image
                    for plane, under in label_under_planes(expected, affine, images).items():
                        assert np.array_equal(got.get(plane, np.zeros_like(under, bool)), under != 0), (key, plane)
                else:
                    assert np.array_equal(got.reshape(expected.shape), expected), (series["segmentations"], key)
                compared += 1
    assert compared >= (5 if case.project == "2d" else 13)

    written = {record.path: record.sha256 for record in report.files}
    on_disk = {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in out.rglob("*")
        if path.is_file() and path.name != "export-report.json"
    }
    assert {path: digest for path, digest in on_disk.items() if path in written} == written
    assert set(on_disk) - set(written) <= {".rbexport-state.json", ".rbexport-lease.json"} | {
        path for path in on_disk if path.startswith(".")
    }
    if case.deterministic:
        [again] = run_export(str(source), str(tmp_path / "again"), options)
        assert {record.path: record.sha256 for record in again.files} == written


def test_the_registry_names_every_root_file_a_writer_writes():
    """rbexport.run refuses a source inside an export's root files without importing the writers."""
    from rbexport.export_tree import CLASS_MAP_JSON
    from rbexport.mask_formats import INDEX_FILES

    assert INDEX_FILES == (CLASS_MAP_JSON,)
