"""Image copies S3 to S3 on one SeaweedFS: `python -m benchmarks.copies [--runs N]`.

The source project is one task whose one series names 300 image items of 200,000 random
bytes each (`scan/slice-0001.dcm` ...; 60 MB in all) and no segmentations, plus tasks.json.
Each figure is the median of `runs` runs:

- rbexport: `run_export(..., ExportOptions(with_images=True), workers=8)` from one bucket
  to another on the same endpoint: the store copies each item (CopyObject);
- the baseline: one boto3 client, `copy_object` for each of the 300 objects, one after another;
- for reference, the same export to a local folder: every image byte streams through here.

Bytes through the worker (this process) are counted two ways during each export: every byte
a Python socket of this process receives, HTTP headers included (`socket.socket.recv*`
wrapped; the SeaweedFS server is another process), and the body of every S3 response
botocore receives (a 'response-received.s3' handler: the length of a body already read, the
Content-Length of a streamed GetObject; a HEAD's Content-Length is not a body). rchar of
/proc/self/io is shown too, but it counts read(2) and not recv(2), which Python's sockets
use: it does not see network bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

ITEMS = 300
ITEM_BYTES = 200_000
IMAGE_BYTES = ITEMS * ITEM_BYTES
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
SOURCE_BUCKET, EXPORT_BUCKET, PREFIX = "bench-images", "bench-images-export", "project"


# --- counting the bytes this process receives ----------------------------------------------


class ByteCounters:
    """Bytes received by this process's Python sockets, and the bodies of S3 responses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.socket_bytes = 0
        self.content_length = 0
        self._installed = False

    def install(self) -> None:
        """Wrap the socket receive methods, and hook the S3 clients rbexport makes from now on."""
        if self._installed:
            return
        self._installed = True
        for name in ("recv", "recv_into", "recvfrom", "recvfrom_into"):
            setattr(socket.socket, name, self._counting(getattr(socket.socket, name), name))
        from rbexport.storage.clients import shared_session

        shared_session().events.register("response-received.s3", self.on_response)

    def _counting(self, real: Callable, name: str) -> Callable:
        counters = self

        def received(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            got = result[0] if name.startswith("recvfrom") else result  # recvfrom*: (data or count, address)
            count = got if isinstance(got, int) else len(got)
            with counters.lock:
                counters.socket_bytes += count
            return result

        return received

    def on_response(self, response_dict=None, **_) -> None:
        """The body's length: read already (bytes), else streamed (GetObject): its Content-Length.

        Not the Content-Length of every response: a HEAD's is the object's size, with no body.
        """
        body = (response_dict or {}).get("body")
        if isinstance(body, bytes | bytearray):
            length = len(body)
        else:
            length = int((response_dict or {}).get("headers", {}).get("content-length") or 0)
        with self.lock:
            self.content_length += length

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.socket_bytes, self.content_length, rchar()


def rchar() -> int:
    with open("/proc/self/io") as handle:
        return int(dict(line.split(": ") for line in handle.read().splitlines())["rchar"])


COUNTERS = ByteCounters()


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """{'socket': ..., 'content_length': ..., 'rchar': ...} received in the block."""
    counted: dict[str, int] = {}
    before = COUNTERS.snapshot()
    yield counted
    after = COUNTERS.snapshot()
    counted.update(
        zip(("socket", "content_length", "rchar"), (b - a for a, b in zip(before, after, strict=False)), strict=False)
    )


# --- the source ---------------------------------------------------------------------------


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def upload_source(endpoint_url: str) -> str:
    """The one-task project in s3://bench-images/project; its URL."""
    import json

    from rbexport.storage import S3Storage

    for bucket in (SOURCE_BUCKET, EXPORT_BUCKET):
        S3Storage(bucket, "", endpoint_url).create_bucket()
    source = S3Storage(SOURCE_BUCKET, PREFIX, endpoint_url)
    items = [f"scan/slice-{number:04d}.dcm" for number in range(1, ITEMS + 1)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: source.write(key, os.urandom(ITEM_BYTES)), items))
    task = {"taskId": "copies-001", "name": "Copies_001", "series": [{"name": "scan", "items": items}]}
    source.write("tasks.json", json.dumps([task]).encode())
    return source.url


# --- the measurements -----------------------------------------------------------------------


def rbexport_once(source_url: str, destination: str, endpoint_url: str) -> tuple[float, dict[str, int]]:
    from rbexport.engine import run_export
    from rbexport.options import ExportOptions

    with counting() as counted:
        started = time.perf_counter()
        [report] = run_export(
            source_url,
            destination,
            ExportOptions(with_images=True),
            endpoint_url=endpoint_url,
            incremental=False,
            workers=8,
        )
        elapsed = time.perf_counter() - started
    assert report.succeeded, report.failures
    images = [record for record in report.files if record.path.startswith("images/")]
    assert len(images) == ITEMS and sum(record.bytes for record in images) == IMAGE_BYTES, len(images)
    return elapsed, counted


