"""The nnU-Net v2 raw dataset layout (SPEC 6 "nnunet"); the destination is the dataset folder.

`imagesTr/<case>_<channel as 4 digits>.nii.gz`, `labelsTr/<case>.nii.gz`, `dataset.json`
and `splits_final.json` (nnU-Net's five folds, from the export's own fold assignment).
"""

from __future__ import annotations

from ..export_tree import DATASET_IMAGES_FOLDER, DATASET_JSON, SPLITS_JSON
from .folds import splits
from .labels import BACKGROUND
from .layout import FILE_ENDING, Dataset, Layout, label_path


def image_paths(case_id: str, channel_count: int) -> list[str]:
    """One file per channel: `imagesTr/<case>_0000.nii.gz`, `..._0001.nii.gz`, ..."""
    return [f"{DATASET_IMAGES_FOLDER}/{case_id}_{channel:04d}{FILE_ENDING}" for channel in range(channel_count)]


def dataset_json(dataset: Dataset) -> dict:
    """nnU-Net's dataset.json: channel_names, labels (name -> value), numTraining, file_ending, name/description when given."""
    content: dict = {
        "channel_names": {str(channel): modality for channel, modality in enumerate(dataset.modalities)},
        "labels": {BACKGROUND: 0, **{name: value for value, name in sorted(dataset.labels.names.items())}},
        "numTraining": len(dataset.folds),
        "file_ending": FILE_ENDING,
    }
    if dataset.name is not None:
        content["name"] = dataset.name
    if dataset.description is not None:
        content["description"] = dataset.description
    return content


def metadata_files(dataset: Dataset) -> dict[str, object]:
    """dataset.json and splits_final.json."""
    return {DATASET_JSON: dataset_json(dataset), SPLITS_JSON: splits(dataset.folds)}


NNUNET = Layout(
    name="nnunet",
    stacks_channels=False,
    image_paths=image_paths,
    label_path=label_path,
    dataset_json=dataset_json,
    metadata_files=metadata_files,
)
