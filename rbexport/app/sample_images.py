"""Synthetic DICOM for the demo, the tests and the benchmarks.

`dicom_series` writes a volume as a DICOM series (one file per slice, or one enhanced
multi-frame file), `xray_image` a single 2D image without position or orientation, and
`expected_affine` gives the RAS+ voxel-to-world matrix a reader should produce for them,
so labels can be made on an image's grid.

Arrays are in NIfTI index order: axis 0 runs along a row (the DICOM column index), axis 1
down the columns (the row index), axis 2 along the slice normal. Positions and directions
are DICOM patient coordinates (LPS, millimetres). The output is deterministic: the same
arguments give the same bytes (UIDs are derived from the arguments, never random).
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

Vector = tuple[float, float, float]

SINGLE_FRAME_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
MULTI_FRAME_CLASSES = {"CT": EnhancedCTImageStorage, "MR": EnhancedMRImageStorage}
# Multi-frame images of other modalities are written as Enhanced MR: a class whose
# functional groups every reader knows.
DEFAULT_MULTI_FRAME_CLASS = EnhancedMRImageStorage
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


def dicom_series(
    volume: np.ndarray,
    *,
    spacing: Vector = (0.8, 0.8, 2.0),
    origin: Vector = (-100.0, -120.0, 40.0),
    row_direction: Vector = (1.0, 0.0, 0.0),
    column_direction: Vector = (0.0, 1.0, 0.0),
    rescale: tuple[float, float] | None = None,
    modality: str = "CT",
    signed: bool = True,
    bits_stored: int = 16,
    series_uid: str | None = None,
    multiframe: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "SAMPLE-001",
    study_uid: str | None = None,
) -> list[tuple[str, bytes]]:
    """`volume` (stored values, axes i, j, k) as DICOM files: [(file name, bytes), ...].

    `spacing` is (along a row, down a column, between slices) in mm; slice k lies at
    `origin + k * spacing[2] * normal`, normal = row_direction x column_direction.
    `rescale` is (RescaleSlope, RescaleIntercept); pixels are 16-bit, signed or not, with
    `bits_stored` significant bits. One file per slice (`slice-0001.dcm`, ...) or, with
    `multiframe`, one enhanced multi-frame file (`multiframe.dcm`). `transfer_syntax`
    may be any uncompressed one (deflated and big endian included) or RLE Lossless.
    """
    if volume.ndim != 3:
        raise ValueError(f"a series needs a 3D volume, not shape {volume.shape}")
    stored = _stored_pixels(volume, signed, bits_stored)
    row, column = np.asarray(row_direction, float), np.asarray(column_direction, float)
    normal = np.cross(row, column)
    positions = [np.asarray(origin, float) + k * spacing[2] * normal for k in range(stored.shape[2])]
    seed = _seed(stored, spacing, origin, row_direction, column_direction, rescale, modality, patient_id)
    study_uid, series_uid = study_uid or _uid(seed, "study"), series_uid or _uid(seed, "series")
    common = _common_dataset(stored, bits_stored, signed, modality, patient_id, study_uid, series_uid)
    orientation = [*row, *column]
    pixel_spacing = [spacing[1], spacing[0]]  # DICOM order: between rows, between columns
    if multiframe:
        dataset = _multiframe_dataset(
            common, stored.shape[2], positions, orientation, pixel_spacing, spacing[2], rescale, seed
        )
        dataset.PixelData = _pixel_bytes(stored, transfer_syntax)
        return [("multiframe.dcm", _file_bytes(dataset, transfer_syntax))]
    items = []
    for k, position in enumerate(positions):
        dataset = _slice_dataset(common, k, position, orientation, pixel_spacing, spacing[2], rescale, seed)
        dataset.PixelData = _pixel_bytes(stored[:, :, k : k + 1], transfer_syntax)
        items.append((f"slice-{k + 1:04d}.dcm", _file_bytes(dataset, transfer_syntax)))
    return items


def xray_image(
    pixels: np.ndarray,
    *,
    spacing: tuple[float, float] | None = (0.15, 0.15),
    spacing_tag: str = "ImagerPixelSpacing",
    modality: str = "DX",
    signed: bool = False,
    bits_stored: int = 12,
    rescale: tuple[float, float] | None = None,
    patient_id: str = "SAMPLE-001",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> tuple[str, bytes]:
    """A 2D image (axes i, j) as one DICOM file without ImagePositionPatient or ImageOrientationPatient.

    `spacing` (along a row, down a column) goes into `spacing_tag` (ImagerPixelSpacing,
    as projection radiographs have it, or PixelSpacing); None writes no spacing at all.
    """
    if pixels.ndim != 2:
        raise ValueError(f"an X-ray is a 2D image, not shape {pixels.shape}")
    stored = _stored_pixels(pixels[:, :, np.newaxis], signed, bits_stored)
    seed = _seed(stored, spacing, spacing_tag, modality, rescale, patient_id)
    study_uid, series_uid = _uid(seed, "study"), _uid(seed, "series")
    dataset = _common_dataset(stored, bits_stored, signed, modality, patient_id, study_uid, series_uid)
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation if modality == "DX" else SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = _uid(seed, "image")
    dataset.InstanceNumber = 1
    if spacing is not None:
        setattr(dataset, spacing_tag, [spacing[1], spacing[0]])
    _set_rescale(dataset, rescale)
    dataset.PixelData = _pixel_bytes(stored, transfer_syntax)
    return "xray.dcm", _file_bytes(dataset, transfer_syntax)


def expected_affine(
    spacing: Sequence[float] = (0.8, 0.8, 2.0),
    origin: Sequence[float] = (-100.0, -120.0, 40.0),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
) -> np.ndarray:
    """The RAS+ affine of a series `dicom_series` wrote with these arguments (nibabel's convention).

    For an X-ray: `expected_affine((sx, sy, 1.0), (0, 0, 0))`.
    """
    row, column = np.asarray(row_direction, float), np.asarray(column_direction, float)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[0]
    lps[:3, 1] = column * spacing[1]
    lps[:3, 2] = np.cross(row, column) * spacing[2]
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _stored_pixels(volume: np.ndarray, signed: bool, bits_stored: int) -> np.ndarray:
    """The volume as 16-bit stored values, checked against the range `bits_stored` allows."""
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if volume.size and (volume.min() < low or volume.max() > high):
        raise ValueError(f"values {volume.min()}..{volume.max()} do not fit {bits_stored} bits stored")
    return volume.astype(np.int16 if signed else np.uint16)


def _common_dataset(
    stored: np.ndarray, bits_stored: int, signed: bool, modality: str, patient_id: str, study_uid: str, series_uid: str
) -> Dataset:
    """The attributes every file of a series shares: patient, study, series and pixel format."""
    dataset = Dataset()
    dataset.PatientID = patient_id
    dataset.PatientName = patient_id
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = _uid(series_uid, "frame of reference")
    dataset.SeriesNumber = 1
    dataset.Modality = modality
    dataset.Columns, dataset.Rows = stored.shape[0], stored.shape[1]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = int(signed)
    return dataset


def _slice_dataset(
    common: Dataset,
    index: int,
    position: np.ndarray,
    orientation: list[float],
    pixel_spacing: list[float],
    slice_spacing: float,
    rescale: tuple[float, float] | None,
    seed: str,
) -> Dataset:
    dataset = copy.deepcopy(common)
    dataset.SOPClassUID = SINGLE_FRAME_CLASSES.get(dataset.Modality, SecondaryCaptureImageStorage)
    dataset.SOPInstanceUID = _uid(seed, f"slice {index}")
    dataset.InstanceNumber = index + 1
    dataset.ImagePositionPatient = _decimals(position)
    dataset.ImageOrientationPatient = _decimals(orientation)
    dataset.PixelSpacing = _decimals(pixel_spacing)
    dataset.SliceThickness = _decimal(slice_spacing)
    dataset.SliceLocation = _decimal(float(position @ np.cross(orientation[:3], orientation[3:])))
    _set_rescale(dataset, rescale)
    return dataset


def _multiframe_dataset(
    common: Dataset,
    frames: int,
    positions: list[np.ndarray],
    orientation: list[float],
    pixel_spacing: list[float],
    slice_spacing: float,
    rescale: tuple[float, float] | None,
    seed: str,
) -> Dataset:
    """An enhanced multi-frame image: shared orientation, spacing and rescale; a position per frame."""
    dataset = copy.deepcopy(common)
    dataset.SOPClassUID = MULTI_FRAME_CLASSES.get(dataset.Modality, DEFAULT_MULTI_FRAME_CLASS)
    dataset.SOPInstanceUID = _uid(seed, "multiframe")
    dataset.InstanceNumber = 1
    dataset.NumberOfFrames = frames
    shared = Dataset()
    measures = _item(PixelSpacing=_decimals(pixel_spacing), SliceThickness=_decimal(slice_spacing))
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=_decimals(orientation))])
    if rescale is not None:
        slope, intercept = rescale
        transformation = _item(RescaleSlope=_decimal(slope), RescaleIntercept=_decimal(intercept), RescaleType="US")
        shared.PixelValueTransformationSequence = DicomSequence([transformation])
    dataset.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence(
        _item(
            PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=_decimals(position))]),
            FrameContentSequence=DicomSequence([_item(InStackPositionNumber=k + 1)]),
        )
        for k, position in enumerate(positions)
    )
    return dataset


def _set_rescale(dataset: Dataset, rescale: tuple[float, float] | None) -> None:
    if rescale is not None:
        dataset.RescaleSlope = _decimal(rescale[0])
        dataset.RescaleIntercept = _decimal(rescale[1])
        dataset.RescaleType = "HU" if dataset.Modality == "CT" else "US"


def _pixel_bytes(stored: np.ndarray, transfer_syntax: str) -> bytes:
    """Frames (axis 2) of rows (axis 1) of pixels (axis 0), in the transfer syntax's byte order."""
    frames = np.ascontiguousarray(stored.transpose(2, 1, 0))
    return frames.astype(frames.dtype.newbyteorder(">" if transfer_syntax == ExplicitVRBigEndian else "<")).tobytes()


def _file_bytes(dataset: Dataset, transfer_syntax: str) -> bytes:
    """The dataset as a DICOM file (preamble, file meta) in `transfer_syntax`."""
    if transfer_syntax == RLELossless:
        dataset.file_meta = _file_meta(dataset, UID(ExplicitVRLittleEndian))
        dataset.compress(RLELossless, encoding_plugin="pydicom")
    dataset.file_meta = _file_meta(dataset, UID(transfer_syntax))
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _file_meta(dataset: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _decimal(value: float) -> str:
    """A DS value: up to 16 characters, the shortest exact form when there is one."""
    text = repr(float(value))
    return text if len(text) <= 16 else f"{value:.10g}"


def _decimals(values) -> list[str]:
    return [_decimal(value) for value in values]


def _seed(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return digest.hexdigest()


def _uid(seed: str, purpose: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[seed, purpose])


def dicom_series_on_grid(volume: np.ndarray, affine: np.ndarray, **options) -> list[tuple[str, bytes]]:
    """`volume` (2D or 3D, stored values) as a DICOM series lying on the voxel grid `affine`
    (RAS+, as a label map's): the image a label made on that grid was drawn on.

    The slices are stacked along row x column; where the grid's third axis runs the other
    way, they are written from its last slice back, so a reader puts them on the same
    grid with that axis reversed. Other keyword arguments go to `dicom_series`.
    """
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float)
    stack = volume[:, :, np.newaxis] if volume.ndim == 2 else volume
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, column = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    origin = lps[:3, 3]
    if np.dot(np.cross(row, column), lps[:3, 2]) < 0:
        stack = stack[:, :, ::-1]
        origin = origin + (stack.shape[2] - 1) * lps[:3, 2]
    return dicom_series(
        np.ascontiguousarray(stack),
        spacing=tuple(spacing),
        origin=tuple(origin),
        row_direction=tuple(row),
        column_direction=tuple(column),
        **options,
    )
