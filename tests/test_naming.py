"""SPEC 2, "Names": safe folder and file names, series letters, de-duplication."""

from __future__ import annotations

import re

import pytest
from spec_helpers import PLAIN_MAP, PLAIN_SEGMENT_MAP, export, series_task

from rbexport.naming import image_file_names, safe_name, series_letter, series_names, task_folder_name

# Every character SPEC 2 allows besides letters and digits.
ALLOWED_PUNCTUATION = "_. #@+(),=[]{}!~-"


def test_allowed_characters_are_kept():
    name = "T1 (axial) #2 @3T+gd,x=[a]{b}!~_-.v2"
    assert safe_name(name) == name
    assert safe_name("a" + ALLOWED_PUNCTUATION + "z") == "a" + ALLOWED_PUNCTUATION + "z"


def test_non_ascii_letters_and_digits_are_kept():
    assert safe_name("Läsion_é2") == "Läsion_é2"


def test_every_unsafe_run_becomes_one_dash():
    assert safe_name("a/b") == "a-b"
    assert safe_name("a\\b") == "a-b"
    assert safe_name("x:/?*<>|y") == "x-y"  # one run, one dash
    assert safe_name('T1: "axial"/2') == "T1- -axial-2"  # ':' and '"/' are two runs
    assert safe_name("tab\there\nnewline") == "tab-here-newline"
    assert safe_name("a\x00b") == "a-b"
    assert safe_name("../../etc/passwd") == "..-..-etc-passwd"


def test_trailing_spaces_and_dots_are_dropped():
    assert safe_name("T1 . ") == "T1"
    assert safe_name("scan.v2..") == "scan.v2"
    assert safe_name("  lead") == "  lead"  # only trailing ones go
    assert safe_name("T1?") == "T1-"  # a dash from an unsafe run is not trailing junk


@pytest.mark.parametrize("name", ["", ".", "..", "...", " ", " . ", None, 7, ["T1"]])
def test_empty_dot_and_dotdot_names_fall_back(name):
    assert safe_name(name) is None
    # A series falls back to its position's letter ...
    assert series_names(["T1", name]) == ["T1", "B"]
    # ... a task to its taskId.
    assert task_folder_name({"taskId": "0c9f-11", "name": name}) == "0c9f-11"


def test_task_folder_is_name_else_task_id():
    assert task_folder_name({"taskId": "0c9f", "name": "Task_001"}) == "Task_001"
    assert task_folder_name({"taskId": "0c9f"}) == "0c9f"
    assert task_folder_name({"taskId": "a/b", "name": "?"}) == "-"  # "?" is one unsafe run: "-"
    assert task_folder_name({"taskId": "id/1"}) == "id-1"


@pytest.mark.parametrize(
    "reserved",
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)],
)
def test_reserved_windows_names_get_a_leading_underscore(reserved):
    assert safe_name(reserved) == "_" + reserved
    # Windows reserves them in any case and with any extension, so those are guarded too.
    assert safe_name(reserved.lower()) == "_" + reserved.lower()
    assert safe_name(reserved + ".nii") == "_" + reserved + ".nii"
    assert safe_name(reserved + ". ") == "_" + reserved  # reserved once trailing dots and spaces go


@pytest.mark.parametrize("name", ["COM0", "COM10", "LPT10", "CONSOLE", "NULL", "AUXILIARY", "PRN_1", "MYCON"])
def test_names_that_only_look_reserved_are_unchanged(name):
    assert safe_name(name) == name


def test_long_names_are_shortened_with_a_stable_hash_suffix():
    long_name = "Series_" + "x" * 400
    shortened = safe_name(long_name)
    assert shortened == safe_name(long_name)  # stable
    assert re.fullmatch(r"Series_x+-[0-9a-f]{8}", shortened)
    assert len(shortened.encode()) <= 255
    # Names that differ only past the cut stay different.
    other = safe_name("Series_" + "x" * 399 + "y")
    assert other != shortened and other[:-9] == shortened[:-9]
    # A short name is untouched.
    assert safe_name("x" * 100) == "x" * 100


