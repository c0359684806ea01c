"""`rbexport demo`: the whole pipeline on a local SeaweedFS and a generated sample project.

`rbexport demo --keep` (`make serve-demo`) only starts the server with the sample project,
prints the shell variables that point the README's deployment steps at it, and keeps it
running until Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from rbexport.app.sample import write_sample_project
from rbexport.app.seaweed import SeaweedServer
from rbexport.options import ExportOptions
from rbexport.report import human_bytes
from rbexport.storage import LocalStorage, S3Storage, Storage

# Credentials of the throwaway server the demo starts on loopback, nothing else.
DEMO_ACCESS_KEY = "rbexport-demo"
DEMO_SECRET_KEY = "rbexport-demo-secret"
SOURCE_BUCKET, SOURCE_PREFIX = "rbexport-source", "brain-study"
EXPORT_BUCKET = "rbexport-export"
EXPORT_PREFIX = "brain-study"
# Both with each series' DICOM images converted to NIfTI on its label's grid (SPEC 5).
VARIANTS = {
    "standard": ExportOptions(image_format="nifti"),
    "semantic": ExportOptions(semantic_mask=True, image_format="nifti"),
}


def run_demo(output_dir: str | None = None) -> int:
    from rbexport.app.runner import run_flow

    with SeaweedServer(access_key=DEMO_ACCESS_KEY, secret_key=DEMO_SECRET_KEY) as server:
        print(f"SeaweedFS (S3) running on {server.endpoint_url}")
        _use_demo_credentials()
        source = S3Storage(SOURCE_BUCKET, SOURCE_PREFIX, server.endpoint_url)
        exports = S3Storage(EXPORT_BUCKET, "", server.endpoint_url)
        source.create_bucket()
        exports.create_bucket()
        tasks = write_sample_project(source, with_images=True)
        print(f"uploaded a sample project of {len(tasks)} tasks, with DICOM images, to {source.url}\n")
        succeeded = True
        for name, options in VARIANTS.items():
            [report] = run_flow(source.url, exports.url_of(name), options, endpoint_url=server.endpoint_url, title=name)
            succeeded = succeeded and report.succeeded
            print()
        print(f"{exports.url}:")
        print_tree(exports)
        if output_dir:
            copied = copy_all(exports, LocalStorage(Path(output_dir).resolve()))
            print(f"\ncopied {copied} files to {Path(output_dir).resolve()}")
    print("SeaweedFS stopped")
    return 0 if succeeded else 1


def serve_demo() -> int:
    """SeaweedFS with the sample project until Ctrl-C; print what to export to use it."""
    with SeaweedServer(access_key=DEMO_ACCESS_KEY, secret_key=DEMO_SECRET_KEY) as server:
        _use_demo_credentials()
        source = S3Storage(SOURCE_BUCKET, SOURCE_PREFIX, server.endpoint_url)
        source.create_bucket()
        S3Storage(EXPORT_BUCKET, "", server.endpoint_url).create_bucket()
        tasks = write_sample_project(source, with_images=True)
        print(f"SeaweedFS (S3) running on {server.endpoint_url}, data in {server.data_dir}")
        print(f"uploaded a sample project of {len(tasks)} tasks, with DICOM images, to {source.url}")
        print("\nfor the README's deployment steps, in each terminal:\n")
        for line in demo_variables(server.endpoint_url):
            print(line)
        print("\nCtrl-C stops the server and deletes its data.", flush=True)
        stopped = _wait_for_stop(server)
    print("SeaweedFS stopped")
    return 0 if stopped else 1


def demo_variables(endpoint_url: str) -> list[str]:
    """`export` lines for a shell: the S3 keys and endpoint, the deployments' variables."""
    return [
        f"export AWS_ACCESS_KEY_ID={DEMO_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={DEMO_SECRET_KEY} AWS_DEFAULT_REGION=us-east-1",
        f"export AWS_ENDPOINT_URL={endpoint_url} RBEXPORT_ENDPOINT_URL={endpoint_url}",
        f"export RBEXPORT_SOURCE=s3://{SOURCE_BUCKET}/{SOURCE_PREFIX} RBEXPORT_DESTINATION=s3://{EXPORT_BUCKET}/{EXPORT_PREFIX}",
        "export PREFECT_SERVER_ANALYTICS_ENABLED=false",
    ]


def _wait_for_stop(server: SeaweedServer) -> bool:
    """Until Ctrl-C or SIGTERM (True), or the server exits by itself (False)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                print(f"SeaweedFS exited by itself (log: {server.log_path})")
                return False
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True


def _use_demo_credentials() -> None:
    """boto3's standard chain reads the environment first: point it at the demo server's keys."""
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(
        AWS_ACCESS_KEY_ID=DEMO_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=DEMO_SECRET_KEY, AWS_DEFAULT_REGION="us-east-1"
    )


def print_tree(storage: Storage) -> None:
    """The objects under `storage` as an indented tree with sizes."""
    printed: set[tuple[str, ...]] = set()
    for info in storage.list():
        parts = tuple(info.key.split("/"))
        for depth in range(len(parts) - 1):
            folder = parts[: depth + 1]
            if folder not in printed:
                printed.add(folder)
                print(f"{'  ' * (depth + 1)}{folder[-1]}/")
        print(f"{'  ' * len(parts)}{parts[-1]}  ({human_bytes(info.size)})")


def copy_all(source: Storage, target: Storage) -> int:
    count = 0
    for info in source.list():
        target.write(info.key, source.read(info.key))
        count += 1
    return count
