"""DICOM series to NIfTI: `python -m benchmarks.images [--runs N]`.

Input: a 512x512x300 CT series, one file per slice, int16 stored values with rescale
intercept -1024 (a body phantom with noise), generated once into benchmarks/.data/.
Each figure is the median of `runs` runs, on one core:

- floor: read every file's bytes, take its pixels with np.frombuffer into one volume,
  and ISA-L gzip (level 1) that volume: what any converter has to do at least;
- ours: read the bytes, `read_image_series`, `encode_nifti(compress=True)`;
- SimpleITK: ImageSeriesReader and ImageFileWriter (.nii.gz), one thread, for information;
- dcm2niix (internal zlib, level 1) and dicom2nifti, when benchmarks/.conv-venv has them
  (`python3 -m venv benchmarks/.conv-venv && benchmarks/.conv-venv/bin/pip install dcm2niix dicom2nifti`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from isal import igzip

from rbexport.app.sample_images import dicom_series
from rbexport.images.read import read_image_series
from rbexport.images.volume import encode_nifti

HERE = Path(__file__).resolve().parent
SERIES = HERE / ".data" / "ct-dicom-512x512x300"
CONVERTER_VENV = HERE / ".conv-venv"
SHAPE = (512, 512, 300)
INTERCEPT = -1024
DICOM2NIFTI_TIMED = """
import sys, time, dicom2nifti
started = time.perf_counter()
dicom2nifti.dicom_series_to_nifti(sys.argv[1], sys.argv[2], reorient_nifti=False)
print(time.perf_counter() - started)
"""


def ct_phantom(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """Stored values (HU + 1024) of a body with lungs and a spine in air, with scanner-like noise."""
    rng = np.random.default_rng(seed)
    columns, rows, slices = shape
    x, y = np.meshgrid(np.arange(columns) - columns / 2, np.arange(rows) - rows / 2, indexing="ij")
    volume = np.empty(shape, dtype=np.int16)
    for k in range(slices):
        swell = 1 + 0.1 * np.sin(np.pi * k / slices)
        hu = np.full((columns, rows), -1000.0)
        hu[(x / (200 * swell)) ** 2 + (y / (140 * swell)) ** 2 < 1] = 40
        for side in (-1, 1):
            hu[((x - side * 80) / 60) ** 2 + ((y + 10) / (90 * swell)) ** 2 < 1] = -850
        hu[(x**2 + (y - 90) ** 2) < 25**2] = 700
        volume[:, :, k] = np.rint(hu + rng.normal(0, 15, hu.shape)) - INTERCEPT
    return volume


def series_files() -> list[Path]:
    """The benchmark series, written on first use."""
    if not (SERIES / "done").exists():
        shutil.rmtree(SERIES, ignore_errors=True)
        SERIES.mkdir(parents=True)
        items = dicom_series(ct_phantom(), spacing=(0.7, 0.7, 1.25), rescale=(1, INTERCEPT), bits_stored=16)
        for name, raw in items:
            (SERIES / name).write_bytes(raw)
        (SERIES / "done").touch()
    return sorted(SERIES.glob("*.dcm"))


def floor_once(files: list[Path]) -> None:
    """Read, decode (np.frombuffer of each file's pixel data, the last bytes of our files), compress."""
    columns, rows, slices = SHAPE
    frame_bytes = columns * rows * 2
    volume = np.empty(SHAPE, dtype=np.int16, order="F")
    for k, path in enumerate(files):
        raw = path.read_bytes()
        volume[:, :, k] = np.frombuffer(raw, dtype="<i2", offset=len(raw) - frame_bytes).reshape(rows, columns).T
    igzip.compress(volume.reshape(-1, order="F"), 1, mtime=0)


def ours_once(files: list[Path]) -> None:
    items = [(path.name, path.read_bytes()) for path in files]
    encode_nifti(read_image_series(items), compress=True)


def simpleitk_once(files: list[Path], output: Path) -> None:
    reader = sitk.ImageSeriesReader()
    reader.SetNumberOfThreads(1)  # one core, as every other converter here
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].parent)))
    writer = sitk.ImageFileWriter()
    writer.SetNumberOfThreads(1)
    writer.SetFileName(str(output / "simpleitk.nii.gz"))
    writer.SetUseCompression(True)
    writer.Execute(reader.Execute())


def dcm2niix_once(files: list[Path], output: Path) -> float:
    started = time.perf_counter()
    options = ["-z", "i", "-1", "-b", "n", "-o", str(output), "-f", "dcm2niix"]  # internal zlib level 1, no JSON
    command = [str(CONVERTER_VENV / "bin" / "dcm2niix"), *options, str(files[0].parent)]
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def dicom2nifti_once(files: list[Path], output: Path) -> float:
    """dicom2nifti's conversion alone, timed inside its process (its imports are not counted)."""
    command = [str(CONVERTER_VENV / "bin" / "python"), "-c", DICOM2NIFTI_TIMED, str(files[0].parent)]
    result = subprocess.run([*command, str(output / "dicom2nifti.nii.gz")], check=True, capture_output=True, text=True)
    return float(result.stdout.split()[-1])


def median_seconds(runs: int, action: Callable[[], float | None]) -> float:
    """The median of `runs` runs; an action that returns its own time is taken at its word."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        reported = action()
        times.append(reported if reported is not None else time.perf_counter() - started)
    return statistics.median(times)


def bench_conversion(runs: int = 3) -> dict[str, float]:
    """Median seconds of each converter on the benchmark series (see the module's docstring)."""
    files = series_files()
    output = Path(tempfile.mkdtemp(prefix="rbexport-images-bench-"))
    try:
        results = {
            "floor": median_seconds(runs, lambda: floor_once(files)),
            "ours": median_seconds(runs, lambda: ours_once(files)),
            "SimpleITK": median_seconds(runs, lambda: simpleitk_once(files, output)),
        }
        if (CONVERTER_VENV / "bin" / "dcm2niix").exists():
            results["dcm2niix"] = median_seconds(runs, lambda: dcm2niix_once(files, output))
        if (CONVERTER_VENV / "bin" / "python").exists():
            results["dicom2nifti"] = median_seconds(runs, lambda: dicom2nifti_once(files, output))
    finally:
        shutil.rmtree(output, ignore_errors=True)
    return results


LABELS = {
    "floor": "floor (read, np.frombuffer, ISA-L gzip level 1)",
    "ours": "rbexport (read_image_series + encode_nifti)",
    "SimpleITK": "SimpleITK (ImageSeriesReader, ImageFileWriter)",
    "dcm2niix": "dcm2niix (-z i -1)",
    "dicom2nifti": "dicom2nifti (conversion only)",
}
TITLE = f"DICOM series to .nii.gz: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} int16 CT, {SHAPE[2]} files, one core, seconds"
HEADER = ["converter", "seconds", "vs floor", "vs rbexport"]


def conversion_rows(results: dict[str, float]) -> list[list[str]]:
    """One row per converter: seconds, and ratios against the floor and rbexport of the same run."""
    return [
        [LABELS[name], f"{seconds:.2f}", f"{seconds / results['floor']:.2f}x", f"{seconds / results['ours']:.2f}x"]
        for name, seconds in results.items()
    ]


def missing_converters(results: dict[str, float]) -> list[str]:
    return [f"{name} skipped: not in {CONVERTER_VENV}" for name in ("dcm2niix", "dicom2nifti") if name not in results]


def main() -> int:
    from benchmarks.__main__ import table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    results = bench_conversion(runs)
    print(f"medians of {runs} runs\n")
    print(table(TITLE, HEADER, conversion_rows(results)))
    for note in missing_converters(results):
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
