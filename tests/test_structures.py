"""SPEC 1-3 through a real local-folder export (`run_export`), read back from disk.

Masks are 4x3x2 arrays written out in full, so each expected file can be checked by eye.
"""

from __future__ import annotations

import copy
import gzip
import json
import struct

import numpy as np
import pytest
from spec_helpers import (
    AFFINE,
    NO_DATASET,
    OVERLAP_MAP,
    OVERLAP_SEGMENT_MAP,
    PLAIN_MAP,
    PLAIN_SEGMENT_MAP,
    TAXONOMY,
    export,
    nifti_bytes,
    series_task,
    sha256,
    write_source,
)

from rbexport.engine import run_export
from rbexport.errors import ConfigurationError
from rbexport.options import ExportOptions

T = "segmentations/Task_1"  # the folder of the task most tests export

# OVERLAP_MAP, for reference:            instance 1 = {1}, 2 = {2, 5}, 3 = {3, 5}
#   [[[1, 1], [0, 0], [0, 0]],
#    [[1, 0], [2, 2], [0, 0]],
#    [[0, 0], [2, 5], [3, 0]],
#    [[0, 0], [5, 3], [3, 3]]]
OVERLAP_INSTANCE_1 = np.array(
    [
        [[1, 1], [0, 0], [0, 0]],
        [[1, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
    ]
)
OVERLAP_INSTANCE_2 = np.array(
    [
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [1, 1], [0, 0]],
        [[0, 0], [1, 1], [0, 0]],
        [[0, 0], [1, 0], [0, 0]],
    ]
)
OVERLAP_INSTANCE_3 = np.array(
    [
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 1], [1, 0]],
        [[0, 0], [1, 1], [1, 1]],
    ]
)

# PLAIN_MAP, for reference:               instance 1 = Glioma, 2 = Edema
#   [[[1, 1], [0, 0], [0, 0]],
#    [[1, 0], [0, 0], [0, 2]],
#    [[0, 0], [0, 0], [2, 2]],
#    [[0, 0], [0, 0], [0, 2]]]
PLAIN_INSTANCE_1 = OVERLAP_INSTANCE_1
PLAIN_INSTANCE_2 = np.array(
    [
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 1]],
        [[0, 0], [0, 0], [1, 1]],
        [[0, 0], [0, 0], [0, 1]],
    ]
)

# For semantic exports: on OVERLAP_MAP, instance 1 is Edema (category 2), instance 2 Abscess (3),
# instance 3 Glioma (1). Value 5 (instances 2 and 3) is Abscess and Glioma: Glioma (1) wins.
SEMANTIC_SEGMENT_MAP = {
    "1": {"category": "Edema", "attributes": {"side": "left"}},
    "2": {"category": "Abscess", "overlappingGroups": [5]},
    "3": {"category": "Glioma", "attributes": {"grade": "IV"}, "overlappingGroups": [5]},
}
SEMANTIC_MAP = np.array(
    [
        [[2, 2], [0, 0], [0, 0]],
        [[2, 0], [3, 3], [0, 0]],
        [[0, 0], [3, 1], [1, 0]],
        [[0, 0], [1, 1], [1, 1]],
    ]
)
GLIOMA_FILE = OVERLAP_INSTANCE_3  # category 1: values 3 and 5
EDEMA_FILE = OVERLAP_INSTANCE_1  # category 2: value 1
ABSCESS_FILE = OVERLAP_INSTANCE_2  # category 3: values 2 and 5


def assert_voxels(result, path: str, expected: np.ndarray, dtype=np.uint8) -> None:
    image = result.image(path)
    assert image.get_data_dtype() == dtype, path
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), expected, err_msg=path)


def one_series(segment_map=OVERLAP_SEGMENT_MAP, mask="masks/t1.nii.gz", **fields) -> dict:
    return {"name": "T1", "segmentations": mask, "segmentMap": segment_map, **fields}


# 2.1 Standard export, no overlaps


def test_single_series_exports_the_label_map_unchanged(tmp_path):
    tasks = [series_task([one_series(PLAIN_SEGMENT_MAP, items=["a.dcm", "b.dcm"])])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP})
    assert result.tasks == [
        {
            "taskId": "t1",
            "name": "Task_1",
            "series": [
                {
                    "name": "T1",
                    "segmentations": f"{T}/T1.nii.gz",
                    "segmentMap": {"1": {"category": "Glioma"}, "2": {"category": "Edema"}},
                    "items": ["a.dcm", "b.dcm"],
                    "binaryMask": False,
                    "semanticMask": False,
                }
            ],
        }
    ]
    assert result.mask_files() == [f"{T}/T1.nii.gz"]
    assert_voxels(result, f"{T}/T1.nii.gz", PLAIN_MAP)


def test_several_series_each_get_their_file(tmp_path):
    flair = np.array(
        [
            [[0, 0], [0, 0], [0, 0]],
            [[0, 3], [3, 0], [0, 0]],
            [[0, 0], [0, 0], [0, 0]],
            [[0, 0], [0, 0], [0, 0]],
        ],
        dtype=np.uint8,
    )
    tasks = [
        series_task(
            [
                one_series(PLAIN_SEGMENT_MAP, "masks/t1.nii.gz"),
                {"name": "FLAIR", "segmentations": "masks/flair.nii.gz", "segmentMap": {"3": {"category": "Edema"}}},
            ]
        )
    ]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP, "masks/flair.nii.gz": flair})
    assert [s["segmentations"] for s in result.tasks[0]["series"]] == [f"{T}/T1.nii.gz", f"{T}/FLAIR.nii.gz"]
    assert result.mask_files() == [f"{T}/FLAIR.nii.gz", f"{T}/T1.nii.gz"]
    assert_voxels(result, f"{T}/T1.nii.gz", PLAIN_MAP)
    assert_voxels(result, f"{T}/FLAIR.nii.gz", flair)


