"""Faults on real servers: a flaky store, a store that goes away, an export process killed."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import threading
import time

from conftest import ACCESS_KEY, RBEXPORT, SECRET_KEY, bucket_tree, copy_tree, tree
from fault_proxy import FAULTS, FaultProxy
from prefect_helpers import wait_for

from benchmarks.data import write_small_project
from rbexport.app.seaweed import SeaweedServer
from rbexport.engine import run_export
from rbexport.options import ExportOptions
from rbexport.storage import S3Storage


def without_report(files: dict[str, bytes]) -> dict[str, bytes]:
    return {path: data for path, data in files.items() if not path.endswith("export-report.json")}


def test_a_flaky_store_is_retried_through_and_the_export_is_byte_identical(
    prefect_api, seaweed, make_bucket, sample_source
):
    from rbexport.flows.export import export_project

    source, clean, flaky = make_bucket("project"), make_bucket("clean"), make_bucket("flaky")
    copy_tree(sample_source, source)
    variants = ["standard", "semantic-binary"]
    export_project(source.url, clean.url, variants=variants, endpoint_url=seaweed.endpoint_url)
    with FaultProxy(seaweed.endpoint_url, share=0.25, seed=3) as proxy:
        reports = export_project(source.url, flaky.url, variants=variants, endpoint_url=proxy.url)
    assert all(len(report.exported) == 6 and not report.failures for report in reports)
    assert all(proxy.counts[fault] > 0 for fault in FAULTS), proxy.counts  # every kind of fault happened
    assert without_report(bucket_tree(flaky)) == without_report(bucket_tree(clean))


def test_the_store_stopped_mid_run_and_started_again(prefect_api, s3_credentials, tmp_path):
    """The run retries through the outage and gives the clean export; a re-run gives it too."""
    from rbexport.flows.export import export_project

    project = write_small_project(tmp_path / "project", tasks=120)
    with SeaweedServer(tmp_path / "store", access_key=ACCESS_KEY, secret_key=SECRET_KEY) as server:
        source, destination = (
            S3Storage("source", "p", server.endpoint_url),
            S3Storage("export", "run", server.endpoint_url),
        )
        for storage in (source, destination):
            S3Storage(storage.bucket, "", server.endpoint_url).create_bucket()
        copy_tree(project, source)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["reports"] = export_project(
                    source.url, destination.url, endpoint_url=server.endpoint_url, workers=4
                )
            except Exception as error:  # noqa: BLE001 - what the run ended with is the point
                outcome["error"] = error

        # In this test's context: a new thread would start with Prefect's default settings,
        # and run the flow on an ephemeral API of its own instead of the session's server.
        runner = threading.Thread(target=contextvars.copy_context().run, args=(run,))
        runner.start()
        wait_for(lambda: sum(1 for _ in destination.list("segmentations/")) >= 10, 120, "the first masks")
        server.kill()
        time.sleep(3)
        server.restart()
        runner.join(timeout=300)
        assert not runner.is_alive()
        # A 3 s outage and a restart are well inside the retries' back-off (2 + 4 + 8 s per
        # task, on top of botocore's own attempts): the run must come through whole. With
        # retries off (STORAGE_RETRIES = 0) it fails here.
        assert "error" not in outcome, f"the run did not survive the restart: {outcome.get('error')!r}"
        report = outcome["reports"][0]
        assert len(report.exported) == 120 and not report.failures, [f.reason for f in report.failures]

        [again] = run_export(source.url, destination.url, ExportOptions(), server.endpoint_url, incremental=False)
        assert len(again.exported) == 120
        clean = tmp_path / "clean"
        run_export(str(project), str(clean), ExportOptions(), incremental=False)
        stored = bucket_tree(destination)
        for path, data in tree(clean).items():
            if path not in ("export-report.json", ".rbexport/state.json"):
                assert stored[path] == data, path


def test_an_export_killed_mid_run_leaves_the_previous_export_whole(prefect_api, tmp_path):
    project = write_small_project(tmp_path / "project", tasks=100)
    destination = tmp_path / "export"
    # A short lease, so that the next run need not wait two minutes for the killed run's to expire.
    environment = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "home"),
        "RBEXPORT_LEASE_SECONDS": "3",
    }
    command = [RBEXPORT, "run", "--source", str(project), "--dest", str(destination)]
    assert subprocess.run(command, env=environment, capture_output=True).returncode == 0
    previous = (destination / "tasks.json").read_bytes()

    process = subprocess.Popen(
        [*command, "--full", "--variant", "binary:compress=true"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    while "[10/100]" not in line:  # a tenth of the tasks written again: mid-run
        line = process.stderr.readline()
        assert line or process.poll() is None, "the export ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert (destination / "tasks.json").read_bytes() == previous
    for task in json.loads(previous):
        for series in task["series"]:
            assert (destination / series["segmentations"]).exists()
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "100 skipped as unchanged" in result.stdout  # the killed run published nothing
    assert "took over the lease" in result.stdout + result.stderr  # the killed run's, once expired
