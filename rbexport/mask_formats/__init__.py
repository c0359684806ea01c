"""Mask file formats (`mask_format`): the voxels a structure decided, as NIfTI, PNG, MetaImage,
DICOM SEG or RT-STRUCT contours.

The structures (rbexport.structures) say which masks a series gets and what each holds;
this package only encodes them. One writer per format behind one interface
(`base.MaskWriter`), found by name in `WRITERS` (as fsspec's `known_implementations`: the
module is imported when a run first asks for its format, so the CLI starts without them):

- `nifti`: `.nii.gz` (or `.nii`), the source format and the default
- `metaimage`: `.mhd` header and `.zraw` (or `.raw`) voxels, geometry in LPS as ITK reads it
- `png`: 8- or 16-bit greyscale PNG of a 2D label map, and the export's `class_map.json`
- `seg` (over `dicom_seg`: `segments`, `seg_frames`; and `seg_writer`: `seg_planes`,
  `seg_functional_groups`, `dicom_bytes`): one DICOM Segmentation per series,
  referencing the series' DICOM images
- `rtstruct` (over `contours` and `segments`): one RT Structure Set per series, its structures as
  contours on the voxel boundary
- `colours`: a category's RGB colour (the taxonomy's, else a fixed palette)

Adding a format: a module with a `MaskWriter`, a line here, its name in
rbexport.options.MaskFormat and its description in ExportOptions.mask_format's (the
form's drop-down, the CLI's help), and tests/test_mask_writers.py's cases.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from ..export_tree import CLASS_MAP_JSON

if TYPE_CHECKING:
    from ..options import ExportOptions
    from .base import MaskWriter


@dataclass(frozen=True)
class KnownWriter:
    module: str  # under rbexport.mask_formats
    cls: str
    index_files: tuple[str, ...] = ()  # what it writes at an export root (MaskWriter.index_files)


WRITERS: dict[str, KnownWriter] = {
    "nifti": KnownWriter("nifti", "NiftiWriter"),
    "png": KnownWriter("png", "PngWriter", (CLASS_MAP_JSON,)),
    "mhd": KnownWriter("metaimage", "MetaImageWriter"),
    "dicom-seg": KnownWriter("seg", "DicomSegWriter"),
    "rtstruct": KnownWriter("rtstruct", "RtStructWriter"),
}

# Every format's root files, known without importing the formats (each is one of
# rbexport.export_tree.ROOT_FILES, where a source is refused).
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
