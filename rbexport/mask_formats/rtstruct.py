"""RT-STRUCT masks (`mask_format = rtstruct`, SPEC 7): one RT Structure Set per annotated series.

Radiotherapy planning systems read structures as contours. A series' structure set
references the DICOM images its `items` name (only their headers are read, ahead of
time, as for DICOM SEG): their Frame of Reference and Series Instance UIDs, every image
in `ReferencedFrameOfReferenceSequence`, and for every contour the SOP Instance UID (and
frame, in a multi-frame image) of the slice it lies on; patient and study attributes are
the images'. The label map is put on the images' grid as DICOM SEG puts it (axis order
and flips only; any other difference fails the task with both grids named).

- ROIs: one per instance with voxels (`ROINumber` the instance id), or one per category
  number in a semantic export; `ROIName` the category; `ROIDisplayColor` the taxonomy's
  colour, else the palette's; `RTROIInterpretedType` the taxonomy's
  `rtRoiInterpretedType` for the category, else ORGAN. Overlapping instances are simply
  separate ROIs. Each segmentMap entry with an ROI gets its `roiNumber` in tasks.json.
- Contours: CLOSED_PLANAR, on the voxel boundary (rbexport.mask_formats.contours), so an
  even-odd fill at pixel centres gives the mask back voxel for voxel; in patient
  coordinates from each slice's own ImagePositionPatient, its orientation and its
  (row, column) pixel spacing; DS values of at most 16 characters.
- UIDs are derived from the source series and the file's path in the export (exporting
  again replaces the object in a PACS); no creation date or time is written, so the same
  source gives the same bytes.

Written with pydicom: highdicom has no RT Structure Set; rt-utils 1.2.7 (the SDK's) swaps
row and column spacing and puts its contours through the boundary voxels' centres.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from ..errors import TaskDataError
from ..images.dicom import SeriesHeaders
from ..nifti import LabelMap
from ..options import ExportOptions
from ..structures import SeriesExport
from ..structures.masks import VoxelIndex
from ..taxonomy import ROI_TYPE_FIELD as ROI_TYPE_FIELD  # where the taxonomy is parsed (re-exported)
from ..taxonomy import taxonomy_roi_types as taxonomy_roi_types
from .base import COLOURS, ROI_TYPES, Encoded, MaskWriter, SeriesJob, SourceExtras
from .colours import RGB, colour_of
from .contours import boundary_loops
from .dicom_seg import PATIENT_AND_STUDY, UID_PREFIX
from .seg_frames import located_voxels, on_image_grid
from .segments import Segment, numbered_entry, plan_segments

NEEDED_BY = "an RT Structure Set"
MANUFACTURER = "rbexport"
SERIES_NUMBER = 301  # beside the images' and a DICOM SEG's (300)
DEFAULT_INTERPRETED_TYPE = "ORGAN"
# The structure set's sequences, written as bytes (Implicit VR Little Endian: every length 32 bits, so a long
# contour's ContourData never meets Explicit VR's 64 kB limit for DS).
REFERENCED_FRAME_OF_REFERENCE_SEQUENCE = 0x30060010
RT_REFERENCED_STUDY_SEQUENCE = 0x30060012
RT_REFERENCED_SERIES_SEQUENCE = 0x30060014
STRUCTURE_SET_ROI_SEQUENCE = 0x30060020
ROI_NUMBER = 0x30060022
REFERENCED_FRAME_OF_REFERENCE_UID = 0x30060024
ROI_NAME = 0x30060026
ROI_GENERATION_ALGORITHM = 0x30060036
FRAME_OF_REFERENCE_UID = 0x00200052
SERIES_INSTANCE_UID = 0x0020000E
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # the SOP class RTReferencedStudySequence names
ROI_CONTOUR_SEQUENCE = 0x30060039
RT_ROI_OBSERVATIONS_SEQUENCE = 0x30060080
ROI_DISPLAY_COLOR = 0x3006002A
CONTOUR_SEQUENCE = 0x30060040
REFERENCED_ROI_NUMBER = 0x30060084
CONTOUR_IMAGE_SEQUENCE = 0x30060016
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155
REFERENCED_FRAME_NUMBER = 0x00081160
CONTOUR_GEOMETRIC_TYPE = 0x30060042
NUMBER_OF_CONTOUR_POINTS = 0x30060046
CONTOUR_NUMBER = 0x30060048
CONTOUR_DATA = 0x30060050
OBSERVATION_NUMBER = 0x30060082
RT_ROI_INTERPRETED_TYPE = 0x300600A4
ROI_INTERPRETER = 0x300600A6
ITEM = 0xFFFEE000
DS_CHARACTERS = 16
MAX_DECIMALS = 4  # a tenth of a micrometre: far below any pixel, and a third shorter than pydicom's
_NOT_IN_LO = re.compile(r"[\\\x00-\x1f\x7f]")


class RtStructWriter(MaskWriter):
    name = "rtstruct"
    file_suffix = ".dcm"
    needs_dicom = NEEDED_BY
    needs = frozenset({COLOURS, ROI_TYPES})

    def working_memory(self, series: dict, voxels: int, options: ExportOptions) -> int:
        return voxels  # at most a byte a voxel: one ROI's box at a time

    def encode_series(self, job: SeriesJob) -> tuple[SeriesExport, Encoded]:
        """The series as one RT Structure Set (its instances or categories as ROIs): its entry and its file."""
        export, extras = job.export, job.extras
        rois = plan_segments(
            job.instances,
            job.index,
            job.options.semantic_mask,
            extras.category_numbers,
        )
        path = job.paths.label_map
        entry = structure_set_entry(export.series, path if rois else None, rois)
        if not rois:
            return SeriesExport(entry, [], [*export.warnings, "no annotated voxels: no RT Structure Set written"]), ()
        data = encode_structure_set(
            rois, job.index, job.label_map, job.headers(), job.name, job.uid_seed, extras.colours, extras.roi_types
        )
        return SeriesExport(entry, [], export.warnings), ((path, data),)

    def written_with(self, extras: SourceExtras) -> dict | None:
        """A structure set holds the taxonomy's colours and ROI types."""
        return {"colours": extras.colours, "roi_types": extras.roi_types}