def test_unnamed_series_are_named_a_b_c_and_unnamed_tasks_use_the_task_id(tmp_path):
    masks = {f"masks/{n}.nii.gz": (PLAIN_MAP == n).astype(np.uint8) for n in (1, 2)}
    masks["masks/0.nii.gz"] = np.zeros((4, 3, 2), dtype=np.uint8)
    series = [{"segmentations": f"masks/{n}.nii.gz", "segmentMap": {"1": {"category": "Glioma"}}} for n in (1, 2, 0)]
    result = export(tmp_path, [series_task(series, task_id="0c9f-77", name=None)], masks)
    assert [s["segmentations"] for s in result.tasks[0]["series"]] == [
        "segmentations/0c9f-77/A.nii.gz",
        "segmentations/0c9f-77/B.nii.gz",
        "segmentations/0c9f-77/C.nii.gz",
    ]
    assert_voxels(result, "segmentations/0c9f-77/A.nii.gz", PLAIN_INSTANCE_1)
    assert_voxels(result, "segmentations/0c9f-77/B.nii.gz", PLAIN_INSTANCE_2)
    assert_voxels(result, "segmentations/0c9f-77/C.nii.gz", np.zeros((4, 3, 2)))
    assert "name" not in result.tasks[0]


def test_two_series_with_the_same_name_become_t1_and_t1_1(tmp_path):
    tasks = [
        series_task(
            [
                one_series(PLAIN_SEGMENT_MAP, "masks/a.nii.gz"),
                one_series({"1": {"category": "Glioma"}}, "masks/b.nii.gz"),
            ]
        )
    ]
    second = (PLAIN_MAP == 1).astype(np.uint8)
    result = export(tmp_path, tasks, {"masks/a.nii.gz": PLAIN_MAP, "masks/b.nii.gz": second})
    assert [s["segmentations"] for s in result.tasks[0]["series"]] == [f"{T}/T1.nii.gz", f"{T}/T1_1.nii.gz"]
    assert [s["name"] for s in result.tasks[0]["series"]] == ["T1", "T1"]  # the source's names are kept
    assert_voxels(result, f"{T}/T1.nii.gz", PLAIN_MAP)
    assert_voxels(result, f"{T}/T1_1.nii.gz", second)


def test_two_tasks_with_the_same_name_get_separate_folders(tmp_path):
    tasks = [
        series_task([one_series(PLAIN_SEGMENT_MAP, "masks/a.nii.gz")], task_id="first"),
        series_task([one_series(PLAIN_SEGMENT_MAP, "masks/b.nii.gz")], task_id="second"),
    ]
    second = (PLAIN_MAP == 2).astype(np.uint8) * 2
    result = export(tmp_path, tasks, {"masks/a.nii.gz": PLAIN_MAP, "masks/b.nii.gz": second})
    assert [t["series"][0]["segmentations"] for t in result.tasks] == [f"{T}/T1.nii.gz", f"{T}_1/T1.nii.gz"]
    assert_voxels(result, f"{T}/T1.nii.gz", PLAIN_MAP)
    assert_voxels(result, f"{T}_1/T1.nii.gz", second)


# 2.1 Standard export, overlaps: binary switched on for that series