def boto3_loop_once(endpoint_url: str, prefix: str) -> tuple[float, dict[str, int]]:
    """One plain boto3 client, copy_object for each object, one after another."""
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=endpoint_url)
    client.meta.events.register("response-received.s3", COUNTERS.on_response)
    keys = [f"{PREFIX}/scan/slice-{number:04d}.dcm" for number in range(1, ITEMS + 1)]
    client.head_bucket(Bucket=EXPORT_BUCKET)  # connect before the clock starts
    with counting() as counted:
        started = time.perf_counter()
        for key in keys:
            client.copy_object(
                Bucket=EXPORT_BUCKET, Key=f"{prefix}/{key}", CopySource={"Bucket": SOURCE_BUCKET, "Key": key}
            )
        elapsed = time.perf_counter() - started
    return elapsed, counted


def bench_copies(runs: int = 3) -> dict[str, dict[str, float]]:
    """Per way of copying: median 'seconds', and median bytes received ('socket', 'content_length', 'rchar')."""
    from rbexport.app.seaweed import SeaweedServer

    measured: dict[str, list[tuple[float, dict[str, int]]]] = {"rbexport": [], "boto3 loop": [], "streamed": []}
    with (
        environment(KEYS),
        SeaweedServer(access_key=KEYS["AWS_ACCESS_KEY_ID"], secret_key=KEYS["AWS_SECRET_ACCESS_KEY"]) as server,
    ):
        COUNTERS.install()
        source_url = upload_source(server.endpoint_url)
        folder = tempfile.mkdtemp(prefix="rbexport-copies-bench-")
        try:
            for run in range(runs):
                measured["boto3 loop"].append(boto3_loop_once(server.endpoint_url, f"boto3-{run}"))
                measured["rbexport"].append(
                    rbexport_once(source_url, f"s3://{EXPORT_BUCKET}/rbexport-{run}", server.endpoint_url)
                )
                measured["streamed"].append(rbexport_once(source_url, f"{folder}/run-{run}", server.endpoint_url))
                shutil.rmtree(f"{folder}/run-{run}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        name: {
            "seconds": statistics.median(seconds for seconds, _ in results),
            **{
                what: statistics.median(counted[what] for _, counted in results)
                for what in ("socket", "content_length", "rchar")
            },
        }
        for name, results in measured.items()
    }


def tables(results: dict[str, dict[str, float]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the speed table and the bytes table."""
    baseline = results["boto3 loop"]["seconds"]
    speed = [
        ["boto3 copy_object loop, 1 client, sequential (baseline)", baseline, "1.00x"],
        [
            "rbexport run_export S3 to S3, workers=8 (CopyObject)",
            results["rbexport"]["seconds"],
            f"{baseline / results['rbexport']['seconds']:.2f}x",
        ],
        [
            "rbexport run_export S3 to a local folder (streamed)",
            results["streamed"]["seconds"],
            f"{baseline / results['streamed']['seconds']:.2f}x",
        ],
    ]
    speed_rows = [[label, f"{seconds:.2f}", f"{ITEMS / seconds:.0f}", ratio] for label, seconds, ratio in speed]
    volume = [
        ("rbexport S3 to S3 (server-side copies)", results["rbexport"]),
        ("rbexport S3 to a local folder (streamed)", results["streamed"]),
        ("boto3 copy_object loop", results["boto3 loop"]),
    ]
    bytes_rows = [
        [
            label,
            f"{counted['socket']:,.0f}",
            f"{counted['socket'] / IMAGE_BYTES:.2%}",
            f"{counted['content_length']:,.0f}",
            f"{counted['content_length'] / IMAGE_BYTES:.2%}",
            f"{counted['rchar']:,.0f}",
        ]
        for label, counted in volume
    ]
    return [
        (
            f"Image copies, one SeaweedFS: 1 task, {ITEMS} objects of {ITEM_BYTES:,} bytes ({IMAGE_BYTES / 1e6:.0f} MB), "
            "whole run_export timed",
            ["copier", "seconds", "objects/s", "vs boto3 loop"],
            speed_rows,
        ),
        (
            f"Bytes received by this process during the copies (image bytes copied: {IMAGE_BYTES:,})",
            ["export", "socket recv bytes", "of image bytes", "S3 response bodies", "of image bytes", "rchar"],
            bytes_rows,
        ),
    ]


def main() -> int:
    from benchmarks.__main__ import table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    print(f"medians of {runs} runs\n")
    for title, header, rows in tables(bench_copies(runs)):
        print(table(title, header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
