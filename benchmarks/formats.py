"""Mask formats against NIfTI: `python -m benchmarks.formats [--runs N]` (or `python -m benchmarks --only formats`).

Inputs (generated once into benchmarks/.data/): the CT task of the other benchmarks
(512x512x300 uint16, 20 instances, 5 of them overlapping, so the standard structure writes
the label map and 20 instance files, and DICOM SEG is BINARY), with a 300-slice DICOM
series on its grid as its items; the same task with each overlap given to one instance
(no overlaps: one NIfTI file, and a LABELMAP SEG), both also as RT-STRUCT (20 ROIs of
contours on the voxel boundary); and 200 small 2D tasks (256x256, 3 instances) for PNG,
which is 2D only. Each figure is the median of `runs` exports of the standard structure
with the local engine and one worker, every format measured in the same run as its
NIfTI baseline; the peak RSS is the CLI's (`benchmarks.rss`), once per format.

With `--sdk`, the RedBrick SDK's RT-STRUCT converter (`redbrick export --rt-struct`: rt-utils
1.2.7) runs on the no-overlap CT series from its own venv (benchmarks/.sdk-venv, where
redbrick-sdk and rt-utils are installed if missing), against rbexport's rtstruct export of
the same task, medians of `runs` each.

DICOM SEG rows also vary `seg_type` and `seg_compression` (issue 22): the no-overlap CT
task as LABELMAP uncompressed, RLE Lossless and JPEG-LS Lossless, and as BINARY (the
overlapping task's BINARY cannot be compressed: 1-bit frames). The size is what the
export's segmentations/ folder holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
CT_WITH_IMAGES = DATA / "ct-with-dicom-1"
CT_NO_OVERLAP = DATA / "ct-no-overlap-with-dicom-1"
SMALL_2D = DATA / "small-2d-200"


def ct_with_images() -> Path:
    """The CT task, its DICOM series (zero-valued pixels: only headers matter) on its label's grid."""
    if (CT_WITH_IMAGES / "done").exists():
        return CT_WITH_IMAGES
    import numpy as np

    from benchmarks.data import CT_SHAPE, write_ct_project
    from rbexport.app.sample_images import dicom_series_on_grid

    shutil.rmtree(CT_WITH_IMAGES, ignore_errors=True)
    write_ct_project(CT_WITH_IMAGES, 1)
    tasks = json.loads((CT_WITH_IMAGES / "tasks.json").read_text())
    slices = dicom_series_on_grid(np.zeros(CT_SHAPE, np.int16), np.diag([0.7, 0.7, 1.25, 1.0]), patient_id="CT^BENCH")
    (CT_WITH_IMAGES / "images").mkdir()
    for name, raw in slices:
        (CT_WITH_IMAGES / "images" / name).write_bytes(raw)
    tasks[0]["series"][0]["items"] = [f"images/{name}" for name, _ in slices]
    (CT_WITH_IMAGES / "tasks.json").write_text(json.dumps(tasks))
    (CT_WITH_IMAGES / "done").touch()
    return CT_WITH_IMAGES


def ct_without_overlaps() -> Path:
    """The CT task with every overlap given to the earlier instance: a LABELMAP SEG (same images)."""
    if (CT_NO_OVERLAP / "done").exists():
        return CT_NO_OVERLAP
    import numpy as np

    from benchmarks.data import ct_label_map, nifti_gz

    source = ct_with_images()
    shutil.rmtree(CT_NO_OVERLAP, ignore_errors=True)
    shutil.copytree(source, CT_NO_OVERLAP)
    volume, segment_map = ct_label_map(seed=0)
    for group in np.unique(volume[volume >= 1000]):
        volume[volume == group] = group - 1000 - 1  # group 1000 + i: instances i - 1 and i overlap
    for entry in segment_map.values():
        entry.pop("overlappingGroups", None)
    (CT_NO_OVERLAP / "masks/ct-000.nii.gz").write_bytes(nifti_gz(volume))
    tasks = json.loads((CT_NO_OVERLAP / "tasks.json").read_text())
    tasks[0]["series"][0]["segmentMap"] = segment_map
    (CT_NO_OVERLAP / "tasks.json").write_text(json.dumps(tasks))
    return CT_NO_OVERLAP


def small_2d() -> Path:
    if not (SMALL_2D / "tasks.json").exists():
        from benchmarks.data import write_small_project

        shutil.rmtree(SMALL_2D, ignore_errors=True)
        write_small_project(SMALL_2D, 200)
    return SMALL_2D


# A row's format: its name in the table, the mask_format, and the other options (CLI flags alike).
Format = tuple[str, str, dict[str, str]]
NIFTI: Format = ("nifti", "nifti", {})
SEG: Format = ("dicom-seg", "dicom-seg", {})
RTSTRUCT: Format = ("rtstruct", "rtstruct", {})
SEG_VARIANTS: list[Format] = [
    ("dicom-seg rle", "dicom-seg", {"seg_compression": "rle"}),
    ("dicom-seg jpegls", "dicom-seg", {"seg_compression": "jpegls"}),
    ("dicom-seg binary", "dicom-seg", {"seg_type": "binary"}),
]


def export_seconds(source: Path, format: Format) -> tuple[float, int]:
    """Seconds of one export, and the bytes its segmentations/ folder holds."""
    from rbexport.engine import run_export
    from rbexport.options import ExportOptions

    name, mask_format, extra = format
    out = Path(tempfile.mkdtemp(prefix="rbexport-formats-bench-"))
    try:
        started = time.perf_counter()
        [report] = run_export(
            str(source), str(out), ExportOptions(mask_format=mask_format, **extra), incremental=False, workers=1
        )
        seconds = time.perf_counter() - started
        if not report.succeeded:
            raise RuntimeError(f"{name} export failed: {report.failures}")
        size = sum(path.stat().st_size for path in (out / "segmentations").rglob("*") if path.is_file())
        return seconds, size
    finally:
        shutil.rmtree(out, ignore_errors=True)


