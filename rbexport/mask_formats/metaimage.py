"""MetaImage masks (`mask_format = mhd`): a text `.mhd` header and the voxels beside it.

`<name>.mhd` names its data file `<name>.zraw` (zlib, `CompressedData = True`) or, with
`compress = false`, `<name>.raw`. The voxels are in NIfTI file order, which is also
MetaImage's (the first axis fastest). Geometry is ITK's, in LPS: `Offset` is the first
voxel's position, `ElementSpacing` the length of each axis' step, `TransformMatrix` each
axis' unit direction in turn (as ITK writes it), all from the label map's affine (sform,
else qform, as nibabel's `get_best_affine` chooses), x and y negated from NIfTI's RAS.
A 2D label map gives a 2D image; a 4D one keeps its time axis (spacing its pixdim).
Same voxels give the same bytes (ISA-L zlib at a fixed level).
"""

from __future__ import annotations

import posixpath

import nibabel as nib
import numpy as np
from isal import isal_zlib

from ..nifti import Fill
from ..options import ExportOptions
from ..structures import MaskFile
from .base import MaskWriter

ZLIB_LEVEL = 1  # as the NIfTI writer's gzip: fast, and label maps compress well at any level
ELEMENT_TYPES = {np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.uint16): "MET_USHORT"}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SPATIAL_AXES = 3


def data_path(header_path: str, compress: bool) -> str:
    """`a/b.mhd` -> `a/b.zraw` (or `a/b.raw`)."""
    return header_path.removesuffix(".mhd") + (".zraw" if compress else ".raw")


def encode_metaimage(path: str, fill: Fill, like: nib.Nifti1Header, compress: bool) -> list[tuple[str, bytes]]:
    """The header file at `path` (`.mhd`) and its data file, for the voxels `fill` writes."""
    shape = tuple(int(size) for size in like.get_data_shape())
    dtype = np.dtype(fill.dtype)
    voxels = np.zeros(int(np.prod(shape)), dtype=dtype)
    fill.write(voxels)
    stored = voxels.astype(dtype.newbyteorder("<"), copy=False)  # BinaryDataByteOrderMSB = False
    data = isal_zlib.compress(stored, ZLIB_LEVEL) if compress else stored.tobytes()
    del voxels, stored
    data_file = data_path(path, compress)
    header = metaimage_header(like, shape, dtype, posixpath.basename(data_file), len(data) if compress else None)
    return [(path, header), (data_file, data)]


def metaimage_header(
    like: nib.Nifti1Header, shape: tuple[int, ...], dtype: np.dtype, data_file: str, compressed_size: int | None
) -> bytes:
    """The `.mhd` text: ITK's keys in ITK's order."""
    origin, spacing, directions = lps_geometry(like, len(shape))
    lines = [
        ("ObjectType", "Image"),
        ("NDims", str(len(shape))),
        ("BinaryData", "True"),
        ("BinaryDataByteOrderMSB", "False"),
        ("CompressedData", "True" if compressed_size is not None else "False"),
    ]
    if compressed_size is not None:
        lines.append(("CompressedDataSize", str(compressed_size)))
    lines += [
        ("TransformMatrix", _numbers(directions.T.reshape(-1))),  # axis 0's direction, then axis 1's, ...
        ("Offset", _numbers(origin)),
        ("CenterOfRotation", _numbers(np.zeros(len(shape)))),
        ("ElementSpacing", _numbers(spacing)),
        ("DimSize", " ".join(str(size) for size in shape)),
        ("ElementType", ELEMENT_TYPES[dtype]),
        ("ElementDataFile", data_file),
    ]
    return "".join(f"{key} = {value}\n" for key, value in lines).encode("ascii")


def lps_geometry(like: nib.Nifti1Header, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction matrix whose columns are the axes) of an `ndim`-axis image, in LPS."""
    affine = RAS_TO_LPS @ like.get_best_affine()[:3, :]
    columns = affine[:, :SPATIAL_AXES]
    steps = np.linalg.norm(columns, axis=0)
    unit = columns / np.where(steps == 0, 1.0, steps)
    spatial = min(ndim, SPATIAL_AXES)
    origin = np.zeros(ndim)
    origin[:spatial] = affine[:spatial, 3]
    spacing = np.ones(ndim)
    spacing[:spatial] = steps[:spatial]
    zooms = like.get_zooms()
    for axis in range(SPATIAL_AXES, ndim):
        spacing[axis] = float(zooms[axis]) if axis < len(zooms) and zooms[axis] > 0 else 1.0
    directions = np.eye(ndim)
    directions[:spatial, :spatial] = unit[:spatial, :spatial]
    return origin, spacing, directions


def _numbers(values) -> str:
    return " ".join(repr(float(value)) if float(value) != 0 else "0" for value in values)


class MetaImageWriter(MaskWriter):
    name = "mhd"
    file_suffix = ".mhd"

    def encode_file(
        self, mask_file: MaskFile, like: nib.Nifti1Header, options: ExportOptions, head: bytes | None
    ) -> list[tuple[str, bytes]]:
        return encode_metaimage(mask_file.path, mask_file.fill, like, options.compress)
