"""What a training layout is: where a case's files go and which JSON files describe the set.

Both layouts (nnunet, msd) write NIfTI `.nii.gz` whatever `compress` says: nnU-Net's
`file_ending` and MSD's file names are fixed. Paths are relative to the dataset folder
(the destination). The metadata files are written after every image and label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..export_tree import DATASET_LABELS_FOLDER
from .labels import TrainingLabels

FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class Dataset:
    """What a dataset.json describes."""

    labels: TrainingLabels
    modalities: Sequence[str]  # channel i's modality name (CT, MR, ...)
    folds: Mapping[str, int]  # every case id -> its fold
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Layout:
    """One training layout's file names and metadata files."""

    name: str
    stacks_channels: bool  # one 4D image per case (msd) rather than one file per channel (nnunet)
    image_paths: Callable[[str, int], list[str]] = field(repr=False)  # (case id, channel count) -> image files
    label_path: Callable[[str], str] = field(repr=False)  # case id -> label file
    dataset_json: Callable[[Dataset], dict] = field(repr=False)
    metadata_files: Callable[[Dataset], dict[str, object]] = field(repr=False)  # file name -> JSON content


def label_path(case_id: str) -> str:
    """`labelsTr/<case>.nii.gz`, the same in both layouts."""
    return f"{DATASET_LABELS_FOLDER}/{case_id}{FILE_ENDING}"
