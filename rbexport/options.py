"""The export options of SPEC 2.5, decided once and passed everywhere as one object."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExportOptions(BaseModel):
    """Which structure to write (SPEC 2.5)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    semantic_mask: bool = Field(
        False,
        description="Write category numbers (taxonomy classId + 1) instead of instance ids; "
        "needs taxonomy.json in the source.",
    )
    binary_mask: bool | None = Field(
        None,
        description="None (auto, the default): binary files only for series with overlapping "
        "instances. Switched to bool, on: one 0/1 file per instance (or per category when "
        "semantic) for every series; off: one label map per series, overlaps kept as "
        "overlappingGroups.",
    )
    no_consensus: bool = Field(
        False,
        description="Export consensus tasks as plain tasks, from the super truth when there "
        "is one, else from the first annotator.",
    )
    compress: bool = Field(True, description="Write .nii.gz (true) or .nii (false).")
    with_images: bool = Field(
        False,
        description="Also put the images of every series (its items) in the export, under "
        "images/TASK/SERIES/, byte for byte; tasks.json then points at them.",
    )
    image_format: Literal["original", "nifti"] = Field(
        "original",
        description="original: the image files as they are. nifti: one NIfTI image per series "
        "(DICOM converted), on the voxel grid of the series' label map; turns with_images on.",
    )

    @property
    def images(self) -> Literal["original", "nifti"] | None:
        """How the images go into the export, or None when they do not (SPEC 5)."""
        if self.image_format == "nifti":
            return "nifti"
        return "original" if self.with_images else None

    @property
    def mask_suffix(self) -> str:
        return ".nii.gz" if self.compress else ".nii"

    def binary_for(self, has_overlaps: bool) -> bool:
        """Whether a series gets per-instance (or per-category) files."""
        return has_overlaps if self.binary_mask is None else self.binary_mask