def structure_set_entry(entry: dict, path: str | None, rois: Sequence[Segment]) -> dict:
    """A series' tasks.json entry once its masks are the ROIs of one structure set at `path`:
    each segmentMap entry with an ROI gets its `roiNumber` (numbered_entry)."""
    return numbered_entry(entry, path, {roi.key: int(roi.key) for roi in rois}, "roiNumber")


def encode_structure_set(
    rois: Sequence[Segment],
    index: VoxelIndex,
    label_map: LabelMap,
    headers: SeriesHeaders,
    series: str,
    uid_seed: str,
    colours: Mapping[str, RGB] | None = None,
    roi_types: Mapping[str, str] | None = None,
) -> bytes:
    """The RT Structure Set file of one series: `rois` of `label_map`, as contours on the
    grid of the images `headers` describe."""
    if label_map.values.ndim > 3:
        raise TaskDataError(f"series {series}: an RT Structure Set holds 2D or 3D masks, and this label map is 4D")
    geometry = _SliceGeometry(headers, series)
    first = headers.datasets[0]
    dataset = _top_level(first, headers, series, uid_seed)
    frame_of_reference = str(first.FrameOfReferenceUID)
    structure_rois, contour_rois, observations = [], [], []
    for position, (roi, voxels) in enumerate(
        zip(rois, _roi_voxels(rois, label_map, headers, index, series), strict=True)
    ):
        number = int(roi.key)
        structure_rois.append(
            _element(ROI_NUMBER, _text(str(number)))
            + _element(REFERENCED_FRAME_OF_REFERENCE_UID, _uid(frame_of_reference))
            + _element(ROI_NAME, _text(_roi_name(roi)))
            + _element(ROI_GENERATION_ALGORITHM, _text("MANUAL"))
        )
        colour = "\\".join(str(part) for part in colour_of(roi.category, number, colours))
        contour_rois.append(
            _element(ROI_DISPLAY_COLOR, _text(colour))
            + _sequence(CONTOUR_SEQUENCE, geometry.contours(voxels))
            + _element(REFERENCED_ROI_NUMBER, _text(str(number)))
        )
        interpreted = (roi_types or {}).get(roi.category or "", DEFAULT_INTERPRETED_TYPE)
        observations.append(
            _element(OBSERVATION_NUMBER, _text(str(position + 1)))
            + _element(REFERENCED_ROI_NUMBER, _text(str(number)))
            + _element(RT_ROI_INTERPRETED_TYPE, _text(interpreted))
            + _element(ROI_INTERPRETER, b"")
        )
    series_reference = _element(SERIES_INSTANCE_UID, _uid(str(first.SeriesInstanceUID))) + _sequence(
        CONTOUR_IMAGE_SEQUENCE, geometry.every_image()
    )
    study_reference = (
        _element(REFERENCED_SOP_CLASS_UID, _uid(STUDY_COMPONENT_MANAGEMENT))
        + _element(REFERENCED_SOP_INSTANCE_UID, _uid(str(first.StudyInstanceUID)))
        + _sequence(RT_REFERENCED_SERIES_SEQUENCE, [series_reference])
    )
    frame_reference = _element(FRAME_OF_REFERENCE_UID, _uid(frame_of_reference)) + _sequence(
        RT_REFERENCED_STUDY_SEQUENCE, [study_reference]
    )
    stream = BytesIO()
    dataset.save_as(stream, enforce_file_format=True)
    # The structure set's sequences, after every other element (their tags sort them last), as bytes.
    return (
        stream.getvalue()
        + _sequence(REFERENCED_FRAME_OF_REFERENCE_SEQUENCE, [frame_reference])
        + _sequence(STRUCTURE_SET_ROI_SEQUENCE, structure_rois)
        + _sequence(ROI_CONTOUR_SEQUENCE, contour_rois)
        + _sequence(RT_ROI_OBSERVATIONS_SEQUENCE, observations)
    )


