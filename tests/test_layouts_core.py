"""The storage-free core of the training layouts (SPEC 6): labels, cases, folds, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from rbexport.errors import ConfigurationError, TaskDataError
from rbexport.images.volume import ImageVolume
from rbexport.layouts import LAYOUTS, Dataset
from rbexport.layouts.cases import Case, deduplicate_cases, group_key, task_cases
from rbexport.layouts.folds import assign_folds, splits
from rbexport.layouts.labels import TrainingLabels, label_volume, training_labels
from rbexport.layouts.modalities import agreed_modalities, channel_modalities
from rbexport.layouts.msd import stack_channels
from rbexport.segment_map import parse_segment_map
from rbexport.structures.masks import VoxelIndex

# classIds 0, 2, 5: category numbers 1, 3, 6 with gaps.
CATEGORY_NUMBERS = {"Kidney": 3, "Liver": 1, "Organ/Tumor": 6}

# Instance 1 is a Kidney (3), instance 2 a Liver (1); value 5 is where they overlap; 7 is unclaimed.
SEGMENT_MAP = {
    "1": {"category": "Kidney", "overlappingGroups": [5]},
    "2": {"category": "Liver", "overlappingGroups": [5]},
}
# A 4x3x2 label map, written as its two slices.
LABEL_MAP = np.stack(
    [
        np.array([[1, 1, 0], [5, 2, 0], [5, 2, 0], [0, 0, 7]]),
        np.array([[1, 0, 0], [0, 2, 2], [0, 0, 0], [0, 0, 0]]),
    ],
    axis=2,
).astype(np.uint8)


def written(fill, shape) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)), dtype=fill.dtype)
    fill.write(out)
    return out.reshape(shape, order="F")


def training_map(values: np.ndarray, segment_map=SEGMENT_MAP, category_numbers=CATEGORY_NUMBERS):
    labels = training_labels(category_numbers)
    fill, counts, warnings = label_volume(VoxelIndex(values), parse_segment_map(segment_map), category_numbers, labels)
    return written(fill, values.shape), counts, warnings


# Labels


def test_labels_are_consecutive_in_category_number_order_despite_gaps_in_class_ids():
    assert training_labels(CATEGORY_NUMBERS) == TrainingLabels(
        value_of={1: 1, 3: 2, 6: 3}, names={1: "Liver", 2: "Kidney", 3: "Organ/Tumor"}
    )


def test_a_category_named_background_or_a_shared_number_is_refused():
    with pytest.raises(ConfigurationError, match="background"):
        training_labels({"background": 1})
    with pytest.raises(ConfigurationError, match="'A' and 'B' share category number 2"):
        training_labels({"B": 2, "A": 2})


@pytest.mark.parametrize("padding", [0, 200], ids=["dense", "sparse"])
def test_lowest_category_number_wins_where_instances_overlap(padding):
    values = np.pad(LABEL_MAP, ((0, padding), (0, 0), (0, 0)))
    assert VoxelIndex(values).sparse == (padding > 0)
    labels, _, _ = training_map(values)
    expected = np.stack(
        [
            np.array([[2, 2, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]]),
            np.array([[2, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0]]),
        ],
        axis=2,
    )
    assert np.array_equal(labels[:4], expected)
    assert not labels[4:].any()


def test_values_no_entry_claims_become_0_with_a_warning():
    labels, _, warnings = training_map(LABEL_MAP)
    assert labels[3, 2, 0] == 0
    assert warnings == ["label values 7 appear in the mask but no segmentMap entry claims them"]


def test_unknown_category_fails_the_task():
    with pytest.raises(TaskDataError, match="category 'Spleen' of instance 1 is not in taxonomy.json"):
        training_map(LABEL_MAP, segment_map={"1": {"category": "Spleen"}})


def test_label_type_is_uint8_up_to_255_labels_else_uint16():
    values = np.array([[[1]]], dtype=np.uint8)
    segment_map = {"1": {"category": "c0"}}
    for count, dtype in ((255, np.uint8), (256, np.uint16)):
        numbers = {f"c{i}": i + 1 for i in range(count)}
        fill, _, _ = label_volume(VoxelIndex(values), parse_segment_map(segment_map), numbers, training_labels(numbers))
        assert fill.dtype is dtype


def test_voxel_counts_per_label_value_include_background_and_absent_labels():
    _, counts, _ = training_map(LABEL_MAP)
    # Liver: two overlap voxels and four of instance 2; Kidney: three; the unclaimed 7 joins background.
    assert counts == {0: 15, 1: 6, 2: 3, 3: 0}


# Cases


def test_a_task_with_one_annotated_series_is_one_case_named_after_its_folder():
    assert task_cases("Task_001", [("T1", False), ("T2", True)]) == [Case("Task_001", (1,), 1)]


def test_a_task_with_several_annotated_series_names_cases_task_underscore_series():
    assert task_cases("Task_001", [("T1", True), ("PD", False), ("T2", True)]) == [
        Case("Task_001_T1", (0,), 0),
        Case("Task_001_T2", (2,), 2),
    ]


def test_a_task_without_annotated_series_has_no_cases():
    assert task_cases("Task_001", [("T1", False)]) == []


def test_with_channels_a_task_is_one_case_with_series_in_channel_order():
    series = [("FLAIR", False), ("T1", True), ("T2", False)]
    assert task_cases("Task_001", series, ["T2", "FLAIR", "T1"]) == [Case("Task_001", (2, 0, 1), 1)]


def test_with_channels_a_missing_channel_fails_naming_it_and_the_task_series():
    with pytest.raises(TaskDataError) as error:
        task_cases("Task_001", [("T1", True), ("A", False)], ["T1", "FLAIR"])
    assert str(error.value) == "no series for channel 'FLAIR' (the task's series: 'T1', 'A')"


def test_with_channels_exactly_one_series_must_have_a_segmentation():
    with pytest.raises(TaskDataError, match="exactly one series must have a segmentation.*: 'T1', 'T2'$"):
        task_cases("Task_001", [("T1", True), ("T2", True)], ["T1", "T2"])
    with pytest.raises(TaskDataError, match="exactly one series must have a segmentation.*: none$"):
        task_cases("Task_001", [("T1", False)], ["T1"])


def test_case_ids_are_unique_across_a_run_repeats_get_a_counter():
    cases = [Case("Liver", (0,), 0), Case("Liver", (1,), 1), Case("Lung", (0,), 0), Case("Liver", (0,), 0)]
    assert [case.case_id for case in deduplicate_cases(cases)] == ["Liver", "Liver_1", "Lung", "Liver_2"]
    assert [case.series_positions for case in deduplicate_cases(cases)] == [(0,), (1,), (0,), (0,)]


def test_group_key_is_the_task_id_or_the_named_field_falling_back_to_the_task():
    task = {"taskId": "t1", "metaData": {"patientId": "P7"}}
    assert group_key(task) == "t1"
    assert group_key(task, "metaData.patientId") == "P7"
    assert group_key(task, "metaData.studyId") == "taskId=t1"
    assert group_key({"taskId": "t2"}, "metaData.patientId") == "taskId=t2"


# Folds


def test_new_cases_go_to_the_smallest_fold_ties_to_the_lowest_number():
    cases = [(f"c{i}", f"c{i}") for i in range(7)]
    assert assign_folds({}, cases) == {"c0": 0, "c1": 1, "c2": 2, "c3": 3, "c4": 4, "c5": 0, "c6": 1}
    # Folds 0 and 2 hold one kept case each: the new cases fill 1, 3, 4 first.
    assert assign_folds(
        {"a": 2, "b": 0}, [("a", "a"), ("b", "b"), ("n1", "n1"), ("n2", "n2"), ("n3", "n3"), ("n4", "n4")]
    ) == {
        "a": 2,
        "b": 0,
        "n1": 1,
        "n2": 3,
        "n3": 4,
        "n4": 0,
    }


def test_a_case_keeps_its_fold_across_runs():
    first = assign_folds({}, [("a", "a"), ("b", "b"), ("c", "c")])
    again = assign_folds(first, [("new", "new"), ("c", "c"), ("a", "a"), ("b", "b")])
    assert {case: again[case] for case in first} == first
    assert again["new"] == 3


def test_cases_sharing_a_group_share_a_fold():
    cases = [("a1", "A"), ("b1", "B"), ("a2", "A"), ("c1", "C"), ("b2", "B")]
    assert assign_folds({}, cases) == {"a1": 0, "b1": 1, "a2": 0, "c1": 2, "b2": 1}
    # A new case joins its group's kept fold even when it comes first in the source.
    assert assign_folds({"a1": 4}, [("a2", "A"), ("a1", "A")]) == {"a2": 4, "a1": 4}


def test_removed_cases_are_dropped_and_do_not_count():
    folds = assign_folds({"gone": 0, "kept": 1}, [("kept", "kept"), ("new", "new")])
    assert folds == {"kept": 1, "new": 0}


def test_out_of_range_previous_folds_are_placed_anew():
    assert assign_folds({"a": 7}, [("a", "a")]) == {"a": 0}


def test_the_same_source_gives_the_same_folds():
    cases = [(f"case{i}", f"patient{i % 4}") for i in range(20)]
    assert assign_folds({}, cases) == assign_folds({}, list(cases))
    assert assign_folds({}, cases) == assign_folds(assign_folds({}, cases), cases)


def test_splits_partition_the_cases_into_five_folds():
    folds = {"b": 0, "a": 0, "c": 1, "d": 4}
    assert splits(folds) == [
        {"train": ["c", "d"], "val": ["a", "b"]},
        {"train": ["a", "b", "d"], "val": ["c"]},
        {"train": ["a", "b", "c", "d"], "val": []},
        {"train": ["a", "b", "c", "d"], "val": []},
        {"train": ["a", "b", "c"], "val": ["d"]},
    ]


# Layouts

DATASET = Dataset(
    labels=training_labels(CATEGORY_NUMBERS),
    modalities=["CT", "MR"],
    folds={"Task_2": 1, "Task_1": 0},
    name="Liver",
    description="two cases",
)


def test_nnunet_paths():
    layout = LAYOUTS["nnunet"]
    assert layout.image_paths("Task_1", 2) == ["imagesTr/Task_1_0000.nii.gz", "imagesTr/Task_1_0001.nii.gz"]
    assert layout.label_path("Task_1") == "labelsTr/Task_1.nii.gz"
    assert not layout.stacks_channels


def test_msd_paths():
    layout = LAYOUTS["msd"]
    assert layout.image_paths("Task_1", 2) == ["imagesTr/Task_1.nii.gz"]
    assert layout.label_path("Task_1") == "labelsTr/Task_1.nii.gz"
    assert layout.stacks_channels


def test_nnunet_dataset_json():
    expected = {
        "channel_names": {"0": "CT", "1": "MR"},
        "labels": {"background": 0, "Liver": 1, "Kidney": 2, "Organ/Tumor": 3},
        "numTraining": 2,
        "file_ending": ".nii.gz",
        "name": "Liver",
        "description": "two cases",
    }
    assert LAYOUTS["nnunet"].dataset_json(DATASET) == expected
    unnamed = Dataset(DATASET.labels, DATASET.modalities, DATASET.folds)
    assert LAYOUTS["nnunet"].dataset_json(unnamed) == {
        key: value for key, value in expected.items() if key not in ("name", "description")
    }


def test_msd_dataset_json():
    assert LAYOUTS["msd"].dataset_json(DATASET) == {
        "name": "Liver",
        "description": "two cases",
        "modality": {"0": "CT", "1": "MR"},
        "labels": {"0": "background", "1": "Liver", "2": "Kidney", "3": "Organ/Tumor"},
        "numTraining": 2,
        "training": [
            {"image": "./imagesTr/Task_1.nii.gz", "label": "./labelsTr/Task_1.nii.gz", "fold": 0},
            {"image": "./imagesTr/Task_2.nii.gz", "label": "./labelsTr/Task_2.nii.gz", "fold": 1},
        ],
        "test": [],
    }


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_metadata_files_hold_the_dataset_json_and_nnunet_also_the_splits(name):
    files = LAYOUTS[name].metadata_files(DATASET)
    assert files["dataset.json"] == LAYOUTS[name].dataset_json(DATASET)
    assert sorted(files) == (["dataset.json", "splits_final.json"] if name == "nnunet" else ["dataset.json"])
    if name == "nnunet":
        assert files["splits_final.json"] == splits(DATASET.folds)


# Channels and modalities


def volume(data, modality=None, affine=None, scaling=None) -> ImageVolume:
    return ImageVolume(np.asarray(data), np.eye(4) if affine is None else affine, modality, scaling)


def test_stack_channels_puts_channels_on_the_fourth_axis():
    t1, t2 = np.arange(24).reshape(4, 3, 2), 100 + np.arange(24).reshape(4, 3, 2)
    stacked = stack_channels([volume(t1, "MR"), volume(t2, "MR")], ["T1", "T2"])
    assert stacked.data.shape == (4, 3, 2, 2)
    assert np.array_equal(stacked.data[..., 0], t1) and np.array_equal(stacked.data[..., 1], t2)
    assert stacked.modality == "MR" and np.array_equal(stacked.affine, np.eye(4))


def test_stack_channels_keeps_a_single_channel_and_gives_2d_channels_a_third_axis():
    single = volume(np.zeros((4, 3, 2)))
    assert stack_channels([single], ["T1"]) is single
    assert stack_channels([volume(np.zeros((4, 3))), volume(np.ones((4, 3)))], ["a", "b"]).data.shape == (4, 3, 1, 2)


def test_stack_channels_applies_differing_scalings():
    stacked = stack_channels(
        [volume(np.full((2, 2, 1), 10, np.int16), scaling=(2.0, 1.0)), volume(np.full((2, 2, 1), 3, np.int16))],
        ["a", "b"],
    )
    assert stacked.scaling is None and stacked.data.dtype == np.float32
    assert stacked.data[0, 0, 0].tolist() == [21.0, 3.0]


def test_stack_channels_refuses_channels_off_one_grid():
    moved = np.eye(4)
    moved[0, 3] = 0.5
    with pytest.raises(TaskDataError, match="channels T1 and T2 lie on different grids"):
        stack_channels([volume(np.zeros((4, 3, 2))), volume(np.zeros((4, 3, 2)), affine=moved)], ["T1", "T2"])
    with pytest.raises(TaskDataError, match=r"channels T1 and T2 differ in shape: \(4, 3, 2\) vs \(4, 3, 3\)"):
        stack_channels([volume(np.zeros((4, 3, 2))), volume(np.zeros((4, 3, 3)))], ["T1", "T2"])


def test_modality_comes_from_the_series_else_the_option():
    volumes = [volume(np.zeros(1), "MR"), volume(np.zeros(1))]
    assert channel_modalities(volumes, ["T1", "FLAIR"], "MR") == (["MR", "MR"], [])


def test_the_series_modality_wins_over_a_disagreeing_option_with_a_warning():
    assert channel_modalities([volume(np.zeros(1), "CT")], ["A"], "MR") == (
        ["CT"],
        ["channel A: the series' Modality is CT, the modality option MR; kept CT"],
    )


def test_no_modality_known_fails_asking_for_the_option():
    with pytest.raises(TaskDataError) as error:
        channel_modalities([volume(np.zeros(1), "CT"), volume(np.zeros(1), " ")], ["CT", "PET"], None)
    assert str(error.value) == (
        "no modality known for channel PET: give the modality option (nnU-Net normalises CT differently from other images)"
    )


def test_the_dataset_modality_is_the_one_most_cases_have_with_a_warning():
    per_case = {"a": ["CT"], "b": ["MR"], "c": ["CT"]}
    assert agreed_modalities(per_case) == (["CT"], ["channel 0 is CT in dataset.json; cases with another modality: b"])
    assert agreed_modalities({"a": ["MR"], "b": ["CT"]})[0] == ["CT"]
    assert agreed_modalities({}) == ([], [])
