"""Read rbexport's RT Structure Sets with dcmrtstruct2nii and dicom3tools (in .venv-rtstruct).

    .venv-rtstruct/bin/python tests/real_clients/check_rtstruct.py OUT/manifest.json

For every structure set make_rtstruct.py listed, dcmrtstruct2nii (pydicom 2, SimpleITK,
scikit-image's even-odd polygon fill, contours XORed) turns each ROI back into a mask on
the DICOM series' grid; it must equal, voxel for voxel, the NIfTI export's file of that
instance (resampled onto the series' grid by nearest neighbour, i.e. only reoriented).
Then dicom3tools' dciodvfy validates every file, when it is installed. Exits 1 on any
mismatch or dciodvfy error.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from dcmrtstruct2nii.adapters.convert.rtstructcontour2mask import DcmPatientCoords2Mask
from dcmrtstruct2nii.adapters.input.contours.rtstructinputadapter import RtStructInputAdapter
from dcmrtstruct2nii.adapters.input.image.dcminputadapter import DcmInputAdapter


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> int:
    logging.disable(logging.INFO)
    manifest = json.loads(open(sys.argv[1]).read())
    mismatches = structures = 0
    for entry in manifest:
        image = DcmInputAdapter().ingest(entry["dicom"])
        rois = {str(roi["roi_number"]): roi for roi in RtStructInputAdapter().ingest(entry["rtstruct"])}
        assert set(rois) == set(entry["masks"]), (entry["rtstruct"], sorted(rois), sorted(entry["masks"]))
        for number, path in sorted(entry["masks"].items(), key=lambda item: int(item[0])):
            filled = DcmPatientCoords2Mask().convert(rois[number]["sequence"], image, 0, 1)
            filled.CopyInformation(image)
            expected = sitk.ReadImage(path)
            got = sitk.GetArrayFromImage(filled) != 0
            if expected.GetDimension() == 2:  # a single image: the label lies on its grid as it is
                want = sitk.GetArrayFromImage(expected)[np.newaxis] != 0
            else:
                expected = sitk.Resample(expected, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                want = sitk.GetArrayFromImage(expected) != 0
            score = dice(got, want)
            different = int((got != want).sum())
            structures += 1
            mismatches += different != 0
            print(
                f"{entry['case']:>15} {entry['rtstruct'].split('/rt/')[-1]:<40} ROI {number:>2} "
                f"{rois[number]['name']:<8} voxels {int(want.sum()):>6}  dice {score:.4f}  differing {different}"
            )
    print(f"dcmrtstruct2nii: {structures} structures, {mismatches} not voxel for voxel")
    errors = 0
    if shutil.which("dciodvfy"):
        files = sorted({entry["rtstruct"] for entry in manifest})
        for path in files:
            result = subprocess.run(["dciodvfy", path], capture_output=True, text=True)
            lines = (result.stdout + result.stderr).splitlines()
            found = [line for line in lines if line.startswith("Error")]
            warned = [line for line in lines if line.startswith("Warning")]
            errors += len(found)
            for line in found + warned:
                print(f"dciodvfy {path.split('/rt/')[-1]}: {line}")
        print(f"dciodvfy: {len(files)} files, {errors} errors")
    else:
        print("dciodvfy: not installed (apt-get install dicom3tools); skipped")
    return 1 if mismatches or errors else 0


if __name__ == "__main__":
    sys.exit(main())
