"""Runs the RedBrick SDK's RT-STRUCT converter on one series, for comparison. Runs in the SDK's own venv.

    python sdk_rtstruct_peer.py job.json   ->   prints {"seconds": [...], "rois": n}

job.json: {"nifti": path, "dicom": folder, "categories": [...], "segment_map": {...}, "runs": n}
Each run is what `redbrick export --rt-struct` does for a series:
`redbrick.utils.rt_struct.convert_nii_to_rt_struct` (rt-utils 1.2.7: it reads the DICOM
series, one ROI per label value) and saving the structure set.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from redbrick.utils.rt_struct import convert_nii_to_rt_struct

# rt-utils reads these from the images and fails without them (the generated series has none).
STUDY_ATTRIBUTES = {
    "StudyDate": "20260101",
    "StudyTime": "120000",
    "StudyDescription": "",
    "StudyID": "1",
    "SeriesDate": "20260101",
    "SeriesTime": "120000",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "PatientAge": "",
    "PatientSize": "",
    "PatientWeight": "",
    "SeriesDescription": "",
}


def images_with_study_attributes(folder: Path, into: Path) -> None:
    """A copy of the series with the attributes rt-utils needs (not timed)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        dataset = pydicom.dcmread(path)
        for keyword, value in STUDY_ATTRIBUTES.items():
            if keyword not in dataset:
                setattr(dataset, keyword, value)
        dataset.save_as(into / path.name)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    seconds, rois = [], 0
    dicom = Path(tempfile.mkdtemp(prefix="sdk-rtstruct-images-"))
    images_with_study_attributes(Path(job["dicom"]), dicom)
    for _ in range(job["runs"]):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            rtstruct, _ = convert_nii_to_rt_struct(
                [job["nifti"]], str(dicom), job["categories"], job["segment_map"], False, False
            )
            if rtstruct is None:
                raise SystemExit("the SDK's converter returned nothing")
            rtstruct.save(str(Path(folder) / "rtstruct.dcm"))
            seconds.append(time.perf_counter() - started)
            rois = len(rtstruct.ds.StructureSetROISequence)
    shutil.rmtree(dicom, ignore_errors=True)
    print(json.dumps({"seconds": seconds, "rois": rois}))


if __name__ == "__main__":
    main()