def test_overlap_switches_binary_mask_on(tmp_path):
    tasks = [series_task([one_series()])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": OVERLAP_MAP})
    assert result.tasks[0]["series"] == [
        {
            "name": "T1",
            "segmentations": [f"{T}/T1/instance-1.nii.gz", f"{T}/T1/instance-2.nii.gz", f"{T}/T1/instance-3.nii.gz"],
            "segmentMap": {
                "1": {"category": "Glioma", "attributes": {"grade": "II"}, "mask": f"{T}/T1/instance-1.nii.gz"},
                "2": {"category": "Glioma", "mask": f"{T}/T1/instance-2.nii.gz"},
                "3": {"category": "Abscess", "mask": f"{T}/T1/instance-3.nii.gz"},
            },
            "binaryMask": True,
            "semanticMask": False,
        }
    ]
    assert result.mask_files() == [
        f"{T}/T1.nii.gz",
        f"{T}/T1/instance-1.nii.gz",
        f"{T}/T1/instance-2.nii.gz",
        f"{T}/T1/instance-3.nii.gz",
    ]
    assert_voxels(result, f"{T}/T1.nii.gz", OVERLAP_MAP)  # the aggregated map, unchanged
    assert_voxels(result, f"{T}/T1/instance-1.nii.gz", OVERLAP_INSTANCE_1)
    assert_voxels(result, f"{T}/T1/instance-2.nii.gz", OVERLAP_INSTANCE_2)
    assert_voxels(result, f"{T}/T1/instance-3.nii.gz", OVERLAP_INSTANCE_3)


def test_overlap_auto_mode_is_per_series(tmp_path):
    tasks = [
        series_task(
            [one_series(PLAIN_SEGMENT_MAP, "masks/plain.nii.gz"), {**one_series(mask="masks/o.nii.gz"), "name": "T2"}]
        )
    ]
    result = export(tmp_path, tasks, {"masks/plain.nii.gz": PLAIN_MAP, "masks/o.nii.gz": OVERLAP_MAP})
    plain, overlapping = result.tasks[0]["series"]
    assert (plain["binaryMask"], plain["segmentations"]) == (False, f"{T}/T1.nii.gz")
    assert overlapping["binaryMask"] is True
    assert overlapping["segmentations"][0] == f"{T}/T2/instance-1.nii.gz"


def test_instance_order_is_by_id_not_by_key_order(tmp_path):
    segment_map = {"3": OVERLAP_SEGMENT_MAP["3"], "1": OVERLAP_SEGMENT_MAP["1"], "2": OVERLAP_SEGMENT_MAP["2"]}
    result = export(tmp_path, [series_task([one_series(segment_map)])], {"masks/t1.nii.gz": OVERLAP_MAP})
    assert result.tasks[0]["series"][0]["segmentations"] == [
        f"{T}/T1/instance-1.nii.gz",
        f"{T}/T1/instance-2.nii.gz",
        f"{T}/T1/instance-3.nii.gz",
    ]


# 2.2 Binary and single-mask exports


def test_explicit_binary_mask_splits_a_series_without_overlaps(tmp_path):
    tasks = [series_task([one_series(PLAIN_SEGMENT_MAP)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP}, binary_mask=True)
    assert result.tasks[0]["series"][0] == {
        "name": "T1",
        "segmentations": [f"{T}/T1/instance-1.nii.gz", f"{T}/T1/instance-2.nii.gz"],
        "segmentMap": {
            "1": {"category": "Glioma", "mask": f"{T}/T1/instance-1.nii.gz"},
            "2": {"category": "Edema", "mask": f"{T}/T1/instance-2.nii.gz"},
        },
        "binaryMask": True,
        "semanticMask": False,
    }
    assert_voxels(result, f"{T}/T1.nii.gz", PLAIN_MAP)
    assert_voxels(result, f"{T}/T1/instance-1.nii.gz", PLAIN_INSTANCE_1)
    assert_voxels(result, f"{T}/T1/instance-2.nii.gz", PLAIN_INSTANCE_2)


def test_single_mask_keeps_overlapping_groups(tmp_path):
    tasks = [series_task([one_series()])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": OVERLAP_MAP}, binary_mask=False)
    assert result.tasks[0]["series"][0] == {
        "name": "T1",
        "segmentations": f"{T}/T1.nii.gz",
        "segmentMap": OVERLAP_SEGMENT_MAP,
        "binaryMask": False,
        "semanticMask": False,
    }
    assert result.mask_files() == [f"{T}/T1.nii.gz"]
    assert_voxels(result, f"{T}/T1.nii.gz", OVERLAP_MAP)


# 2.3 Semantic export


def test_semantic_single_file_lowest_category_number_wins(tmp_path):
    tasks = [series_task([one_series(SEMANTIC_SEGMENT_MAP)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": OVERLAP_MAP}, TAXONOMY, semantic_mask=True, binary_mask=False)
    assert result.tasks[0]["series"][0] == {
        "name": "T1",
        "segmentations": f"{T}/T1.nii.gz",
        "segmentMap": {
            "1": {"category": "Glioma", "attributes": {"grade": "IV"}},
            "2": {"category": "Edema", "attributes": {"side": "left"}},
            "3": {"category": "Abscess"},
        },
        "binaryMask": False,
        "semanticMask": True,
    }
    assert result.mask_files() == [f"{T}/T1.nii.gz"]
    assert_voxels(result, f"{T}/T1.nii.gz", SEMANTIC_MAP)


def test_semantic_category_number_is_class_id_plus_one(tmp_path):
    # No overlaps: auto mode gives one file. classIds 0, 1, 2 are listed as Abscess, Glioma, Edema
    # in TAXONOMY (out of order); the numbers are still Glioma 1, Edema 2, Abscess 3.
    label_map = np.array(
        [
            [[1, 1], [0, 0], [0, 0]],
            [[0, 0], [2, 2], [0, 0]],
            [[0, 0], [0, 0], [3, 3]],
            [[0, 0], [0, 0], [0, 0]],
        ],
        dtype=np.uint8,
    )
    segment_map = {"1": {"category": "Abscess"}, "2": {"category": "Glioma"}, "3": {"category": "Edema"}}
    tasks = [series_task([one_series(segment_map)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": label_map}, TAXONOMY, semantic_mask=True)
    assert_voxels(
        result,
        f"{T}/T1.nii.gz",
        np.array(
            [
                [[3, 3], [0, 0], [0, 0]],
                [[0, 0], [1, 1], [0, 0]],
                [[0, 0], [0, 0], [2, 2]],
                [[0, 0], [0, 0], [0, 0]],
            ]
        ),
    )
    entry = result.tasks[0]["series"][0]
    assert entry["segmentMap"] == {
        "1": {"category": "Glioma"},
        "2": {"category": "Edema"},
        "3": {"category": "Abscess"},
    }
    assert (entry["binaryMask"], entry["semanticMask"]) == (False, True)


def test_semantic_binary_writes_category_files_in_ascending_order(tmp_path):
    tasks = [series_task([one_series(SEMANTIC_SEGMENT_MAP)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": OVERLAP_MAP}, TAXONOMY, semantic_mask=True)
    assert result.tasks[0]["series"][0] == {
        "name": "T1",
        "segmentations": [f"{T}/T1/category-1.nii.gz", f"{T}/T1/category-2.nii.gz", f"{T}/T1/category-3.nii.gz"],
        "segmentMap": {
            "1": {"category": "Glioma", "attributes": {"grade": "IV"}, "mask": f"{T}/T1/category-1.nii.gz"},
            "2": {"category": "Edema", "attributes": {"side": "left"}, "mask": f"{T}/T1/category-2.nii.gz"},
            "3": {"category": "Abscess", "mask": f"{T}/T1/category-3.nii.gz"},
        },
        "binaryMask": True,
        "semanticMask": True,
    }
    assert result.mask_files() == [
        f"{T}/T1.nii.gz",
        f"{T}/T1/category-1.nii.gz",
        f"{T}/T1/category-2.nii.gz",
        f"{T}/T1/category-3.nii.gz",
    ]
    assert_voxels(result, f"{T}/T1.nii.gz", SEMANTIC_MAP)
    assert_voxels(result, f"{T}/T1/category-1.nii.gz", GLIOMA_FILE)
    assert_voxels(result, f"{T}/T1/category-2.nii.gz", EDEMA_FILE)
    assert_voxels(result, f"{T}/T1/category-3.nii.gz", ABSCESS_FILE)


def test_semantic_entities_of_one_category_keep_the_first_entitys_attributes(tmp_path):
    label_map = np.array(
        [
            [[1, 1], [0, 0], [0, 0]],
            [[0, 0], [2, 2], [0, 0]],
            [[0, 0], [0, 0], [3, 3]],
            [[0, 0], [0, 0], [0, 0]],
        ],
        dtype=np.uint8,
    )
    segment_map = {  # listed out of order: "first" means the lowest instance id
        "2": {"category": "Glioma", "attributes": {"grade": "III"}},
        "3": {"category": "Edema"},
        "1": {"category": "Glioma", "attributes": {"grade": "II"}},
    }
    tasks = [series_task([one_series(segment_map)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": label_map}, TAXONOMY, semantic_mask=True, binary_mask=True)
    assert result.tasks[0]["series"][0]["segmentMap"] == {
        "1": {"category": "Glioma", "attributes": {"grade": "II"}, "mask": f"{T}/T1/category-1.nii.gz"},
        "2": {"category": "Edema", "mask": f"{T}/T1/category-2.nii.gz"},
    }
    assert_voxels(
        result,
        f"{T}/T1/category-1.nii.gz",
        np.array(
            [
                [[1, 1], [0, 0], [0, 0]],
                [[0, 0], [1, 1], [0, 0]],
                [[0, 0], [0, 0], [0, 0]],
                [[0, 0], [0, 0], [0, 0]],
            ]
        ),
    )


def test_semantic_category_missing_from_taxonomy_fails_only_that_task(tmp_path):
    tasks = [
        series_task([one_series({"1": {"category": "Tumour"}}, "masks/bad.nii.gz")], task_id="bad", name="Bad"),
        series_task([one_series(PLAIN_SEGMENT_MAP, "masks/good.nii.gz")], task_id="good", name="Good"),
    ]
    masks = {"masks/bad.nii.gz": PLAIN_MAP, "masks/good.nii.gz": PLAIN_MAP}
    result = export(tmp_path, tasks, masks, TAXONOMY, semantic_mask=True)
    report = result.report
    assert report["exported"] == ["good"]
    assert report["failed"] == ["bad"]
    assert report["failures"] == [
        {
            "taskId": "bad",
            "file": "masks/bad.nii.gz",
            "reason": "category 'Tumour' of instance 1 is not in taxonomy.json",
        }
    ]
    assert [task["taskId"] for task in result.tasks] == ["good"]
    assert result.mask_files() == ["segmentations/Good/T1.nii.gz"]
    assert_voxels(result, "segmentations/Good/T1.nii.gz", PLAIN_MAP)  # Glioma is 1, Edema 2 here too


# 2.4 Consensus


ANA = np.array(
    [
        [[1, 1], [0, 0], [0, 0]],
        [[1, 1], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
    ],
    dtype=np.uint8,
)
BEN = np.array(
    [
        [[0, 0], [0, 0], [0, 0]],
        [[1, 1], [1, 0], [0, 0]],
        [[1, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
    ],
    dtype=np.uint8,
)
TRUTH = np.array(
    [
        [[1, 0], [0, 0], [0, 0]],
        [[1, 1], [0, 0], [0, 0]],
        [[1, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
    ],
    dtype=np.uint8,
)
CONSENSUS_MASKS = {"masks/ana.nii.gz": ANA, "masks/ben.nii.gz": BEN, "masks/truth.nii.gz": TRUTH}
GLIOMA_ONLY = {"1": {"category": "Glioma"}}


def consensus_task(super_truth: bool = True) -> dict:
    def annotation(mask: str) -> list[dict]:
        return [{"name": "T1", "segmentations": mask, "segmentMap": GLIOMA_ONLY}]

    task = {
        "taskId": "c1",
        "name": "Case",
        "series": [{"name": "T1", "items": ["t1.dcm"]}],
        "consensus": True,
        "consensusScore": 0.8,
        "consensusTasks": [
            {
                "updatedBy": "ana@x.org",
                "series": annotation("masks/ana.nii.gz"),
                "scores": [{"secondaryUser": "ben@x.org", "score": 0.8}],
            },
            {
                "updatedBy": "ben@x.org",
                "series": annotation("masks/ben.nii.gz"),
                "scores": [{"secondaryUser": "ana@x.org", "score": 0.8}],
            },
        ],
    }
    if super_truth:
        task["superTruth"] = {
            "updatedBy": "lead@x.org",
            "updatedAt": "2024-05-01",
            "series": annotation("masks/truth.nii.gz"),
        }
    return task


def exported_series(path: str, binary: bool = False) -> list[dict]:
    return [
        {"name": "T1", "segmentations": path, "segmentMap": GLIOMA_ONLY, "binaryMask": binary, "semanticMask": False}
    ]


def test_consensus_writes_each_annotator_and_the_super_truth(tmp_path):
    result = export(tmp_path, [consensus_task()], CONSENSUS_MASKS)
    assert result.tasks == [
        {
            "taskId": "c1",
            "name": "Case",
            "series": [{"name": "T1", "items": ["t1.dcm"]}],
            "consensus": True,
            "consensusScore": 0.8,
            "consensusTasks": [
                {
                    "updatedBy": "ana@x.org",
                    "series": exported_series("segmentations/Case/T1_1.nii.gz"),
                    "scores": [{"secondaryUser": "ben@x.org", "score": 0.8}],
                },
                {
                    "updatedBy": "ben@x.org",
                    "series": exported_series("segmentations/Case/T1_2.nii.gz"),
                    "scores": [{"secondaryUser": "ana@x.org", "score": 0.8}],
                },
            ],
            "superTruth": {
                "updatedBy": "lead@x.org",
                "updatedAt": "2024-05-01",
                "series": exported_series("segmentations/Case/T1.nii.gz"),
            },
        }
    ]
    assert result.mask_files() == [
        "segmentations/Case/T1.nii.gz",
        "segmentations/Case/T1_1.nii.gz",
        "segmentations/Case/T1_2.nii.gz",
    ]
    assert_voxels(result, "segmentations/Case/T1_1.nii.gz", ANA)
    assert_voxels(result, "segmentations/Case/T1_2.nii.gz", BEN)
    assert_voxels(result, "segmentations/Case/T1.nii.gz", TRUTH)


def test_consensus_binary_applies_to_each_annotator(tmp_path):
    result = export(tmp_path, [consensus_task()], CONSENSUS_MASKS, binary_mask=True)
    assert result.mask_files() == [
        "segmentations/Case/T1.nii.gz",
        "segmentations/Case/T1/instance-1.nii.gz",
        "segmentations/Case/T1_1.nii.gz",
        "segmentations/Case/T1_1/instance-1.nii.gz",
        "segmentations/Case/T1_2.nii.gz",
        "segmentations/Case/T1_2/instance-1.nii.gz",
    ]
    task = result.tasks[0]
    assert task["consensusTasks"][1]["series"][0]["segmentations"] == ["segmentations/Case/T1_2/instance-1.nii.gz"]
    assert task["consensusTasks"][1]["series"][0]["segmentMap"] == {
        "1": {"category": "Glioma", "mask": "segmentations/Case/T1_2/instance-1.nii.gz"}
    }
    assert task["superTruth"]["series"][0]["segmentations"] == ["segmentations/Case/T1/instance-1.nii.gz"]
    assert_voxels(result, "segmentations/Case/T1_2/instance-1.nii.gz", BEN)
    assert_voxels(result, "segmentations/Case/T1/instance-1.nii.gz", TRUTH)


def test_consensus_series_with_the_same_name_never_share_a_file(tmp_path):
    # Two series named T1 in every annotation. The plain names go first: the super truth
    # writes T1 and T1_1; then each annotator's `<name>_<i>` moves on to the next free
    # name wherever it is taken (annotator 1's T1_1 is, so it becomes T1_1_1).
    task = consensus_task()
    for annotation in (*task["consensusTasks"], task["superTruth"]):
        annotation["series"] = annotation["series"] * 2
    result = export(tmp_path, [task], CONSENSUS_MASKS)
    exported = result.tasks[0]

    def files(annotation: dict) -> list[str]:
        return [series["segmentations"] for series in annotation["series"]]

    assert files(exported["superTruth"]) == ["segmentations/Case/T1.nii.gz", "segmentations/Case/T1_1.nii.gz"]
    assert files(exported["consensusTasks"][0]) == [
        "segmentations/Case/T1_1_1.nii.gz",
        "segmentations/Case/T1_1_1_1.nii.gz",
    ]
    assert files(exported["consensusTasks"][1]) == [
        "segmentations/Case/T1_2.nii.gz",
        "segmentations/Case/T1_1_2.nii.gz",
    ]
    assert len(result.mask_files()) == 6
    assert_voxels(result, "segmentations/Case/T1_1.nii.gz", TRUTH)
    assert_voxels(result, "segmentations/Case/T1_1_1_1.nii.gz", ANA)
    assert_voxels(result, "segmentations/Case/T1_1_2.nii.gz", BEN)


def test_no_consensus_exports_the_super_truth_as_a_plain_task(tmp_path):
    result = export(tmp_path, [consensus_task()], CONSENSUS_MASKS, no_consensus=True)
    assert result.tasks == [
        {
            "taskId": "c1",
            "name": "Case",
            "series": [
                {
                    "name": "T1",
                    "items": ["t1.dcm"],
                    "segmentations": "segmentations/Case/T1.nii.gz",
                    "segmentMap": GLIOMA_ONLY,
                    "binaryMask": False,
                    "semanticMask": False,
                }
            ],
        }
    ]
    assert result.mask_files() == ["segmentations/Case/T1.nii.gz"]
    assert_voxels(result, "segmentations/Case/T1.nii.gz", TRUTH)


def test_no_consensus_without_super_truth_exports_the_first_annotator(tmp_path):
    result = export(tmp_path, [consensus_task(super_truth=False)], CONSENSUS_MASKS, no_consensus=True)
    task = result.tasks[0]
    assert sorted(task) == ["name", "series", "taskId"]
    assert task["series"][0]["segmentations"] == "segmentations/Case/T1.nii.gz"
    assert result.mask_files() == ["segmentations/Case/T1.nii.gz"]
    assert_voxels(result, "segmentations/Case/T1.nii.gz", ANA)


# SPEC 1: shapes, types, geometry


def test_2d_map_keeps_its_shape(tmp_path):
    xray = np.array(
        [
            [0, 1, 1],
            [0, 1, 0],
            [2, 2, 0],
            [0, 0, 0],
        ],
        dtype=np.uint8,
    )
    masks = {"masks/t1.nii.gz": nifti_bytes(xray, np.diag([0.2, 0.3, 1.0, 1.0]))}
    result = export(tmp_path, [series_task([one_series(PLAIN_SEGMENT_MAP)])], masks, binary_mask=True)
    image = result.image(f"{T}/T1.nii.gz")
    assert image.shape == (4, 3)
    assert image.header.get_zooms() == (np.float32(0.2), np.float32(0.3))
    assert_voxels(result, f"{T}/T1.nii.gz", xray)
    assert_voxels(result, f"{T}/T1/instance-2.nii.gz", np.array([[0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]]))


def test_float_map_is_rounded(tmp_path):
    floats = np.array(
        [
            [[0.0, 0.9999], [1.0001, 0.0]],
            [[2.0004, 1.9996], [0.0001, 0.0]],
        ],
        dtype=np.float32,
    )
    result = export(tmp_path, [series_task([one_series(PLAIN_SEGMENT_MAP)])], {"masks/t1.nii.gz": floats})
    assert result.report["warnings"] == []
    assert_voxels(
        result,
        f"{T}/T1.nii.gz",
        np.array(
            [
                [[0, 1], [1, 0]],
                [[2, 2], [0, 0]],
            ]
        ),
    )


def test_more_than_255_instances_give_uint16_output(tmp_path):
    label_map = np.arange(300, dtype=np.uint16).reshape(10, 15, 2)  # background and instances 1..299
    segment_map = {str(i): {"category": "Glioma"} for i in range(1, 300)}
    result = export(tmp_path, [series_task([one_series(segment_map)])], {"masks/t1.nii.gz": label_map})
    assert result.report["warnings"] == []
    assert_voxels(result, f"{T}/T1.nii.gz", label_map, dtype=np.uint16)


def test_uint16_input_with_small_values_gives_uint8_output(tmp_path):
    masks = {"masks/t1.nii.gz": PLAIN_MAP.astype(np.uint16)}
    result = export(tmp_path, [series_task([one_series(PLAIN_SEGMENT_MAP)])], masks)
    assert_voxels(result, f"{T}/T1.nii.gz", PLAIN_MAP, dtype=np.uint8)


def test_nii_input_and_uncompressed_output(tmp_path):
    tasks = [series_task([one_series(mask="masks/t1.nii")])]
    result = export(tmp_path, tasks, {"masks/t1.nii": OVERLAP_MAP}, compress=False)
    series = result.tasks[0]["series"][0]
    assert series["segmentations"] == [f"{T}/T1/instance-{i}.nii" for i in (1, 2, 3)]
    assert [entry["mask"] for entry in series["segmentMap"].values()] == series["segmentations"]
    assert result.mask_files() == [f"{T}/T1.nii"] + [f"{T}/T1/instance-{i}.nii" for i in (1, 2, 3)]
    for path in result.mask_files():
        raw = (result.root / path).read_bytes()
        assert raw[:4] == struct.pack("<i", 348), f"{path} is not a plain .nii"
    assert_voxels(result, f"{T}/T1.nii", OVERLAP_MAP)
    assert_voxels(result, f"{T}/T1/instance-3.nii", OVERLAP_INSTANCE_3)


def test_affine_and_voxel_sizes_are_preserved(tmp_path):
    import nibabel as nib

    image = nib.Nifti1Image(OVERLAP_MAP, AFFINE)
    image.header.set_qform(np.diag([0.7, 0.85, 2.5, 1.0]), code=1)
    image.header.set_sform(AFFINE, code=2)
    image.header.set_xyzt_units("mm", "sec")
    masks = {"masks/t1.nii.gz": gzip.compress(image.to_bytes())}
    result = export(tmp_path, [series_task([one_series()])], masks)
    for path in result.mask_files():
        header = result.image(path).header
        np.testing.assert_array_equal(header.get_sform(), image.header.get_sform(), err_msg=path)
        np.testing.assert_array_equal(header.get_qform(), image.header.get_qform(), err_msg=path)
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)
        assert header.get_zooms() == image.header.get_zooms()
        assert header.get_xyzt_units() == ("mm", "sec")
        assert result.image(path).shape == (4, 3, 2)


def test_series_without_segmentations_is_passed_through_untouched(tmp_path):
    untouched = {"name": "CT", "items": ["ct/1.dcm"], "metaData": {"modality": "CT"}}
    tasks = [series_task([copy.deepcopy(untouched), one_series(PLAIN_SEGMENT_MAP)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP})
    assert result.tasks[0]["series"][0] == untouched
    assert result.mask_files() == [f"{T}/T1.nii.gz"]


# SPEC 2.1 and 3: warnings


def test_instance_with_no_voxels_gets_no_file_and_a_warning(tmp_path):
    segment_map = {**PLAIN_SEGMENT_MAP, "4": {"category": "Abscess"}}
    tasks = [series_task([one_series(segment_map)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP}, binary_mask=True)
    series = result.tasks[0]["series"][0]
    assert series["segmentations"] == [f"{T}/T1/instance-1.nii.gz", f"{T}/T1/instance-2.nii.gz"]
    assert series["segmentMap"]["4"] == {"category": "Abscess"}
    assert result.mask_files() == [f"{T}/T1.nii.gz", f"{T}/T1/instance-1.nii.gz", f"{T}/T1/instance-2.nii.gz"]
    assert result.report["failures"] == []
    assert result.report["warnings"] == [
        {"taskId": "t1", "file": "masks/t1.nii.gz", "message": "series T1: instance 4 (Abscess) has no voxels"}
    ]


def test_unclaimed_mask_values_are_a_warning_not_a_failure(tmp_path):
    label_map = np.array(
        [
            [[1, 1], [0, 0], [0, 0]],
            [[0, 0], [7, 7], [0, 0]],
            [[0, 0], [0, 0], [2, 2]],
            [[0, 0], [0, 0], [0, 0]],
        ],
        dtype=np.uint8,
    )
    tasks = [series_task([one_series(PLAIN_SEGMENT_MAP)])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": label_map}, binary_mask=True)
    assert result.report["failed"] == [] and result.report["exported"] == ["t1"]
    assert result.report["warnings"] == [
        {
            "taskId": "t1",
            "file": "masks/t1.nii.gz",
            "message": "series T1: label values 7 appear in the mask but no segmentMap entry claims them",
        }
    ]
    assert_voxels(result, f"{T}/T1.nii.gz", label_map)  # kept as is in the label map
    assert_voxels(result, f"{T}/T1/instance-1.nii.gz", label_map == 1)
    assert_voxels(result, f"{T}/T1/instance-2.nii.gz", label_map == 2)


# SPEC 2: tasks.json


def test_tasks_json_keeps_source_order(tmp_path):
    tasks = [
        series_task([one_series(PLAIN_SEGMENT_MAP)], task_id=task_id, name=f"Task_{task_id}")
        for task_id in ("zeta", "alpha", "mu", "beta")
    ]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP})
    assert [task["taskId"] for task in result.tasks] == ["zeta", "alpha", "mu", "beta"]
    assert result.report["exported"] == ["zeta", "alpha", "mu", "beta"]


def test_unknown_task_fields_are_passed_through(tmp_path):
    tasks = [
        series_task(
            [one_series(PLAIN_SEGMENT_MAP, items=["x.dcm"], seriesInfo={"modality": "MR"}, future=[1, {"a": None}])],
            priority=0.5,
            currentStageName="Review_1",
            metaData={"site": "Oslo", "nested": {"list": [1, 2]}},
            createdAt="2024-01-02T03:04:05Z",
        )
    ]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": PLAIN_MAP})
    assert result.tasks == [
        {
            "taskId": "t1",
            "name": "Task_1",
            "priority": 0.5,
            "currentStageName": "Review_1",
            "metaData": {"site": "Oslo", "nested": {"list": [1, 2]}},
            "createdAt": "2024-01-02T03:04:05Z",
            "series": [
                {
                    "name": "T1",
                    "segmentations": f"{T}/T1.nii.gz",
                    "segmentMap": PLAIN_SEGMENT_MAP,
                    "items": ["x.dcm"],
                    "seriesInfo": {"modality": "MR"},
                    "future": [1, {"a": None}],
                    "binaryMask": False,
                    "semanticMask": False,
                }
            ],
        }
    ]


@pytest.mark.parametrize("options", [{}, {"semantic_mask": True}, {"binary_mask": True, "compress": False}])
def test_output_files_are_byte_identical_across_runs(tmp_path, options):
    tasks = [series_task([one_series(SEMANTIC_SEGMENT_MAP)]), consensus_task()]
    masks = {"masks/t1.nii.gz": OVERLAP_MAP, **CONSENSUS_MASKS}
    first = export(tmp_path, tasks, masks, TAXONOMY, out="first", **options).all_files()
    second = export(tmp_path, tasks, masks, TAXONOMY, out="second", **options).all_files()
    first.pop("export-report.json"), second.pop("export-report.json")  # holds timings
    assert len(first) > 4
    assert first == second
    for path, data in first.items():
        if path.endswith(".gz"):
            assert struct.unpack("<I", data[4:8])[0] == 0, f"{path}: gzip mtime must be 0"


# SPEC 3 and 4: the report, bad input


def test_report_lists_counts_files_with_sha256_options_and_time(tmp_path):
    tasks = [series_task([one_series()])]
    result = export(tmp_path, tasks, {"masks/t1.nii.gz": OVERLAP_MAP}, binary_mask=None)
    report = result.report
    assert report["exported"] == ["t1"]
    assert report["skipped"] == [] and report["failed"] == [] and report["failures"] == []
    assert report["warnings"] == []
    assert report["options"] == {
        "semantic_mask": False,
        "binary_mask": None,
        "no_consensus": False,
        "compress": True,
        "mask_format": "nifti",
        "seg_type": "auto",
        "seg_compression": "none",
        "with_images": False,
        "image_format": "original",
        **NO_DATASET,
    }
    assert isinstance(report["seconds"], (int, float)) and report["seconds"] >= 0
    written = result.all_files()
    del written["export-report.json"]
    assert sorted(record["path"] for record in report["files"]) == sorted(written)
    for record in report["files"]:
        data = written[record["path"]]
        assert record == {"path": record["path"], "bytes": len(data), "sha256": sha256(data)}


def test_missing_mask_fails_only_that_task(tmp_path):
    tasks = [
        series_task([one_series(PLAIN_SEGMENT_MAP)], task_id="ok-1", name="First"),
        series_task([one_series(PLAIN_SEGMENT_MAP, "masks/missing.nii.gz")], task_id="gone", name="Gone"),
        series_task([one_series(PLAIN_SEGMENT_MAP, "masks/cut.nii.gz")], task_id="cut", name="Cut"),
        series_task([one_series(PLAIN_SEGMENT_MAP)], task_id="ok-2", name="Last"),
    ]
    whole = nifti_bytes(np.arange(1000, dtype=np.uint16).reshape(10, 10, 10))
    masks = {"masks/t1.nii.gz": PLAIN_MAP, "masks/cut.nii.gz": whole[: len(whole) // 2]}
    result = export(tmp_path, tasks, masks)
    report = result.report
    assert report["exported"] == ["ok-1", "ok-2"]
    assert report["failed"] == ["gone", "cut"]
    assert report["failures"][0] == {"taskId": "gone", "file": "masks/missing.nii.gz", "reason": "mask file not found"}
    assert report["failures"][1]["taskId"] == "cut"
    assert report["failures"][1]["file"] == "masks/cut.nii.gz"
    assert report["failures"][1]["reason"].startswith("truncated")
    assert "\n" not in report["failures"][1]["reason"]
    assert [task["taskId"] for task in result.tasks] == ["ok-1", "ok-2"]
    assert result.mask_files() == ["segmentations/First/T1.nii.gz", "segmentations/Last/T1.nii.gz"]
    assert not result.report_object.succeeded
    assert "2 failed" in result.report_object.summary()


def test_a_task_that_fails_writes_nothing(tmp_path):
    # Its first series is fine, its second is missing: no file of the task is left behind.
    series = [one_series(PLAIN_SEGMENT_MAP), {**one_series(PLAIN_SEGMENT_MAP, "masks/missing.nii.gz"), "name": "T2"}]
    result = export(tmp_path, [series_task(series)], {"masks/t1.nii.gz": PLAIN_MAP})
    assert result.report["failed"] == ["t1"]
    assert not (result.root / "segmentations").exists()
    assert result.tasks == []


@pytest.mark.parametrize(
    "raw", [b'[{"taskId": "a",}', b'{"taskId": "a", "series": []}', b'"tasks"', b"null", b"\xff\xfe"]
)
def test_invalid_tasks_json_fails_the_run_before_anything_is_written(tmp_path, raw):
    source = write_source(tmp_path / "src", None, {"masks/t1.nii.gz": PLAIN_MAP}, raw_tasks_json=raw)
    destination = tmp_path / "out"
    with pytest.raises(ConfigurationError) as caught:
        run_export(str(source), str(destination), ExportOptions())
    assert "tasks.json" in str(caught.value) and "\n" not in str(caught.value)
    assert not destination.exists()


def test_task_files_are_read_after_tasks_json(tmp_path):
    def task(task_id: str) -> dict:
        return series_task([one_series(PLAIN_SEGMENT_MAP)], task_id=task_id, name=task_id)

    source = write_source(tmp_path / "src", [task("from-tasks-json")], {"masks/t1.nii.gz": PLAIN_MAP})
    (source / "tasks").mkdir()
    (source / "tasks" / "b.json").write_text(json.dumps(task("b-object")))
    (source / "tasks" / "a.json").write_text(json.dumps([task("a-array-1"), task("a-array-2")]))
    result = export(tmp_path, None, {})
    assert [t["taskId"] for t in result.tasks] == ["from-tasks-json", "a-array-1", "a-array-2", "b-object"]
    assert result.report["failures"] == []
    assert len(result.mask_files()) == 4


def test_no_consensus_reads_only_the_masks_it_exports(tmp_path, monkeypatch):
    import rbexport.source

    read = []
    real = rbexport.source.MaskReader._download
    monkeypatch.setattr(rbexport.source.MaskReader, "_download", lambda self, ref: read.append(ref) or real(self, ref))
    export(tmp_path, [consensus_task()], CONSENSUS_MASKS, no_consensus=True)
    assert read == ["masks/truth.nii.gz"]


def test_a_task_and_the_taxonomy_are_parsed_once_for_every_variant(tmp_path, monkeypatch):
    """Issue 21 item 3: three PNG variants of one task (standard, semantic, binary semantic)
    parse its series' segmentMap once, and the run reads taxonomy.json once (for the
    semantic variants' category numbers and PNG's colours both)."""
    import rbexport.annotations
    import rbexport.source

    parsed, read = [], []
    real_parse = rbexport.annotations.parse_segment_map
    real_read = rbexport.source._read_json
    monkeypatch.setattr(
        rbexport.annotations, "parse_segment_map", lambda segment_map: parsed.append(1) or real_parse(segment_map)
    )
    monkeypatch.setattr(rbexport.source, "_read_json", lambda source, key: read.append(key) or real_read(source, key))
    source = write_source(
        tmp_path / "src",
        [series_task([one_series(PLAIN_SEGMENT_MAP)])],
        {"masks/t1.nii.gz": PLAIN_MAP[:, :, 0]},
        TAXONOMY,
    )
    reports = run_export(
        str(source),
        str(tmp_path / "out"),
        ExportOptions(mask_format="png"),
        variants=["standard", "semantic", "semantic-binary"],
    )
    assert [report.failures for report in reports] == [[], [], []]
    assert len(parsed) == 1
    assert read.count("taxonomy.json") == 1
