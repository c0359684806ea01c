"""The export options of SPEC 2.5, decided once and passed everywhere as one object."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .naming import safe_name

Layout = Literal["redbrick", "nnunet", "msd"]
# The names of rbexport.mask_formats.WRITERS (a Literal: the flow's form shows a drop-down).
MaskFormat = Literal["nifti", "png", "mhd", "dicom-seg", "rtstruct"]
SegType = Literal["auto", "binary", "labelmap"]
SegCompression = Literal["none", "rle", "jpegls"]
# Options that only change a DICOM SEG's bytes: left out of a task's fingerprint while at
# their defaults, so exports made before they existed are not all exported again.
SEG_OPTION_DEFAULTS = {"seg_type": "auto", "seg_compression": "none"}


# The options that only the training layouts read; the Prefect form shows them last, titled
# "Training layout: ...", apart from the RedBrick export's options.
LAYOUT_FIELDS = ("layout", "channels", "modality", "group_by", "dataset_name", "description")
# Optional text and list options: the form shows a plain field (empty: None), not Prefect's
# `Property is type "None"` switch. (binary_mask keeps its switch: None is "auto".)
PLAIN_OPTIONAL_FIELDS = ("channels", "modality", "group_by", "dataset_name", "description")


def _form_schema(schema: dict) -> None:
    """The options' JSON schema as the Prefect UI's form shows it (the model is unchanged)."""
    properties = schema.get("properties", {})
    for name in PLAIN_OPTIONAL_FIELDS:
        field = properties.get(name, {})
        kinds = [kind for kind in field.pop("anyOf", []) if kind != {"type": "null"}]
        if len(kinds) == 1:
            field.update(kinds[0])
        if field.get("default", "") is None:
            del field["default"]
    for name in LAYOUT_FIELDS:
        if name in properties:
            field = properties.pop(name)
            field["title"] = "Training layout: " + field.get("title", name.replace("_", " ").capitalize())
            properties[name] = field


class ExportOptions(BaseModel):
    """Which structure to write (SPEC 2.5)."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_form_schema)

    semantic_mask: bool = Field(
        False,
        description="Write category numbers (taxonomy classId + 1) instead of instance ids; "
        "needs taxonomy.json in the source.",
    )
    binary_mask: bool | None = Field(
        None,
        description="One 0/1 file per instance (or per category when semantic) for every series "
        "(true), or one label map per series, overlaps kept as overlappingGroups (false). None "
        "(auto, the default): binary files only for series with overlapping instances.",
    )
    no_consensus: bool = Field(
        False,
        description="Export consensus tasks as plain tasks, from the super truth when there "
        "is one, else from the first annotator.",
    )
    compress: bool = Field(
        True, description="Write .nii.gz (true) or .nii (false); MetaImage: .zraw (true) or .raw (false)."
    )
    mask_format: MaskFormat = Field(
        "nifti",
        description="The file format of each mask (the structure stays the same). nifti: .nii.gz. png: "
        "8- or 16-bit greyscale PNG, 2D series only, with class_map.json at the export root. mhd: "
        "MetaImage (.mhd header and .zraw data). dicom-seg: one DICOM Segmentation per series, "
        "referencing the series' DICOM images (its items); SNOMED CT codes from segment_codes.json "
        "in the source when present. rtstruct: one RT Structure Set per series, referencing its DICOM "
        "images, each instance (each category when semantic) an ROI of contours on the voxel boundary.",
    )
    seg_type: SegType = Field(
        "auto",
        description="dicom-seg: the kind of Segmentation object. auto: LABELMAP (Label Map "
        "Segmentation Storage, DICOM 2024) where no instances overlap, BINARY otherwise. binary: the "
        "classic Segmentation Storage object always (what older viewers, dcmqi and most PACS read). "
        "labelmap: LABELMAP always; a task with overlapping instances fails (use binary).",
    )
    seg_compression: SegCompression = Field(
        "none",
        description="dicom-seg: lossless compression of the SEG's frames. none: Explicit VR Little "
        "Endian. rle: RLE Lossless. jpegls: JPEG-LS Lossless. Only LABELMAP frames can be compressed "
        "(BINARY frames are 1 bit a pixel): with seg_type binary this is an error, with auto a series "
        "whose instances overlap fails its task.",
    )
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

    layout: Layout = Field(
        "redbrick",
        description="redbrick: the RedBrick export (segmentations/, tasks.json). nnunet: an nnU-Net v2 "
        "raw dataset (imagesTr/, labelsTr/, dataset.json, splits_final.json); the destination is the "
        "dataset folder, such as nnUNet_raw/Dataset501_Liver. msd: a Medical Segmentation Decathlon "
        "dataset (read by MONAI). Both training layouts write NIfTI images on the label's grid and one "
        "label per category; they need taxonomy.json in the source.",
    )
    channels: tuple[str, ...] | None = Field(
        None,
        description="Training layouts: the series names that are a case's channels, in order (such as "
        "T1, T2, FLAIR); a case is then a task. None: every annotated series is a case of one channel.",
    )
    modality: str | None = Field(
        None,
        description="Training layouts: the channel name (CT, MR, ...) for series that carry no DICOM "
        "Modality. nnU-Net normalises CT differently from everything else.",
    )
    group_by: str | None = Field(
        None,
        description="Training layouts: a task field (dotted, such as metaData.patientId) whose equal "
        "values keep cases in one fold. None: each task is its own group.",
    )
    dataset_name: str | None = Field(None, description="Training layouts: the name in dataset.json.")
    description: str | None = Field(None, description="Training layouts: the description in dataset.json.")

    @field_validator("modality", "group_by", "dataset_name", "description", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """An emptied form field is the default, None."""
        return None if value == "" else value

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: object) -> object:
        """`T1,T2,FLAIR` (a form field, an environment variable) is three channels; [] is none."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, (list, tuple)):
            value = tuple(part for part in value if part != "") or None
        return value

    @field_validator("seg_type", "seg_compression", mode="before")
    @classmethod
    def _default_for_none(cls, value: object, info: ValidationInfo) -> object:
        """`seg_type=auto` and `seg_compression=none` in a `--variant` arrive as None."""
        return SEG_OPTION_DEFAULTS[str(info.field_name)] if value is None else value

    @model_validator(mode="after")
    def _check_seg_options(self) -> ExportOptions:
        if self.seg_type == "binary" and self.seg_compression != "none":
            raise ValueError(
                f"seg_compression {self.seg_compression} compresses LABELMAP SEGs only: BINARY frames are "
                "1 bit a pixel, which DICOM and highdicom store uncompressed (RLE and JPEG-LS take 8 or 16 "
                "bits); use seg_type labelmap or auto, or seg_compression none"
            )
        return self

    @model_validator(mode="after")
    def _check_layout(self) -> ExportOptions:
        if self.layout == "redbrick":
            return self
        if self.mask_format != ExportOptions.model_fields["mask_format"].default:
            raise ValueError(
                f"the {self.layout} layout writes NIfTI labels only (its framework reads nothing else); "
                f"mask_format {self.mask_format} is for the redbrick layout"
            )
        for channel in self.channels or ():
            if safe_name(channel) != channel:
                raise ValueError(f"channel {channel!r} is not a series name a task can have")
        if self.channels and len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels repeat a name: {', '.join(self.channels)}")
        return self

    def fingerprint_fields(self) -> dict:
        """The options as a task's fingerprint holds them (rbexport.incremental)."""
        fields = self.model_dump()
        for name, default in SEG_OPTION_DEFAULTS.items():
            if fields[name] == default:
                del fields[name]
        return fields

    @property
    def dataset(self) -> bool:
        """Whether this is a training layout (SPEC 6) rather than the RedBrick export."""
        return self.layout != "redbrick"

    @property
    def images(self) -> Literal["original", "nifti"] | None:
        """How the images go into the export, or None when they do not (SPEC 5, 6)."""
        if self.image_format == "nifti" or self.dataset:
            return "nifti"
        return "original" if self.with_images else None

    def binary_for(self, has_overlaps: bool) -> bool:
        """Whether a series gets per-instance (or per-category) files."""
        return has_overlaps if self.binary_mask is None else self.binary_mask
