"""NIfTI masks (`mask_format = nifti`, the default): `.nii.gz` (or `.nii`), as the source's label maps.

The encoding itself is rbexport.nifti's (the source format's reader and writer); this is
its place in the registry. Every file of one label map and type shares one header.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ..nifti import encode_fill, mask_header
from ..options import ExportOptions
from ..structures import MaskFile
from .base import MaskWriter


class NiftiWriter(MaskWriter):
    name = "nifti"
    file_suffix = ".nii.gz"

    def suffix(self, options: ExportOptions) -> str:
        return ".nii.gz" if options.compress else ".nii"

    def header_for(self, like: nib.Nifti1Header, dtype: type | np.dtype) -> bytes | None:
        return mask_header(like, dtype)

    def encode_file(
        self, mask_file: MaskFile, like: nib.Nifti1Header, options: ExportOptions, head: bytes | None
    ) -> list[tuple[str, bytes]]:
        return [(mask_file.path, encode_fill(mask_file.fill, like, options.compress, head))]
