"""Releases S3 to S3 on one SeaweedFS: `python -m benchmarks.releases [--tasks N] [--runs N]`.

The export: N tasks (1,000 by default), each with two masks of 20,000 random bytes
(`segmentations/Task_NNNN/A.nii.gz`, `.../B.nii.gz`), its state recording every file with
its size and sha256, and tasks.json: an export as `rbexport run` leaves it, written directly
(the export's own speed is not what is measured). Each figure is the median of `runs` runs:

- rbexport: `create_release(export, release)` into a fresh prefix of another bucket on the
  same endpoint: under the export's lease, the store copies each file (CopyObject, 16 at
  once), then release.json;
- the baseline: one boto3 client, `copy_object` for each of the same objects, one after another.

Bytes through the worker are counted as in benchmarks/copies.py (every byte this process's
sockets receive, and S3 response bodies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time

from benchmarks.copies import COUNTERS, KEYS, counting, environment

MASK_BYTES = 20_000
EXPORT_BUCKET, RELEASE_BUCKET, PREFIX = "bench-release-export", "bench-releases", "export"


def write_export(endpoint_url: str, tasks: int) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from rbexport.incremental import STATE_KEY, ExportState, TaskRecord
    from rbexport.storage import S3Storage

    for bucket in (EXPORT_BUCKET, RELEASE_BUCKET):
        S3Storage(bucket, "", endpoint_url).create_bucket()
    export = S3Storage(EXPORT_BUCKET, PREFIX, endpoint_url)
    state, entries, writes = ExportState(), [], []
    for number in range(tasks):
        files, checksums = {}, {}
        for series in ("A", "B"):
            path = f"segmentations/Task_{number:04d}/{series}.nii.gz"
            data = os.urandom(MASK_BYTES)
            writes.append((path, data))
            files[path], checksums[path] = len(data), "sha256:" + hashlib.sha256(data).hexdigest()
        state.tasks[f"task-{number:04d}"] = TaskRecord("bench", files, checksums=checksums)
        entries.append({"taskId": f"task-{number:04d}", "series": [{"segmentations": path} for path in files]})
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: export.write(*item), writes))
    tasks_json = (json.dumps(entries) + "\n").encode()
    export.write("tasks.json", tasks_json)
    state.indexes["tasks.json"] = "sha256:" + hashlib.sha256(tasks_json).hexdigest()
    export.write(STATE_KEY, state.to_json())
    return export.url


def release_once(export_url: str, endpoint_url: str, run: int) -> tuple[float, dict[str, int], int]:
    from rbexport.releases import create_release
    from rbexport.storage import S3Access

    with counting() as received:
        started = time.perf_counter()
        release = create_release(export_url, f"s3://{RELEASE_BUCKET}/r{run}-{time.time_ns()}", S3Access(endpoint_url))
        seconds = time.perf_counter() - started
    return seconds, received, len(release.files)


def loop_once(endpoint_url: str, keys: list[str]) -> tuple[float, dict[str, int]]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint_url)
    target = f"loop-{time.time_ns()}"
    with counting() as received:
        started = time.perf_counter()
        for key in keys:
            client.copy_object(
                Bucket=RELEASE_BUCKET,
                Key=f"{target}/{key}",
                CopySource={"Bucket": EXPORT_BUCKET, "Key": f"{PREFIX}/{key}"},
            )
        seconds = time.perf_counter() - started
    return seconds, received


def bench_releases(tasks: int = 1000, runs: int = 3) -> dict[str, float]:
    from rbexport.app.seaweed import SeaweedServer
    from rbexport.storage import S3Storage

    with (
        environment(KEYS),
        SeaweedServer(access_key=KEYS["AWS_ACCESS_KEY_ID"], secret_key=KEYS["AWS_SECRET_ACCESS_KEY"]) as server,
    ):
        COUNTERS.install()
        export_url = write_export(server.endpoint_url, tasks)
        keys = [
            info.key
            for info in S3Storage(EXPORT_BUCKET, PREFIX, server.endpoint_url).list()
            if not info.key.startswith(".rbexport/")
        ]
        releases, loops, bodies, files = [], [], [], 0
        for run in range(runs):
            seconds, received, files = release_once(export_url, server.endpoint_url, run)
            releases.append(seconds)
            bodies.append(received["content_length"])
            loop_seconds, _ = loop_once(server.endpoint_url, keys)
            loops.append(loop_seconds)
    release, loop = statistics.median(releases), statistics.median(loops)
    return {
        "tasks": tasks,
        "files": files,
        "mask_bytes": 2 * tasks * MASK_BYTES,
        "release_seconds": release,
        "loop_seconds": loop,
        "speedup": loop / release,
        "body_bytes_through_worker": statistics.median(bodies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    result = bench_releases(arguments.tasks, arguments.runs)
    print(
        f"release of {result['tasks']} tasks ({result['files']} files, {result['mask_bytes'] / 1e6:.0f} MB of masks), "
        f"S3 to S3 on one SeaweedFS, median of {arguments.runs}:"
    )
    print(f"  rbexport release create      {result['release_seconds']:.2f} s")
    print(f"  sequential copy_object loop  {result['loop_seconds']:.2f} s")
    print(f"  speed-up                     {result['speedup']:.1f}x")
    print(
        f"  S3 response bodies received by the worker during the release: {result['body_bytes_through_worker']:,.0f} bytes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
