"""A DICOM series' voxel values: stored values rescaled as ITK/GDCM compute them, in the type that holds them.

Values are RescaleSlope * stored + RescaleIntercept, with the unused high bits of each
stored value cleared (signed values sign-extended from BitsStored) as GDCM does. The
output type holds every value of the series exactly: integer slopes and intercepts give
the smallest of int16 and int32 that holds the rescaled minimum and maximum (uint8 or
uint16 for unsigned pixels with no rescale; float64 beyond int32); any fractional slope
or intercept gives float32 (the double result rounded once).
"""

from __future__ import annotations

import numpy as np

from .dicom_frames import Frame


def rescaled_voxels(frames: list[Frame]) -> np.ndarray:
    """The rescaled frames, in order, as one (columns, rows, frames) array in Fortran order."""
    checked = [_significant_bits(frame) for frame in frames]
    dtype = _output_dtype(frames, checked)
    rows, columns = frames[0].stored.shape
    volume = np.empty((columns, rows, len(frames)), dtype=dtype, order="F")
    for index, (frame, (stored, _, _)) in enumerate(zip(frames, checked, strict=True)):
        _rescale_into(volume[:, :, index], stored.T, frame.slope, frame.intercept)
    return volume


def _significant_bits(frame: Frame) -> tuple[np.ndarray, int, int]:
    """The stored values, their minimum and maximum, with the bits above BitsStored cleared
    (unsigned) or sign-extended (signed) as GDCM does, when any is set."""
    stored = frame.stored
    low, high = int(stored.min()), int(stored.max())
    unused = stored.dtype.itemsize * 8 - frame.bits_stored
    if unused <= 0:
        return stored, low, high
    allowed_low, allowed_high = _stored_range(stored.dtype, frame.bits_stored)
    if allowed_low <= low and high <= allowed_high:
        return stored, low, high
    if stored.dtype.kind == "u":
        stored = stored & np.array(allowed_high, dtype=stored.dtype)
    else:
        stored = (stored << unused) >> unused
    return stored, int(stored.min()), int(stored.max())


def _stored_range(dtype: np.dtype, bits_stored: int) -> tuple[int, int]:
    if dtype.kind == "u":
        return 0, 2**bits_stored - 1
    return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1


def _output_dtype(frames: list[Frame], checked: list[tuple[np.ndarray, int, int]]) -> np.dtype:
    """The smallest type that holds every rescaled value exactly (see the module's docstring)."""
    if not all(float(frame.slope).is_integer() and float(frame.intercept).is_integer() for frame in frames):
        return np.dtype(np.float32)
    ends: list[int] = []
    plain_unsigned = True
    for frame, (stored, low, high) in zip(frames, checked, strict=True):
        slope, intercept = int(frame.slope), int(frame.intercept)
        ends += [low * slope + intercept, high * slope + intercept]
        plain_unsigned &= stored.dtype.kind == "u" and (slope, intercept) == (1, 0)
    candidates = (np.uint8, np.uint16, np.int16, np.int32) if plain_unsigned else (np.int16, np.int32)
    for candidate in candidates:
        limits = np.iinfo(candidate)
        if limits.min <= min(ends) and max(ends) <= limits.max:
            return np.dtype(candidate)
    return np.dtype(np.float64)


def _rescale_into(target: np.ndarray, stored: np.ndarray, slope: float, intercept: float) -> None:
    """target = stored * slope + intercept, exactly for integer targets, rounded once for float32."""
    if target.dtype.kind == "f":
        target[...] = stored * np.float64(slope) + np.float64(intercept)
        return
    # Integer arithmetic in the target type wraps around; since the result fits the
    # target, it is exact even when a stored value alone does not fit.
    target[...] = stored
    if slope != 1:
        np.multiply(target, np.array(int(slope)).astype(target.dtype), out=target)
    if intercept != 0:
        np.add(target, np.array(int(intercept)).astype(target.dtype), out=target)
