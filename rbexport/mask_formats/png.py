"""PNG masks (`mask_format = png`), for 2D series, and the export's `class_map.json`.

A label map (or a semantic category map) is a greyscale PNG of the same values: 8-bit
when they fit, else 16-bit. A binary (instance or category) file is 0/255, 8-bit.

Orientation is the SDK's: **PNG row r, column c is NIfTI voxel [c, r]** (the PNG's rows
run along the NIfTI's second axis, its columns along the first), so
`numpy.asarray(Image.open(png)) == nifti_array[:, :, 0].T`. A label map of shape (X, Y)
or (X, Y, 1) (any further axes of size 1) is 2D; anything else fails the task with a
reason. PNG carries no geometry: spacing and position stay in the NIfTI export.

`class_map.json` (at the export root, beside tasks.json) says what each value means,
with an RGB colour: in a semantic export `{"<category number>": {"category": ...,
"color": [r, g, b]}}` for every category of the taxonomy; otherwise instance ids differ
from task to task, so it is keyed by each label-map PNG's path: `{"segmentations/T/S.png":
{"<instance id>": {"category": ..., "color": [...]}}}`.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
from PIL import Image

from ..errors import TaskDataError
from ..export_tree import CLASS_MAP_JSON
from ..nifti import Fill
from ..options import ExportOptions
from ..structures import MaskFile
from .base import COLOURS, Encoded, MaskWriter, SourceExtras
from .colours import RGB, colour_of

BINARY_ON = 255
PNG_COMPRESS_LEVEL = 6  # zlib's default: deterministic, and small for label maps


def planar_shape(like: nib.Nifti1Header) -> tuple[int, int]:
    """(X, Y) of a 2D label map; TaskDataError when it has more than one slice."""
    shape = tuple(int(size) for size in like.get_data_shape())
    if len(shape) < 2 or any(size != 1 for size in shape[2:]):
        raise TaskDataError(
            f"PNG masks are 2D, and this label map is {'x'.join(map(str, shape))}; "
            "export 3D series with mask_format nifti, mhd or dicom-seg"
        )
    return shape[0], shape[1]


def encode_png(fill: Fill, like: nib.Nifti1Header, binary: bool) -> bytes:
    """The PNG of the mask `fill` writes: rows along the NIfTI's second axis, columns along its first."""
    columns, rows = planar_shape(like)
    dtype = np.dtype(fill.dtype)
    voxels = np.zeros(columns * rows, dtype=dtype)
    fill.write(voxels)  # file order: the first axis fastest, so each run of X values is one PNG row
    pixels = voxels.reshape(rows, columns)
    if binary:
        pixels = (pixels != 0).astype(np.uint8) * np.uint8(BINARY_ON)
    picture = Image.fromarray(pixels.astype(np.uint8 if dtype.itemsize == 1 else np.uint16, copy=False))
    stream = io.BytesIO()
    picture.save(stream, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return stream.getvalue()


def class_map(
    entries: list[dict],
    semantic: bool,
    category_numbers: Mapping[str, int] | None,
    colours: Mapping[str, RGB] | None,
) -> bytes:
    """class_map.json for an export whose tasks.json holds `entries`."""
    if semantic:
        body: dict = {
            str(number): _meaning(category, number, colours)
            for category, number in sorted((category_numbers or {}).items(), key=lambda item: item[1])
        }
    else:
        body = {}
        for series in _exported_series(entries):
            path = _label_map_path(series)
            segment_map = series.get("segmentMap")
            if path is None or not isinstance(segment_map, dict):
                continue
            values = sorted((int(key), entry) for key, entry in segment_map.items() if str(key).isdigit())
            body[path] = {
                str(value): _meaning(entry.get("category") if isinstance(entry, dict) else None, value, colours)
                for value, entry in values
            }
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _meaning(category: object, value: int, colours: Mapping[str, RGB] | None) -> dict:
    return {
        "category": category if isinstance(category, str) else None,
        "color": list(colour_of(category, value, colours)),
    }


def _exported_series(entries: list[dict]) -> Iterator[dict]:
    """Every series of every entry: the task's, each annotator's and the super truth's."""
    for entry in entries:
        lists = [entry.get("series")]
        lists += [
            annotator.get("series") for annotator in entry.get("consensusTasks") or [] if isinstance(annotator, dict)
        ]
        if isinstance(entry.get("superTruth"), dict):
            lists.append(entry["superTruth"].get("series"))
        for series_list in lists:
            for series in series_list if isinstance(series_list, list) else []:
                if isinstance(series, dict):
                    yield series


def _label_map_path(series: dict) -> str | None:
    """The series' label-map PNG: its `segmentations`, or beside its binary files' folder."""
    segmentations = series.get("segmentations")
    if isinstance(segmentations, str):
        return segmentations if segmentations.endswith(".png") else None
    if isinstance(segmentations, list) and segmentations and isinstance(segmentations[0], str):
        return posixpath.dirname(segmentations[0]) + ".png"
    return None


class PngWriter(MaskWriter):
    """2D label maps only (checked before anything is written); class_map.json beside tasks.json."""

    name = "png"
    file_suffix = ".png"
    needs = frozenset({COLOURS})

    def check_label_map(self, like: nib.Nifti1Header) -> None:
        planar_shape(like)

    def encode_file(
        self, mask_file: MaskFile, like: nib.Nifti1Header, options: ExportOptions, head: bytes | None
    ) -> list[tuple[str, bytes]]:
        return [(mask_file.path, encode_png(mask_file.fill, like, mask_file.binary))]

    def index_files(self, entries: Sequence[dict], options: ExportOptions, extras: SourceExtras) -> Encoded:
        mapping = class_map(list(entries), options.semantic_mask, extras.category_numbers, extras.colours)
        return ((CLASS_MAP_JSON, mapping),)