def peak_rss_mb(source: Path, format: Format) -> float:
    _, mask_format, extra = format
    out = Path(tempfile.mkdtemp(prefix="rbexport-formats-rss-"))
    try:
        command = [sys.executable, "-m", "benchmarks.rss", "run", "--source", str(source), "--dest", str(out)]
        command += ["--mask-format", mask_format, "--engine", "local", "--workers", "1", "--full"]
        for option, value in extra.items():
            command += [f"--{option.replace('_', '-')}", value]
        result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=HERE.parent)
        return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss"] / 1024**2
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_formats(runs: int = 3, only_seg: bool = False) -> list[list[str]]:
    """Rows: input, format, seconds, vs NIfTI, vs uncompressed SEG, size, peak RSS.
    `only_seg`: the no-overlap CT task's SEG rows (and their NIfTI baseline) alone."""
    inputs: list[tuple[str, Path, list[Format]]] = [
        ("CT, no overlaps (SEG LABELMAP)", ct_without_overlaps(), [NIFTI, SEG, *SEG_VARIANTS, RTSTRUCT]),
    ]
    if not only_seg:
        inputs.insert(0, ("CT, 5 overlaps (SEG BINARY)", ct_with_images(), [NIFTI, ("mhd", "mhd", {}), SEG, RTSTRUCT]))
        inputs.append(("200 2D tasks 256x256", small_2d(), [NIFTI, ("png", "png", {}), ("mhd", "mhd", {})]))
    rows = []
    for label, source, formats in inputs:
        export_seconds(source, SEG if SEG in formats else formats[1])  # warm imports and caches
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in formats}
        sizes: dict[str, int] = {}
        for _ in range(runs):  # interleaved, so a busy moment of the machine hits every format alike
            for format in formats:
                took, sizes[format[0]] = export_seconds(source, format)
                seconds[format[0]].append(took)
        medians = {name: statistics.median(times) for name, times in seconds.items()}
        for format in formats:
            name = format[0]
            versus_seg = f"{medians[name] / medians['dicom-seg']:.2f}x" if name.startswith("dicom-seg") else ""
            rows.append(
                [
                    label,
                    name,
                    f"{medians[name]:.2f}",
                    f"{medians[name] / medians['nifti']:.2f}x",
                    versus_seg,
                    f"{sizes[name] / 1024**2:.1f}",
                    f"{peak_rss_mb(source, format):.0f}",
                ]
            )
    return rows


def sdk_rtstruct(runs: int) -> list[list[str]]:
    """Rows: the SDK's RT-STRUCT converter and rbexport's rtstruct export of the no-overlap CT task."""
    import os

    from benchmarks.__main__ import SdkPeer

    peer = SdkPeer.install()
    if isinstance(peer, str):
        return [["CT, no overlaps", "SDK rt-utils", peer, "", ""]]
    if subprocess.run([str(peer.python), "-c", "import rt_utils"], capture_output=True).returncode:
        subprocess.run([str(peer.python), "-m", "pip", "install", "-q", "rt-utils"], check=True)
    source = ct_without_overlaps()
    task = json.loads((source / "tasks.json").read_text())[0]
    series = task["series"][0]
    job = {
        "nifti": str(source / series["segmentations"]),
        "dicom": str(source / "images"),
        "categories": json.loads((source / "taxonomy.json").read_text())["objectTypes"],
        "segment_map": series["segmentMap"],
        "runs": runs,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(job, handle)
    try:
        result = subprocess.run(
            [str(peer.python), str(HERE / "sdk_rtstruct_peer.py"), handle.name], capture_output=True, text=True
        )
    finally:
        os.unlink(handle.name)
    if result.returncode:
        raise RuntimeError(f"the SDK's RT-STRUCT converter failed: {result.stderr[-2000:]}")
    theirs = statistics.median(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])
    ours = statistics.median(export_seconds(source, RTSTRUCT)[0] for _ in range(runs))
    return [
        ["CT, no overlaps", "rtstruct (rbexport)", f"{ours:.2f}", "1.00x", ""],
        ["CT, no overlaps", "SDK --rt-struct (rt-utils 1.2.7)", f"{theirs:.2f}", f"{theirs / ours:.1f}x", ""],
    ]


HEADERS = ["input", "mask_format", "seconds", "vs nifti", "vs dicom-seg", "size MB", "peak RSS MB"]
TITLE = "Mask formats, standard structure, local engine, one worker (median seconds)"


def main() -> int:
    from benchmarks.__main__ import table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.formats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median); default 3")
    parser.add_argument(
        "--only-seg", action="store_true", help="only the DICOM SEG options (seg_type, seg_compression) of the CT task"
    )
    parser.add_argument("--sdk", action="store_true", help="also the SDK's RT-STRUCT converter (its own venv)")
    parser.add_argument("--only-sdk", action="store_true", help="only the SDK's RT-STRUCT comparison")
    arguments = parser.parse_args()
    if not arguments.only_sdk:
        print(table(TITLE, HEADERS, bench_formats(arguments.runs, arguments.only_seg)))
    if arguments.sdk or arguments.only_sdk:
        sdk_headers = ["input", "converter", "seconds", "vs rbexport", ""]
        print(
            table(
                "RT-STRUCT: rbexport against the SDK's converter (median seconds)",
                sdk_headers,
                sdk_rtstruct(arguments.runs),
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