def _roi_name(roi: Segment) -> str:
    """The category as an LO value: no backslash (a value separator) or control characters, 64 at most."""
    return _NOT_IN_LO.sub(" ", roi.category or f"ROI {roi.key}")[:64]


def _top_level(first: Dataset, headers: SeriesHeaders, series: str, uid_seed: str) -> Dataset:
    """Patient, study, RT series, equipment, structure set and SOP common attributes."""
    source_series = str(first.get("SeriesInstanceUID", ""))
    instance_uid = generate_uid(UID_PREFIX, [source_series, uid_seed, "rtstruct instance"])
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = instance_uid
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SOPClassUID = RTStructureSetStorage
    dataset.SOPInstanceUID = instance_uid
    for keyword in PATIENT_AND_STUDY:
        setattr(dataset, keyword, first.get(keyword, ""))
    dataset.StudyInstanceUID = str(first.StudyInstanceUID)
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = generate_uid(UID_PREFIX, [source_series, uid_seed, "rtstruct series"])
    dataset.SeriesNumber = SERIES_NUMBER
    dataset.SeriesDescription = f"{series} structures"[:64]
    dataset.OperatorsName = ""
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = MANUFACTURER
    dataset.FrameOfReferenceUID = str(first.FrameOfReferenceUID)
    dataset.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = "rbexport"
    dataset.StructureSetName = series[:64]
    dataset.StructureSetDate = ""
    dataset.StructureSetTime = ""
    return dataset


