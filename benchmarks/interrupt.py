"""Ctrl-C to exit: `python -m benchmarks.interrupt [--tasks N]`.

Starts `rbexport run --full` (re-exporting a 1,500-task project) in its own session, as a
terminal runs a job, waits for its first progress line (`[1/1500]`), sends SIGINT
to the whole process group (what Ctrl-C does) and measures the seconds until the process
has exited; for --engine local and --engine prefect (the CLI's ephemeral API), into a
local folder and into S3 (a SeaweedFS started here). Target: at most 5 s. Prints a table
with the exit codes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data import write_small_project

RBEXPORT = str(Path(sys.executable).with_name("rbexport"))
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret-0b1c", "AWS_DEFAULT_REGION": "us-east-1"}


def seconds_to_exit(arguments: list[str], environment: dict[str, str], log: Path) -> tuple[float, int]:
    with log.open("w") as out:
        process = subprocess.Popen(
            [RBEXPORT, *arguments], stdout=out, stderr=out, env=environment, start_new_session=True
        )
    deadline = time.monotonic() + 600
    while "] " not in log.read_text(errors="replace").split("exporting", 1)[-1]:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the run ended before it was interrupted:\n{log.read_text()}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    started = time.perf_counter()
    process.wait()
    return time.perf_counter() - started, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1500)
    options = parser.parse_args()
    from rbexport.app.seaweed import SeaweedServer
    from rbexport.storage import S3Storage

    work = Path(tempfile.mkdtemp(prefix="rbexport-interrupt-bench-"))
    source = write_small_project(work / "source", tasks=options.tasks)
    environment = {**os.environ, **KEYS, "PREFECT_HOME": str(work / "prefect-home")}
    environment.pop("PREFECT_API_URL", None)
    rows = []
    with SeaweedServer(access_key=KEYS["AWS_ACCESS_KEY_ID"], secret_key=KEYS["AWS_SECRET_ACCESS_KEY"]) as server:
        os.environ.update(KEYS)
        S3Storage("bench-src", "", server.endpoint_url).create_bucket()
        S3Storage("bench-dst", "", server.endpoint_url).create_bucket()
        bucket = S3Storage("bench-src", "project", server.endpoint_url)
        for path in sorted(source.rglob("*")):
            if path.is_file():
                bucket.write(path.relative_to(source).as_posix(), path.read_bytes())
        stores = {
            "local folders": ([str(source), str(work / "export")], []),
            "S3 (SeaweedFS)": (
                ["s3://bench-src/project", "s3://bench-dst/export"],
                ["--endpoint-url", server.endpoint_url],
            ),
        }
        for store, ((src, dst), extra) in stores.items():
            base = ["run", "--source", src, "--dest", dst, *extra]
            subprocess.run([RBEXPORT, *base, "--engine", "local"], env=environment, check=True, capture_output=True)
            for engine in ("local", "prefect"):
                log = work / f"{engine}-{store.split()[0]}.log"
                seconds, code = seconds_to_exit([*base, "--full", "--engine", engine], environment, log)
                rows.append((engine, store, seconds, code))
    print(f"Ctrl-C to exit, `rbexport run --full` of {options.tasks:,} tasks (SIGINT to the process group):")
    print(f"{'engine':<10}{'store':<18}{'seconds':>9}{'exit':>6}")
    for engine, store, seconds, code in rows:
        print(f"{engine:<10}{store:<18}{seconds:>9.1f}{code:>6}")
    return 0 if all(code == 130 for *_, code in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
