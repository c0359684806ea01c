"""An independent reader of RT Structure Sets for the tests: even-odd fill at pixel centres.

Nothing here comes from rbexport. Each contour is matched to the image its
ContourImageSequence names; that image's own geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, per frame for a multi-frame image) gives every
pixel centre in patient coordinates; contour and centres are projected on the image plane
and a centre is inside when a ray from it crosses the contour an odd number of times. The
contours of one image are combined by XOR (a contour inside another is a hole), as
planning systems and dcmrtstruct2nii fill them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom


@dataclass
class Plane:
    """One image (or one frame of a multi-frame image) as a reader sees it."""

    sop_instance_uid: str
    frame: int | None  # 1-based, for multi-frame images
    position: np.ndarray  # LPS mm of the first pixel's centre
    row_direction: np.ndarray  # along a row (increasing column)
    column_direction: np.ndarray  # down a column (increasing row)
    between_rows: float
    between_columns: float
    rows: int
    columns: int

    def centres(self) -> np.ndarray:
        """(rows, columns, 3) patient coordinates of every pixel centre."""
        r, c = np.mgrid[0 : self.rows, 0 : self.columns]
        return (
            self.position
            + c[..., None] * self.between_columns * self.row_direction
            + r[..., None] * self.between_rows * self.column_direction
        )


def planes_of(images: list[pydicom.Dataset]) -> dict[tuple[str, int | None], Plane]:
    """Every plane of a series' images, by (SOP Instance UID, frame number or None)."""
    planes = {}
    for image in images:
        frames = int(image.get("NumberOfFrames") or 1)
        for index in range(frames):
            if frames > 1:
                group = image.PerFrameFunctionalGroupsSequence[index]
                shared = image.SharedFunctionalGroupsSequence[0]
                position = group.PlanePositionSequence[0].ImagePositionPatient
                orientation = (group.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[
                    0
                ].ImageOrientationPatient
                spacing = (group.get("PixelMeasuresSequence") or shared.PixelMeasuresSequence)[0].PixelSpacing
                key = (str(image.SOPInstanceUID), index + 1)
            else:
                position, orientation, spacing = (
                    image.ImagePositionPatient,
                    image.ImageOrientationPatient,
                    image.PixelSpacing,
                )
                key = (str(image.SOPInstanceUID), None)
            planes[key] = Plane(
                key[0],
                key[1],
                np.array(position, float),
                np.array(orientation[:3], float),
                np.array(orientation[3:], float),
                float(spacing[0]),
                float(spacing[1]),
                int(image.Rows),
                int(image.Columns),
            )
    return planes


def even_odd(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Whether each of `points` (..., 2) lies inside `polygon` (n, 2), by ray crossings."""
    x, y = points[..., 0], points[..., 1]
    inside = np.zeros(x.shape, bool)
    following = np.roll(polygon, -1, axis=0)
    for (x0, y0), (x1, y1) in zip(polygon, following, strict=True):
        straddles = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= straddles & (x < crossing)
    return inside


def roi_masks(structure_set: pydicom.Dataset, images: list[pydicom.Dataset]) -> dict[int, dict]:
    """Each ROI's filled pixels: {ROINumber: {(SOP Instance UID, frame): bool (rows, columns)}}.

    Checks on the way what every reader relies on: CLOSED_PLANAR contours of at least
    three points, lying on the plane of the image they name."""
    planes = planes_of(images)
    masks: dict[int, dict] = {}
    for roi in structure_set.ROIContourSequence:
        filled: dict = {}
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            [reference] = contour.ContourImageSequence
            frame = reference.get("ReferencedFrameNumber")
            plane = planes[(str(reference.ReferencedSOPInstanceUID), None if frame is None else int(frame))]
            points = np.array(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints) >= 3
            normal = np.cross(plane.row_direction, plane.column_direction)
            assert np.allclose((points - plane.position) @ normal, 0, atol=1e-3), "a contour off its image's plane"
            basis = np.stack([plane.row_direction, plane.column_direction], axis=1)
            polygon = (points - plane.position) @ basis
            centres = (plane.centres() - plane.position) @ basis
            key = (plane.sop_instance_uid, plane.frame)
            filled[key] = filled.get(key, np.zeros((plane.rows, plane.columns), bool)) ^ even_odd(polygon, centres)
        masks[int(roi.ReferencedROINumber)] = filled
    return masks


def label_under_planes(
    mask: np.ndarray, affine: np.ndarray, images: list[pydicom.Dataset]
) -> dict[tuple[str, int | None], np.ndarray]:
    """The label-map voxels (RAS affine, NIfTI axes) under every pixel centre of every plane."""
    volume = mask[:, :, None] if mask.ndim == 2 else mask
    inverse = np.linalg.inv(affine)
    under = {}
    for key, plane in planes_of(images).items():
        lps = plane.centres()
        ras = np.stack([-lps[..., 0], -lps[..., 1], lps[..., 2], np.ones(lps.shape[:2])], axis=-1)
        ijk = np.rint(ras @ inverse.T)[..., :3].astype(int)
        assert (ijk >= 0).all() and (ijk < volume.shape).all(), "an image pixel off the label's grid"
        under[key] = volume[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
    return under


def off_pixel_corners(structure_set: pydicom.Dataset, images: list[pydicom.Dataset]) -> int:
    """How many contour points are not at a pixel corner (half-way between pixel centres, in
    both directions) of the image they name: 0 when the contours follow the voxel boundary."""
    planes = planes_of(images)
    off = 0
    for roi in structure_set.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            [reference] = contour.ContourImageSequence
            frame = reference.get("ReferencedFrameNumber")
            plane = planes[(str(reference.ReferencedSOPInstanceUID), None if frame is None else int(frame))]
            relative = np.array(contour.ContourData, float).reshape(-1, 3) - plane.position
            columns = relative @ plane.row_direction / plane.between_columns
            rows = relative @ plane.column_direction / plane.between_rows
            for coordinate in (columns, rows):
                off += int((np.abs(coordinate - np.floor(coordinate) - 0.5) > 1e-3).sum())
    return off
