"""The Medical Segmentation Decathlon layout (SPEC 6 "msd"), as MONAI reads it.

`imagesTr/<case>.nii.gz` holds every channel (a 4th dimension when there are several),
`labelsTr/<case>.nii.gz` the label, and `dataset.json` lists the cases with their folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import TaskDataError
from ..export_tree import DATASET_IMAGES_FOLDER, DATASET_JSON
from ..images.geometry import AFFINE_TOLERANCE_MM
from ..images.volume import ImageVolume
from .labels import BACKGROUND
from .layout import FILE_ENDING, Dataset, Layout, label_path

CHANNEL_AXIS = 3


def image_paths(case_id: str, channel_count: int) -> list[str]:
    """One file whatever the channel count: `imagesTr/<case>.nii.gz`."""
    return [f"{DATASET_IMAGES_FOLDER}/{case_id}{FILE_ENDING}"]


def dataset_json(dataset: Dataset) -> dict:
    """MSD's dataset.json: name, description, modality, labels, numTraining, training (by case id), test.

    `name` and `description` are always present, empty when not given.
    """
    return {
        "name": dataset.name or "",
        "description": dataset.description or "",
        "modality": {str(channel): modality for channel, modality in enumerate(dataset.modalities)},
        "labels": {"0": BACKGROUND, **{str(value): name for value, name in sorted(dataset.labels.names.items())}},
        "numTraining": len(dataset.folds),
        "training": [
            {"image": f"./{image_paths(case_id, 1)[0]}", "label": f"./{label_path(case_id)}", "fold": fold}
            for case_id, fold in sorted(dataset.folds.items())
        ],
        "test": [],
    }


def metadata_files(dataset: Dataset) -> dict[str, object]:
    """dataset.json only."""
    return {DATASET_JSON: dataset_json(dataset)}


def stack_channels(volumes: Sequence[ImageVolume], channels: Sequence[str]) -> ImageVolume:
    """One image of a case's channels, channel on the 4th axis (a 2D channel gets a 3rd axis of 1).

    A single channel is returned as it is (MSD's single-modality images are 3D). Every
    channel must have the same shape and affine (within 1e-3 mm), else TaskDataError
    naming the channels. Channels whose NIfTI scalings differ are stacked as float32
    values with the scaling applied; the modality is kept when all channels share it.
    """
    if len(volumes) != len(channels) or not volumes:
        raise ValueError("stack_channels: one channel name per volume, at least one volume")
    if len(volumes) == 1:
        return volumes[0]
    first, first_channel = volumes[0], channels[0]
    if first.data.ndim > CHANNEL_AXIS:
        raise TaskDataError(
            f"channel {first_channel} already has {first.data.ndim} dimensions; channels must be 2D or 3D"
        )
    for volume, channel in zip(volumes[1:], channels[1:], strict=True):
        if volume.data.shape != first.data.shape:
            raise TaskDataError(
                f"channels {first_channel} and {channel} differ in shape: {first.data.shape} vs {volume.data.shape}"
            )
        if not np.allclose(volume.affine, first.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
            raise TaskDataError(f"channels {first_channel} and {channel} lie on different grids (their affines differ)")

    scalings = {volume.scaling for volume in volumes}
    if len(scalings) == 1:
        arrays, scaling = [volume.data for volume in volumes], scalings.pop()
    else:
        arrays, scaling = [_scaled(volume) for volume in volumes], None
    arrays = [array[:, :, np.newaxis] if array.ndim == 2 else array for array in arrays]
    modalities = {volume.modality for volume in volumes}
    return ImageVolume(
        data=np.stack(arrays, axis=CHANNEL_AXIS),
        affine=first.affine.copy(),
        modality=modalities.pop() if len(modalities) == 1 else None,
        scaling=scaling,
    )


def _scaled(volume: ImageVolume) -> np.ndarray:
    """The real values of a volume's voxels (float32)."""
    if volume.scaling is None:
        return volume.data.astype(np.float32, copy=False)
    slope, intercept = volume.scaling
    return volume.data.astype(np.float32) * np.float32(slope) + np.float32(intercept)


MSD = Layout(
    name="msd",
    stacks_channels=True,
    image_paths=image_paths,
    label_path=label_path,
    dataset_json=dataset_json,
    metadata_files=metadata_files,
)
