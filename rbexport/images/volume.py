"""An image volume as the export holds it, and its NIfTI encoding.

`ImageVolume.data` is in NIfTI index order (axis 0 along a row, axis 1 down a column,
axis 2 along the slice normal) and `affine` is nibabel's RAS+ voxel-to-world matrix.
`encode_nifti` writes a NIfTI-1 file whose sform and qform are both that affine (code 1,
scanner), through rbexport.nifti's writer: one buffer, deterministic ISA-L gzip.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from ..nifti import Fill, encode_fill

SCANNER_CODE = 1
_NIFTI1_VOXEL_OFFSET = 352  # 348-byte header and the 4-byte "no extensions" flag


@dataclass(frozen=True, eq=False)
class ImageVolume:
    """Voxels, where they lie, and what scanner made them.

    `scaling` is a NIfTI item's (scl_slope, scl_inter), kept so that its stored values
    are written back unchanged; None for every other source (their values are final).
    """

    data: np.ndarray
    affine: np.ndarray
    modality: str | None
    scaling: tuple[float, float] | None = None


def encode_nifti(volume: ImageVolume, compress: bool) -> bytes:
    """The volume as .nii.gz bytes (.nii when `compress` is false); the same volume gives the same bytes."""
    header = nifti_header(volume)
    dtype = volume.data.dtype.newbyteorder("=")

    def write(voxels: np.ndarray) -> None:
        voxels.reshape(volume.data.shape, order="F")[...] = volume.data

    return encode_fill(Fill(write, dtype), header, compress, head=_header_bytes(header))


def nifti_header(volume: ImageVolume) -> nib.Nifti1Header:
    """A NIfTI-1 header for the volume: shape, type, both transforms, millimetres, scaling."""
    header = nib.Nifti1Header()
    header.set_data_shape(volume.data.shape)
    header.set_data_dtype(volume.data.dtype.newbyteorder("="))
    header.set_qform(volume.affine, code=SCANNER_CODE)
    header.set_sform(volume.affine, code=SCANNER_CODE)
    header.set_xyzt_units("mm")
    if volume.scaling is not None:
        header.set_slope_inter(*volume.scaling)
    header["vox_offset"] = _NIFTI1_VOXEL_OFFSET
    return header


def _header_bytes(header: nib.Nifti1Header) -> bytes:
    """The bytes before the voxels: the header and an empty extension flag."""
    return header.binaryblock + bytes(_NIFTI1_VOXEL_OFFSET - len(header.binaryblock))