def test_long_names_never_exceed_255_bytes_even_with_suffixes():
    for long_name in ("é" * 300, "脑" * 300, "a" + "😀" * 200, "x" * 254 + "é"):
        shortened = safe_name(long_name)
        shortened.encode("utf-8")  # still valid text: never cut inside a character
        # The longest file name a series gets: <Series>_<dup>_<annotator>.nii.gz
        assert len((shortened + "_99_99.nii.gz").encode()) <= 255


def test_long_names_in_a_run_give_components_of_at_most_255_bytes(tmp_path):
    tasks = [
        series_task(
            [{"name": "脑" * 200, "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP}],
            name="Task " + "é" * 300,
        )
    ]
    result = export(tmp_path, tasks, {"m.nii.gz": PLAIN_MAP}, binary_mask=True)
    assert result.report["failures"] == []
    files = result.mask_files()
    assert len(files) == 3  # label map and two instance files
    for path in files:
        assert all(len(part.encode()) <= 255 for part in path.split("/"))


def test_series_letters_go_a_to_z_then_aa():
    assert [series_letter(i) for i in range(3)] == ["A", "B", "C"]
    assert series_letter(25) == "Z"
    assert [series_letter(i) for i in (26, 27, 51, 52)] == ["AA", "AB", "AZ", "BA"]
    assert series_letter(701) == "ZZ"
    assert series_letter(702) == "AAA"


def test_unnamed_series_are_named_by_position():
    assert series_names([None, None, None]) == ["A", "B", "C"]
    assert series_names(["T1", None, "FLAIR", ""]) == ["T1", "B", "FLAIR", "D"]


def test_duplicate_names_get_numbered_suffixes_on_later_ones():
    assert series_names(["T1", "T1"]) == ["T1", "T1_1"]
    assert series_names(["T1", "T1", "FLAIR", "T1"]) == ["T1", "T1_1", "FLAIR", "T1_2"]


def test_deduplication_never_reuses_a_name_already_taken():
    assert series_names(["T1", "T1_1", "T1"]) == ["T1", "T1_1", "T1_2"]
    assert series_names([None, "A"]) == ["A", "A_1"]  # a fallback letter counts as a name
    assert series_names(["T1?", "T1/"]) == ["T1-", "T1-_1"]  # equal once made safe


def test_names_that_differ_only_in_case_are_repeats(tmp_path):
    """macOS and Windows keep one file of `T1.nii.gz` and `t1.nii.gz`: nothing may be lost there."""
    assert series_names(["T1", "t1", "FLAIR", "Flair", "t1"]) == ["T1", "t1_1", "FLAIR", "Flair_1", "t1_2"]
    assert image_file_names(["a/Slice.dcm", "b/slice.dcm", "c/other.dcm"]) == [
        "Slice-0.dcm",
        "slice-1.dcm",
        "other.dcm",
    ]
    tasks = [
        series_task(
            [
                {"name": "T1", "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP},
                {"name": "t1", "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP},
            ],
            name="Brain",
            task_id="a",
        ),
        series_task(
            [{"name": "T1", "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP}], name="BRAIN", task_id="b"
        ),
    ]
    written = export(tmp_path, tasks, {"m.nii.gz": PLAIN_MAP}).mask_files()
    assert written == [
        f"segmentations/{path}" for path in ("BRAIN_1/T1.nii.gz", "Brain/T1.nii.gz", "Brain/t1_1.nii.gz")
    ]
    assert len({path.casefold() for path in written}) == len(written)


def test_nothing_is_written_outside_the_root(tmp_path):
    tasks = [
        series_task(
            [
                {"name": "../../up", "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP},
                {"name": "/abs/path", "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP},
                {"name": "..", "segmentations": "m.nii.gz", "segmentMap": PLAIN_SEGMENT_MAP},
            ],
            task_id="../../../escape",
            name="..",
        )
    ]
    result = export(tmp_path, tasks, {"m.nii.gz": PLAIN_MAP})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert result.mask_files() == [
        "segmentations/..-..-..-escape/-abs-path.nii.gz",
        "segmentations/..-..-..-escape/..-..-up.nii.gz",
        "segmentations/..-..-..-escape/C.nii.gz",
    ]
    assert [s["segmentations"] for s in result.tasks[0]["series"]] == [
        "segmentations/..-..-..-escape/..-..-up.nii.gz",
        "segmentations/..-..-..-escape/-abs-path.nii.gz",
        "segmentations/..-..-..-escape/C.nii.gz",
    ]