class _SliceGeometry:
    """Where each slice of the images' grid lies (patient coordinates) and which image it is."""

    def __init__(self, headers: SeriesHeaders, series: str) -> None:
        first = headers.datasets[0]
        if "FrameOfReferenceUID" not in first or "StudyInstanceUID" not in first:
            raise TaskDataError(
                f"series {series}: its DICOM images have no Frame of Reference (or Study Instance) UID; "
                f"{NEEDED_BY} places contours in the patient coordinates they define"
            )
        self.headers = headers
        lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(headers.affine, float)[:3, :]
        self.column_step = lps[:, 0]  # one column along a row: row direction x column spacing
        self.row_step = lps[:, 1]  # one row down: column direction x row spacing
        self._references: dict[int, bytes] = {}
        self.origins = np.array([self._position(file, frame, series) for file, frame in headers.slices])
        self.decimals = _decimals(np.abs(self.origins).max() + np.abs(lps[:, :2]).sum() * max(headers.shape[:2]))

    def _position(self, file: int, frame: int, series: str) -> np.ndarray:
        """ImagePositionPatient of a slice: its per-frame group's (multi-frame), else its file's."""
        dataset = self.headers.datasets[file]
        value = None
        for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            groups = dataset.get(sequence)
            if groups:
                group = groups[frame if sequence.startswith("PerFrame") else 0]
                plane = group.get("PlanePositionSequence")
                if plane and "ImagePositionPatient" in plane[0]:
                    value = plane[0].ImagePositionPatient
                    break
        if value is None:
            value = dataset.get("ImagePositionPatient")
        if value is None or len(value) != 3:
            raise TaskDataError(
                f"series {series}: a DICOM image without ImagePositionPatient; {NEEDED_BY} needs every slice's position"
            )
        return np.array([float(number) for number in value])

    def _reference(self, slice_index: int) -> bytes:
        """The Contour Image Sequence of a contour on slice `slice_index`, encoded (made once per slice)."""
        if slice_index not in self._references:
            file, frame = self.headers.slices[slice_index]
            dataset = self.headers.datasets[file]
            item = _element(REFERENCED_SOP_CLASS_UID, _uid(str(dataset.SOPClassUID)))
            item += _element(REFERENCED_SOP_INSTANCE_UID, _uid(str(dataset.SOPInstanceUID)))
            if int(dataset.get("NumberOfFrames") or 1) > 1:
                item += _element(REFERENCED_FRAME_NUMBER, _text(str(frame + 1)))
            self._references[slice_index] = _sequence(CONTOUR_IMAGE_SEQUENCE, [item])
        return self._references[slice_index]

    def every_image(self) -> list[bytes]:
        """A Contour Image Sequence item per image file (a multi-frame image once)."""
        files = sorted({file for file, _ in self.headers.slices})
        return [
            _element(REFERENCED_SOP_CLASS_UID, _uid(str(self.headers.datasets[file].SOPClassUID)))
            + _element(REFERENCED_SOP_INSTANCE_UID, _uid(str(self.headers.datasets[file].SOPInstanceUID)))
            for file in files
        ]

    def contours(self, voxels: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[bytes]:
        """The Contour Sequence items of one ROI's voxels ((column, row, slice) on the images' grid), encoded."""
        columns, rows, slices = voxels
        low = (int(slices.min()), int(rows.min()), int(columns.min()))
        box = np.zeros(
            (int(slices.max()) - low[0] + 1, int(rows.max()) - low[1] + 1, int(columns.max()) - low[2] + 1), bool
        )
        box[slices - low[0], rows - low[1], columns - low[2]] = True
        loops = boundary_loops(box)
        slice_of = np.repeat(loops.slices, np.diff(loops.bounds)) + low[0]
        points = (
            self.origins[slice_of]
            + np.outer(loops.columns + low[2], self.column_step)
            + np.outer(loops.rows + low[1], self.row_step)
        )
        sizes = np.diff(loops.bounds).tolist()
        data = _decimal_strings(points.ravel(), self.decimals, [3 * size for size in sizes])
        return [
            self._reference(int(slice_index) + low[0])
            + _element(CONTOUR_GEOMETRIC_TYPE, _text("CLOSED_PLANAR"))
            + _element(NUMBER_OF_CONTOUR_POINTS, _text(str(size)))
            + _element(CONTOUR_NUMBER, _text(str(number)))
            + _element(CONTOUR_DATA, value)
            for number, (slice_index, size, value) in enumerate(
                zip(loops.slices.tolist(), sizes, data, strict=True), start=1
            )
        ]


def _roi_voxels(
    rois: Sequence[Segment], label_map: LabelMap, headers: SeriesHeaders, index: VoxelIndex, series: str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each ROI's voxels as (column, row, slice) on the images' grid: a sparse 3D map's from
    its index's positions, any other's by looking its values up on the grid."""
    on_grid = on_image_grid(label_map, headers, series)  # a view; TaskDataError off the images' grid
    located = located_voxels(rois, label_map, headers, index)
    if located is not None:
        return [(column, row, slice_index) for column, row, slice_index in located]
    if on_grid.ndim == 2:
        on_grid = on_grid[:, :, np.newaxis]
    found = []
    for roi in rois:
        members = np.zeros(int(on_grid.max()) + 1, dtype=bool)
        members[[value for value in roi.values if value < members.size]] = True
        column, row, slice_index = np.nonzero(members[on_grid])
        found.append((column, row, slice_index))
    return found


def _decimals(largest: float) -> int:
    """Decimals of a coordinate in mm so that every value fits DS's 16 characters (sign and point included)."""
    digits = len(str(int(largest)))
    if digits > DS_CHARACTERS - 3:  # a sign, a point and a decimal besides
        raise TaskDataError(f"contour coordinates of {largest:.0f} mm do not fit DICOM's 16-character decimals")
    return min(MAX_DECIMALS, DS_CHARACTERS - 2 - digits)


def _decimal_strings(values: np.ndarray, decimals: int, counts: Sequence[int]) -> list[bytes]:
    """DS values of `counts` numbers each (the contours of one ROI), fixed point at `decimals`
    places, written by numpy: every number a row of characters filled from its last digit,
    then the padding taken out (Python's formatting of the CT task's 350,000 coordinates took
    longer than tracing its contours)."""
    scaled = np.rint(values * 10.0**decimals).astype(np.int64)
    magnitude = np.abs(scaled)
    chars = np.full((magnitude.size, DS_CHARACTERS + 1), ord(" "), dtype=np.uint8)  # and a separator
    column = DS_CHARACTERS - 1
    for _ in range(decimals):
        chars[:, column] = ord("0") + magnitude % 10
        magnitude //= 10
        column -= 1
    chars[:, column] = ord(".")
    column -= 1
    chars[:, column] = ord("0") + magnitude % 10  # at least one digit before the point
    magnitude //= 10
    while magnitude.any():
        column -= 1
        more = magnitude > 0
        chars[more, column] = ord("0") + magnitude[more] % 10
        magnitude //= 10
    negative = np.flatnonzero(scaled < 0)
    first_digit = (chars[negative, :DS_CHARACTERS] != ord(" ")).argmax(axis=1)
    chars[negative, first_digit - 1] = ord("-")
    chars[:, DS_CHARACTERS] = ord("\\")
    kept = chars != ord(" ")
    text = chars[kept].tobytes()
    ends = np.cumsum(kept.sum(axis=1))[np.cumsum(counts) - 1].tolist()  # after each value's last separator
    starts = [0, *ends[:-1]]
    return [_padded(text[start : end - 1]) for start, end in zip(starts, ends, strict=True)]


def _padded(raw: bytes) -> bytes:
    return raw + b" " if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    """A text value (CS, DS, IS, LO in UTF-8: the file's ISO_IR 192), padded with a space to an even length."""
    raw = value.encode("utf-8")
    return raw + b" " if len(raw) % 2 else raw


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _element(tag: int, value: bytes) -> bytes:
    """One element in Implicit VR Little Endian: tag, 32-bit length, value."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _sequence(tag: int, items: Sequence[bytes]) -> bytes:
    return _element(tag, b"".join(_element(ITEM, item) for item in items))
