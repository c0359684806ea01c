"""Mask file formats (`mask_format`): the voxels a structure decided, as NIfTI, PNG, MetaImage or DICOM SEG.

The structures (rbexport.structures) say which masks a series gets and what each holds;
this package only encodes them. One module per format:

- `metaimage`: `.mhd` header and `.zraw` (or `.raw`) voxels, geometry in LPS as ITK reads it
- `png`: 8- or 16-bit greyscale PNG of a 2D label map, and the export's `class_map.json`
- `dicom_seg`: one DICOM Segmentation per series, referencing the series' DICOM images
- `colours`: a category's RGB colour (the taxonomy's, else a fixed palette)

NIfTI stays in rbexport.nifti (the source format and the default).
"""

from __future__ import annotations

import nibabel as nib

from ..nifti import encode_fill
from ..options import ExportOptions
from ..structures import MaskFile
from .metaimage import encode_metaimage
from .png import encode_png


def encode_mask_file(
    mask_file: MaskFile, like: nib.Nifti1Header, options: ExportOptions, head: bytes | None = None
) -> list[tuple[str, bytes]]:
    """The files (path, bytes) one mask is written as: one, or a MetaImage's header and data.

    `head`: a NIfTI header already made for `like` and the mask's type (NIfTI only).
    dicom-seg masks are not written one by one (rbexport.mask_formats.dicom_seg).
    """
    if options.mask_format == "png":
        return [(mask_file.path, encode_png(mask_file.fill, like, mask_file.binary))]
    if options.mask_format == "mhd":
        return encode_metaimage(mask_file.path, mask_file.fill, like, options.compress)
    if options.mask_format == "nifti":
        return [(mask_file.path, encode_fill(mask_file.fill, like, options.compress, head))]
    raise ValueError(f"{options.mask_format} masks are not written one file at a time")
