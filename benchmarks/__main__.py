"""rbexport benchmarks: `python -m benchmarks` (or `make bench`). Prints one table.

Every figure is the median of several runs, and every ratio is against a baseline
measured in the same run: the floor (decode the input, compress the output bytes with the
fastest codec installed), the RedBrick SDK's converter in a venv of its own, and the same
export without Prefect. Inputs are generated into benchmarks/.data (kept between runs).
The image benchmarks (`--only images`) are in benchmarks/images.py (DICOM to NIfTI) and
benchmarks/copies.py (image copies S3 to S3); each also runs alone: `python -m benchmarks.images`,
`python -m benchmarks.copies`. Mask formats against NIfTI (`--only formats`): benchmarks/formats.py.
The engines' start-up, configuration errors and Prefect's cost per run (`--only engines`):
benchmarks/engines.py, also `python -m benchmarks.engines`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.copies import environment

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
SDK_VENV = HERE / ".sdk-venv"
PYTHON = sys.executable
RBEXPORT = str(Path(sys.executable).with_name("rbexport"))
STRUCTURES = ["standard", "binary", "semantic", "semantic-binary"]
PARTS = ["single", "images", "formats", "tiny", "six", "small", "memory", "engines"]


def median_of(runs: int, measure) -> float:
    return statistics.median(measure() for _ in range(runs))


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- inputs ---------------------------------------------------------------------------


def generated(kind: str, tasks: int) -> Path:
    """benchmarks/.data/<kind>-<tasks>, generated on first use (ct or small)."""
    from benchmarks.data import write_ct_project, write_small_project

    root = DATA / f"{kind}-{tasks}"
    if not (root / "tasks.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        {"ct": write_ct_project, "small": write_small_project}[kind](root, tasks)
    return root


def ct_project(tasks: int) -> Path:
    return generated("ct", tasks)


def small_project(tasks: int) -> Path:
    return generated("small", tasks)


# --- one CT-sized task ------------------------------------------------------------------


def export_once(source: Path, structure: str, workers: int = 1) -> Path:
    from rbexport.engine import run_export
    from rbexport.options import ExportOptions

    out = Path(tempfile.mkdtemp(prefix="rbexport-bench-"))
    [report] = run_export(
        str(source), str(out), ExportOptions(), variants=[structure], incremental=False, workers=workers
    )
    assert report.succeeded, report.failures
    return out


def floor_seconds(source: Path, export: Path) -> float:
    """Decode the input, then compress every output payload with the fastest codec installed."""
    from isal import isal_zlib

    from benchmarks.fastest import fastest_compressor

    compress = fastest_compressor()
    inputs = [path.read_bytes() for path in sorted((source / "masks").glob("*.nii.gz"))]
    payloads = [gzip.decompress(path.read_bytes()) for path in sorted((export / "segmentations").rglob("*.nii.gz"))]

    def decode() -> None:
        for raw in inputs:
            isal_zlib.decompressobj(31).decompress(raw)

    return timed(decode) + timed(lambda: [compress(payload) for payload in payloads])


def single_task(runs: int, sdk: SdkPeer | None) -> list[list[str]]:
    source = ct_project(1)
    rows = []
    for structure in STRUCTURES:
        exports = []

        def measure(structure: str = structure, exports: list = exports) -> float:
            started = time.perf_counter()
            exports.append(export_once(source, structure))
            return time.perf_counter() - started

        ours = median_of(runs, measure)
        floor = statistics.median(floor_seconds(source, exports[-1]) for _ in range(runs))
        files = len(list((exports[-1] / "segmentations").rglob("*.nii.gz")))
        for export in exports:
            shutil.rmtree(export)
        row = [structure, f"{files}", f"{ours:.2f}", f"{floor:.2f}", f"{ours / floor:.2f}x"]
        if sdk:
            theirs = sdk.convert(source, structure, runs)
            row += [f"{theirs:.2f}", f"{theirs / ours:.1f}x"]
        else:
            row += ["-", "-"]
        rows.append(row)
    return rows


# --- the SDK ------------------------------------------------------------------------------


class SdkPeer:
    """redbrick-sdk in benchmarks/.sdk-venv (never in the project's environment)."""

    def __init__(self) -> None:
        self.python = SDK_VENV / "bin" / "python"

    @classmethod
    def install(cls) -> SdkPeer | str:
        peer = cls()
        if (
            not peer.python.exists()
            or subprocess.run([str(peer.python), "-c", "import redbrick"], capture_output=True).returncode
        ):
            shutil.rmtree(SDK_VENV, ignore_errors=True)
            for command in (
                [PYTHON, "-m", "venv", str(SDK_VENV)],
                [str(peer.python), "-m", "pip", "install", "-q", "redbrick-sdk"],
            ):
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode:
                    return f"redbrick-sdk could not be installed ({(result.stderr or result.stdout).strip().splitlines()[-1:]})"
        return peer

    def convert(self, source: Path, structure: str, runs: int) -> float:
        tasks = json.loads((source / "tasks.json").read_text())
        taxonomy = {
            item["category"]: item["classId"]
            for item in json.loads((source / "taxonomy.json").read_text())["objectTypes"]
        }
        segment_map = tasks[0]["series"][0]["segmentMap"]
        labels = [
            {
                "dicom": {"instanceid": int(key), "groupids": entry.get("overlappingGroups") or []},
                "classid": taxonomy[entry["category"]],
                "category": entry["category"],
            }
            for key, entry in segment_map.items()
        ]
        job = {
            "files": [str(source / task["series"][0]["segmentations"]) for task in tasks],
            "labels": labels,
            "semantic": structure.startswith("semantic"),
            "binary": True if structure.endswith("binary") else None,
            "runs": runs,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(job, handle)
        result = subprocess.run(
            [str(self.python), str(HERE / "sdk_peer.py"), handle.name], capture_output=True, text=True
        )
        os.unlink(handle.name)
        if result.returncode:
            raise RuntimeError(f"the SDK peer failed: {result.stderr[-2000:]}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        if not measured["files"]:
            raise RuntimeError("the SDK peer wrote no files")
        return statistics.median(measured["seconds"])


# --- through the CLI ----------------------------------------------------------------------


class PrefectServer:
    """`prefect server start` on a free port, for CLI runs that should not start their own API."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="rbexport-bench-prefect-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        environment = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.process = subprocess.Popen(
            [
                str(Path(PYTHON).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import urllib.request

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("prefect server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        shutil.rmtree(self.home, ignore_errors=True)


def cli_seconds(source: str, arguments: list[str], api_url: str | None, environment: dict | None = None) -> float:
    out = tempfile.mkdtemp(prefix="rbexport-bench-cli-")
    destination = arguments.pop(0) if arguments and arguments[0].startswith("s3://") else out
    env = {**os.environ, **(environment or {}), "PREFECT_HOME": str(Path(out) / ".prefect-home")}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    started = time.perf_counter()
    result = subprocess.run(
        [RBEXPORT, "run", "--source", source, "--dest", destination, "--full", *arguments],
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode:
        raise RuntimeError(f"rbexport failed: {result.stdout[-1000:]} {result.stderr[-2000:]}")
    return elapsed


def six_tasks(runs: int, server: PrefectServer, sdk: SdkPeer | None) -> list[list[str]]:
    """6 CT tasks: both engines end to end (start-up included), against the SDK's converter."""
    source = ct_project(6)
    rows = []
    for structure in ("binary", "semantic-binary"):
        variant = ["--variant", structure]
        local = median_of(runs, lambda variant=variant: cli_seconds(str(source), [*variant, "--engine", "local"], None))
        ours = median_of(runs, lambda variant=variant: cli_seconds(str(source), variant, server.url))
        ephemeral = cli_seconds(str(source), [*variant, "--engine", "prefect"], None)
        row = [structure, f"{local:.1f}", f"{ours:.1f}", f"{ephemeral:.1f}"]
        if sdk:
            theirs = sdk.convert(source, structure, 1)
            row += [f"{theirs:.1f}", f"{theirs / local:.1f}x", f"{theirs / ours:.1f}x"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    return rows


def tiny_run(runs: int, server: PrefectServer) -> list[list[str]]:
    """The sample project's 6 tiny tasks end to end: Prefect's fixed cost per run."""
    from rbexport.app.sample import write_sample_project
    from rbexport.storage import LocalStorage

    source = DATA / "tiny"
    if not (source / "tasks.json").exists():
        write_sample_project(LocalStorage(source))
    local = median_of(runs, lambda: cli_seconds(str(source), ["--engine", "local"], None))
    on_server = median_of(runs, lambda: cli_seconds(str(source), [], server.url))
    return [
        ["--engine local (baseline)", f"{local:.2f}", "1.00x"],
        ["Prefect server (PREFECT_API_URL)", f"{on_server:.2f}", f"{on_server / local:.2f}x"],
    ]


def many_small_tasks(runs: int, server: PrefectServer) -> list[list[str]]:
    """1,000 small tasks: the flow on a server against the local engine (the baseline)."""
    from rbexport.app.seaweed import SeaweedServer
    from rbexport.storage import S3Storage

    count = 1000
    source = small_project(count)
    local = median_of(runs, lambda: cli_seconds(str(source), ["--engine", "local"], None))
    on_server = median_of(runs, lambda: cli_seconds(str(source), [], server.url))
    per_task = median_of(runs, lambda: cli_seconds(str(source), ["--batch-size", "1"], server.url))
    ephemeral = cli_seconds(str(source), ["--engine", "prefect"], None)

    def row(where: str, seconds: float) -> list[str]:
        return [where, f"{seconds:.1f}", f"{count / seconds:.0f}", f"{seconds / local:.2f}x"]

    rows = [
        row("local folders, --engine local (baseline)", local),
        row("local folders, Prefect server", on_server),
        row("local folders, Prefect server, --batch-size 1", per_task),
        row("local folders, ephemeral API", ephemeral),
    ]
    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    with SeaweedServer(access_key=keys["AWS_ACCESS_KEY_ID"], secret_key=keys["AWS_SECRET_ACCESS_KEY"]) as seaweed:
        with environment(keys):
            bucket = S3Storage("bench-source", "small", seaweed.endpoint_url)
            S3Storage("bench-source", "", seaweed.endpoint_url).create_bucket()
            S3Storage("bench-export", "", seaweed.endpoint_url).create_bucket()
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    bucket.write(path.relative_to(source).as_posix(), path.read_bytes())
            endpoint = ["--endpoint-url", seaweed.endpoint_url]
            s3_local = median_of(
                runs,
                lambda: cli_seconds(
                    bucket.url, ["s3://bench-export/local", *endpoint, "--engine", "local"], None, keys
                ),
            )
            s3_server = median_of(
                runs, lambda: cli_seconds(bucket.url, ["s3://bench-export/flow", *endpoint], server.url, keys)
            )
    rows.append(["SeaweedFS, --engine local", f"{s3_local:.1f}", f"{count / s3_local:.0f}", "-"])
    rows.append(
        ["SeaweedFS, Prefect server", f"{s3_server:.1f}", f"{count / s3_server:.0f}", f"{s3_server / s3_local:.2f}x"]
    )
    return rows


# --- memory ------------------------------------------------------------------------------


def peak_rss(server: PrefectServer) -> list[list[str]]:
    """Peak RSS of the CLI process exporting 6 CT tasks, against one decoded volume."""
    from benchmarks.data import CT_SHAPE

    source = ct_project(6)
    baseline_source = small_project(1)
    rows = []
    volume = CT_SHAPE[0] * CT_SHAPE[1] * CT_SHAPE[2] * 2  # uint16: the maps hold values above 255
    for label, project, workers, limit in (
        ("1 small task (baseline)", baseline_source, 8, None),
        ("6 CT tasks, 8 workers", source, 8, None),
        ("6 CT tasks, 2 workers", source, 2, None),
        ("6 CT tasks, 8 workers, RBEXPORT_MEMORY_LIMIT=1G", source, 8, "1G"),
    ):
        out = tempfile.mkdtemp()
        env = {**os.environ, "PREFECT_API_URL": server.url, "PREFECT_HOME": str(Path(out) / "home")}
        if limit:
            env["RBEXPORT_MEMORY_LIMIT"] = limit
        result = subprocess.run(
            [
                PYTHON,
                "-m",
                "benchmarks.rss",
                "run",
                "--source",
                str(project),
                "--dest",
                out + "/x",
                "--variant",
                "semantic-binary",
                "--variant",
                "binary",
                "--full",
                "--workers",
                str(workers),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=HERE.parent,
        )
        shutil.rmtree(out, ignore_errors=True)
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])
        peak = json.loads(result.stdout.strip().splitlines()[-1])["peak_rss"]
        rows.append([label, f"{peak / 1e6:.0f}", f"{volume / 1e6:.0f}", f"{peak / volume:.1f}x"])
    return rows


# --- images ------------------------------------------------------------------------------


def print_image_tables(runs: int) -> None:
    """DICOM to NIfTI against the floor and other converters; image copies against a boto3 loop."""
    from benchmarks import copies, images

    results = images.bench_conversion(runs)
    print(table(images.TITLE, images.HEADER, images.conversion_rows(results)), flush=True)
    for note in images.missing_converters(results):
        print(note + "\n")
    for title, header, rows in copies.tables(copies.bench_copies(runs)):
        print(table(title, header, rows), flush=True)


# --- the table ------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(
        str(cell).rjust(width) if index else str(cell).ljust(width)
        for index, (cell, width) in enumerate(zip(cells, widths, strict=False))
    )
    return "\n".join([title, line(header), line(["-" * width for width in widths]), *map(line, rows), ""])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median); default 5")
    parser.add_argument("--no-sdk", action="store_true", help="do not install or run the RedBrick SDK peer")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts (repeatable)")
    arguments = parser.parse_args()
    parts = set(arguments.only or PARTS)
    DATA.mkdir(exist_ok=True)
    sdk: SdkPeer | None = None
    notes = []
    if not arguments.no_sdk and parts & {"single", "six"}:
        installed = SdkPeer.install()
        sdk = installed if isinstance(installed, SdkPeer) else None
        if sdk is None:
            notes.append(f"SDK columns skipped: {installed}")
    print(f"rbexport benchmarks: {os.cpu_count()} cores, medians of {arguments.runs} runs\n")
    if "single" in parts:
        print(
            table(
                "One CT task, 512x512x300 uint16, 20 instances (5 overlapping), seconds",
                ["structure", "files", "rbexport", "floor", "vs floor", "SDK", "SDK/rbexport"],
                single_task(arguments.runs, sdk),
            ),
            flush=True,
        )
    if "images" in parts:
        print_image_tables(arguments.runs)
    if "formats" in parts:
        from benchmarks.formats import HEADERS, TITLE, bench_formats

        print(table(TITLE, HEADERS, bench_formats(min(arguments.runs, 3))), flush=True)
    if "engines" in parts:
        from benchmarks.engines import print_tables as print_engine_tables

        print_engine_tables(min(arguments.runs, 5))
    server = PrefectServer() if parts & {"tiny", "six", "small", "memory"} else None
    try:
        if "tiny" in parts:
            print(
                table(
                    "The sample project's 6 tiny tasks through the CLI, seconds end to end",
                    ["engine", "seconds", "vs local"],
                    tiny_run(arguments.runs, server),
                ),
                flush=True,
            )
        if "six" in parts:
            print(
                table(
                    "6 CT tasks through the CLI, seconds end to end (SDK: its converter on the 6 maps)",
                    ["structure", "local", "server", "ephemeral", "SDK", "SDK/local", "SDK/server"],
                    six_tasks(min(arguments.runs, 3), server, sdk),
                ),
                flush=True,
            )
        if "small" in parts:
            print(
                table(
                    "1,000 small tasks (256x256, 3 instances) through the CLI",
                    ["where", "seconds", "tasks/s", "vs local"],
                    many_small_tasks(min(arguments.runs, 3), server),
                ),
                flush=True,
            )
        if "memory" in parts:
            print(
                table(
                    "Peak memory (RSS) of the CLI process, binary and semantic-binary variants",
                    ["export", "peak MB", "one volume MB", "peak / volume"],
                    peak_rss(server),
                ),
                flush=True,
            )
    finally:
        if server:
            server.stop()
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
