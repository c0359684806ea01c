"""The export options of SPEC 2.5, decided once and passed everywhere as one object."""

from __future__ import annotations

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
        description="true: one 0/1 file per instance (or per category when semantic) for "
        "every series; false: one label map per series, overlaps kept as overlappingGroups; "
        "null (auto): binary files only for series with overlapping instances.",
    )
    no_consensus: bool = Field(
        False,
        description="Export consensus tasks as plain tasks, from the super truth when there "
        "is one, else from the first annotator.",
    )
    compress: bool = Field(True, description="Write .nii.gz (true) or .nii (false).")

    @property
    def mask_suffix(self) -> str:
        return ".nii.gz" if self.compress else ".nii"

    def binary_for(self, has_overlaps: bool) -> bool:
        """Whether a series gets per-instance (or per-category) files."""
        return has_overlaps if self.binary_mask is None else self.binary_mask
