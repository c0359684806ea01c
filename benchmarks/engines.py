"""The CLI's engines, end to end: `python -m benchmarks.engines [--runs N]` (or `--only engines`).

Every row is the median of N runs of the `rbexport` command, measured in this run against
`--engine local` on the same input (the two run in turn, round after round):

- the sample project's 6 tiny tasks with no Prefect API configured (no PREFECT_API_URL, a
  new PREFECT_HOME): the default command (`--engine auto`, which then runs the local
  engine) and `--engine prefect` (the flow on an ephemeral API, the default before);
- a configuration error (a source folder that is not there; a bucket that is not there on
  SeaweedFS) with the default command, and through a Prefect server;
- 1,000 small tasks through a Prefect server (`prefect server start`, PREFECT_API_URL set);
- the CLI's own imports (`python -X importtime`): up to the engine's choice, and for a
  configuration error.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.__main__ import DATA, PYTHON, RBEXPORT, PrefectServer, small_project, table

TARGET_DEFAULT = 1.5  # the default command with no server, against --engine local
TARGET_ERROR_SECONDS = 1.0
TARGET_SERVER = 2.0  # 1,000 tasks through a server, against --engine local


def command_seconds(arguments: list[str], api_url: str | None = None, expect: int = 0) -> float:
    """Wall time of one `rbexport` command in a new PREFECT_HOME, with or without a server."""
    scratch = Path(tempfile.mkdtemp(prefix="rbexport-bench-engine-"))
    environment = {**os.environ, "PREFECT_HOME": str(scratch / "prefect-home")}
    environment.pop("PREFECT_API_URL", None)
    environment.pop("PREFECT_PROFILE", None)
    if api_url:
        environment["PREFECT_API_URL"] = api_url
    arguments = [str(scratch / "out") if part == "{out}" else part for part in arguments]
    started = time.perf_counter()
    result = subprocess.run([RBEXPORT, *arguments], capture_output=True, text=True, env=environment, cwd=scratch)
    elapsed = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    if result.returncode != expect:
        raise RuntimeError(f"rbexport {' '.join(arguments)} exited {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def median_seconds(runs: int, arguments: list[str], api_url: str | None = None, expect: int = 0) -> float:
    return statistics.median(command_seconds(list(arguments), api_url, expect) for _ in range(runs))


def paired_medians(runs: int, *commands: tuple[list[str], str | None]) -> list[float]:
    """Medians of `commands` (arguments, API URL) run in turn, round after round: a machine
    whose load changes during the benchmark weighs on each of them alike."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for index, (arguments, api_url) in enumerate(commands):
            times[index].append(command_seconds(list(arguments), api_url))
    return [statistics.median(each) for each in times]


def import_milliseconds(arguments: list[str]) -> float:
    """What `python -X importtime` counts for the CLI until it exits (imports only)."""
    scratch = Path(tempfile.mkdtemp(prefix="rbexport-bench-imports-"))
    environment = {**os.environ, "PREFECT_HOME": str(scratch / "home")}
    environment.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "rbexport.app.cli", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).resolve().parent.parent,
    )
    shutil.rmtree(scratch, ignore_errors=True)
    total = 0
    for line in result.stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if found and not found.group(2).startswith(" "):  # top-level imports: their cumulative times add up
            total += int(found.group(1))
    return total / 1000


def tiny_rows(runs: int) -> list[list[str]]:
    from rbexport.app.sample import write_sample_project
    from rbexport.storage import LocalStorage

    source = DATA / "tiny"
    if not (source / "tasks.json").exists():
        write_sample_project(LocalStorage(source))
    run = ["run", "--source", str(source), "--dest", "{out}", "--full"]
    local, default = paired_medians(runs, ([*run, "--engine", "local"], None), (run, None))
    ephemeral = median_seconds(max(1, runs // 2), [*run, "--engine", "prefect"])
    return [
        ["--engine local (baseline)", f"{local:.2f}", "1.00x", ""],
        [
            "default (auto: local, no API configured)",
            f"{default:.2f}",
            f"{default / local:.2f}x",
            f"<= {TARGET_DEFAULT}x",
        ],
        ["--engine prefect (ephemeral API, new PREFECT_HOME)", f"{ephemeral:.2f}", f"{ephemeral / local:.2f}x", ""],
    ]


def error_rows(runs: int, server: PrefectServer) -> list[list[str]]:
    missing = ["run", "--source", str(DATA / "no-such-project"), "--dest", "{out}"]
    rows = [
        ["missing source folder, default command", median_seconds(runs, missing, expect=2)],
        ["missing source folder, Prefect server", median_seconds(runs, missing, server.url, expect=2)],
    ]
    from rbexport.app.seaweed import SeaweedServer

    keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in keys}
    with SeaweedServer(access_key=keys["AWS_ACCESS_KEY_ID"], secret_key=keys["AWS_SECRET_ACCESS_KEY"]) as seaweed:
        os.environ.update(keys)
        try:
            bucket = [
                "run",
                "--source",
                "s3://no-such-bucket/x",
                "--dest",
                "{out}",
                "--endpoint-url",
                seaweed.endpoint_url,
            ]
            rows.append(
                ["missing bucket on SeaweedFS, Prefect server", median_seconds(runs, bucket, server.url, expect=2)]
            )
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return [[label, f"{seconds:.2f}", f"<= {TARGET_ERROR_SECONDS:.0f} s"] for label, seconds in rows]


def server_rows(runs: int, server: PrefectServer) -> list[list[str]]:
    count = 1000
    run = ["run", "--source", str(small_project(count)), "--dest", "{out}", "--full"]
    local, flow = paired_medians(runs, ([*run, "--engine", "local"], None), (run, server.url))
    return [
        ["local folders, --engine local (baseline)", f"{local:.2f}", f"{count / local:.0f}", "1.00x", ""],
        [
            "local folders, Prefect server",
            f"{flow:.2f}",
            f"{count / flow:.0f}",
            f"{flow / local:.2f}x",
            f"<= {TARGET_SERVER}x",
        ],
    ]


def import_rows() -> list[list[str]]:
    missing = ["run", "--source", str(DATA / "no-such-project"), "--dest", str(DATA / "unused")]
    return [
        ["import rbexport.app.cli (--help)", f"{import_milliseconds(['--help']):.0f}"],
        ["a configuration error (missing source folder)", f"{import_milliseconds(missing):.0f}"],
    ]


def print_tables(runs: int) -> None:
    print(
        table(
            "Start-up: the sample project's 6 tiny tasks, seconds end to end",
            ["command", "seconds", "vs local", "target"],
            tiny_rows(runs),
        ),
        flush=True,
    )
    print(table("The CLI's imports (python -X importtime), ms", ["path", "ms"], import_rows()), flush=True)
    server = PrefectServer()
    try:
        print(
            table("Configuration errors, seconds to exit 2", ["error", "seconds", "target"], error_rows(runs, server)),
            flush=True,
        )
        print(
            table(
                "1,000 small tasks through a Prefect server (PREFECT_API_URL) against --engine local",
                ["where", "seconds", "tasks/s", "vs local", "target"],
                server_rows(min(runs, 5), server),
            ),
            flush=True,
        )
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median); default 5")
    arguments = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    print(f"rbexport engine benchmarks: {os.cpu_count()} cores, medians of {arguments.runs} runs\n")
    print_tables(arguments.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
