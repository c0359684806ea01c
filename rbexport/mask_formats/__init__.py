"""Mask file formats (`mask_format`): the voxels a structure decided, as NIfTI, PNG, MetaImage,
DICOM SEG or RT-STRUCT contours.

The structures (rbexport.structures) say which masks a series gets and what each holds;
this package only encodes them. One writer per format behind one interface
(`base.MaskWriter`), found by name in `WRITERS` (as fsspec's `known_implementations`: the
module is imported when a run first asks for its format, so the CLI starts without them):

- `nifti`: `.nii.gz` (or `.nii`), the source format and the default
- `metaimage`: `.mhd` header and `.zraw` (or `.raw`) voxels, geometry in LPS as ITK reads it
- `png`: 8- or 16-bit greyscale PNG of a 2D label map, and the export's `class_map.json`
- `seg` (over `dicom_seg` and `seg_writer`): one DICOM Segmentation per series,
  referencing the series' DICOM images
- `rtstruct` (over `contours`): one RT Structure Set per series, its structures as
  contours on the voxel boundary
- `colours`: a category's RGB colour (the taxonomy's, else a fixed palette)

Adding a format: a module with a `MaskWriter`, a line here, its name in
rbexport.options.MaskFormat (the form's drop-down), and tests/test_mask_writers.py's cases.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..options import ExportOptions
    from .base import MaskWriter


@dataclass(frozen=True)
class KnownWriter:
    module: str  # under rbexport.mask_formats
    cls: str
    summary: str  # one line for the CLI's help
    index_files: tuple[str, ...] = ()  # what it writes at an export root (MaskWriter.index_files)


WRITERS: dict[str, KnownWriter] = {
    "nifti": KnownWriter("nifti", "NiftiWriter", "nifti (default)"),
    "png": KnownWriter("png", "PngWriter", "png (2D series only, with class_map.json)", ("class_map.json",)),
    "mhd": KnownWriter("metaimage", "MetaImageWriter", "mhd (MetaImage)"),
    "dicom-seg": KnownWriter(
        "seg", "DicomSegWriter", "dicom-seg (one DICOM SEG per series, referencing its DICOM items)"
    ),
    "rtstruct": KnownWriter(
        "rtstruct",
        "RtStructWriter",
        "rtstruct (one RT Structure Set per series: contours on the voxel boundary, referencing its DICOM items)",
    ),
}

# Every format's root files, known without importing the formats (a source there is refused).
INDEX_FILES = tuple(sorted({name for known in WRITERS.values() for name in known.index_files}))


@cache
def writer_named(name: str) -> MaskWriter:
    """The writer of the format `name` (its module imported on first use)."""
    known = WRITERS[name]
    module = importlib.import_module(f"{__name__}.{known.module}")
    return getattr(module, known.cls)()


def writer_for(options: ExportOptions) -> MaskWriter:
    """The writer of a variant's mask format."""
    return writer_named(options.mask_format)
