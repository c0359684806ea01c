"""The `rbexport` command as a user runs it: exit codes, messages, progress, summary."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ACCESS_KEY, after_engine_line, tree
from spec_helpers import NO_DATASET


def assert_clean(stderr: str) -> None:
    """Expected failures never show a traceback, nor Prefect's shutdown noise."""
    assert "Traceback" not in stderr
    assert "CancelledError" not in stderr


def test_run_exits_0_and_prints_the_summary(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    result = run_cli("run", "--source", str(sample_source), "--dest", str(destination))
    assert result.returncode == 0, result.stderr
    assert "6 tasks exported, 0 failed; 14 files" in result.stdout  # 12 masks, tasks.json, state
    assert f"report: {destination}/export-report.json" in result.stdout
    assert_clean(result.stderr)
    # Not a terminal: plain progress lines, the last one complete.
    assert "[6/6] 6 exported, 0 failed" in result.stderr
    written = tree(destination)
    assert "segmentations/Brain_004/T2/instance-3.nii.gz" in written
    assert json.loads(written["tasks.json"])[0]["taskId"] == "task-001"


def test_a_failed_task_exits_1_and_the_rest_is_exported(run_cli, sample_source, tmp_path):
    (sample_source / "masks/brain-002-T1.nii.gz").unlink()
    destination = tmp_path / "export"
    result = run_cli("run", "--source", str(sample_source), "--dest", str(destination))
    assert result.returncode == 1, result.stderr
    assert "5 tasks exported, 1 failed" in result.stdout
    assert "failed task-002: masks/brain-002-T1.nii.gz: mask file not found" in result.stdout
    assert "task-002 failed: masks/brain-002-T1.nii.gz: mask file not found" in result.stderr
    assert_clean(result.stderr)
    tasks = json.loads((destination / "tasks.json").read_text())
    assert [task["taskId"] for task in tasks] == ["task-001", "task-003", "task-004", "task-005", "task-006"]
    report = json.loads((destination / "export-report.json").read_text())
    assert report["failed"] == ["task-002"]
    assert report["failures"] == [
        {"taskId": "task-002", "file": "masks/brain-002-T1.nii.gz", "reason": "mask file not found"}
    ]
    assert not (destination / "segmentations/Brain_002").exists()


def test_usage_errors_exit_2_with_one_line(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    cases = {
        ("run", "--source", str(sample_source)): "the following arguments are required: --dest",
        (
            "run",
            "--source",
            str(sample_source),
            "--dest",
            str(destination),
            "--binary-mask",
            "--single-mask",
        ): "not allowed with argument",
        ("run", "--source", "s3://A/x", "--dest", str(destination)): "'A' is not a valid bucket name",
        ("run", "--source", "ftp://host/x", "--dest", str(destination)): "unsupported scheme 'ftp'",
        ("run", "--source", str(sample_source), "--dest", str(sample_source / "out")): "lies inside the source",
        (
            "run",
            "--source",
            str(sample_source),
            "--dest",
            str(destination),
            "--endpoint-url",
            "localhost:9",
        ): "must start with http:// or https://",
        (
            "run",
            "--source",
            str(sample_source),
            "--dest",
            str(destination),
            "--dask-address",
            "tcp://h:1",
        ): "--dask-address goes with --task-runner dask",
        (
            "run",
            "--source",
            str(sample_source),
            "--dest",
            str(destination),
            "--task-runner",
            "gpu",
        ): "invalid choice: 'gpu'",
    }
    for arguments, message in cases.items():
        result = run_cli(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert message in result.stderr, (arguments, result.stderr)
        assert_clean(result.stderr)
    assert not destination.exists()


def test_invalid_tasks_json_exits_2_before_anything_is_written(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    for content, message in (
        ('[{"taskId": "a",', "tasks.json is not valid JSON (line 1, column 17"),
        ('{"taskId": "a"}', "tasks.json holds a JSON object, not a list of tasks"),
    ):
        (sample_source / "tasks.json").write_text(content)
        result = run_cli("run", "--source", str(sample_source), "--dest", str(destination))
        assert result.returncode == 2
        # The engine's line, then one line for the error (found by reading the source).
        [error] = after_engine_line(result.stderr)
        assert error.startswith("rbexport: error: ") and message in error, result.stderr
        assert not destination.exists()


def test_unreachable_endpoint_exits_2(run_cli, tmp_path):
    result = run_cli(
        "run",
        "--source",
        "s3://nowhere/project",
        "--dest",
        str(tmp_path / "export"),
        "--endpoint-url",
        "http://127.0.0.1:9",
    )
    assert result.returncode == 2
    assert "rbexport: error: cannot reach s3://nowhere at http://127.0.0.1:9" in result.stderr
    assert_clean(result.stderr)


def test_denied_access_exits_2_without_leaking_the_secret(run_cli, seaweed, make_bucket, sample_source, tmp_path):
    source = make_bucket("project")
    wrong_secret = "definitely-not-the-secret-4242"
    result = run_cli(
        "run",
        "--source",
        source.url,
        "--dest",
        str(tmp_path / "export"),
        "--endpoint-url",
        seaweed.endpoint_url,
        env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": wrong_secret},
    )
    assert result.returncode == 2
    assert "access denied" in result.stderr
    assert wrong_secret not in result.stderr + result.stdout
    assert_clean(result.stderr)


def test_engine_prefect_uses_an_ephemeral_api_quietly(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination),
        "--single-mask",
        "--engine",
        "prefect",
        ephemeral=True,
    )
    assert result.returncode == 0, result.stderr
    assert_clean(result.stderr)
    assert result.stderr.splitlines()[0] == (
        "rbexport: Prefect flow on an ephemeral Prefect API (--engine prefect; no Prefect API configured)"
    )
    assert "temporary server" not in result.stderr  # Prefect's console logs are off without --verbose
    assert not (destination / "segmentations/Brain_004/T2").exists()  # single mask: no instance files
    assert not api_servers_of(tmp_path / "prefect-home"), "the ephemeral API outlived the command"


def api_servers_of(prefect_home: Path) -> list[int]:
    """The uvicorn processes serving a Prefect API whose PREFECT_HOME is `prefect_home`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            environment = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"uvicorn" in command and f"PREFECT_HOME={prefect_home}".encode() in environment.split(b"\0"):
            found.append(int(proc.name))
    return found


def test_options_reach_the_export(run_cli, sample_source, tmp_path):
    destination = tmp_path / "export"
    result = run_cli(
        "run",
        "--source",
        str(sample_source),
        "--dest",
        str(destination),
        "--semantic",
        "--binary-mask",
        "--no-consensus",
        "--uncompressed",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((destination / "export-report.json").read_text())
    assert report["options"] == {
        "semantic_mask": True,
        "binary_mask": True,
        "no_consensus": True,
        "compress": False,
        "mask_format": "nifti",
        "seg_type": "auto",
        "seg_compression": "none",
        "with_images": False,
        "image_format": "original",
        **NO_DATASET,
    }
    written = tree(destination)
    assert "segmentations/Brain_001/T1/category-1.nii" in written
    assert not any(path.endswith(".gz") for path in written)
    consensus = json.loads(written["tasks.json"])[4]
    assert "consensusTasks" not in consensus and "segmentations/Brain_005/T1_1.nii" not in written


def test_demo_exports_the_sample_project_on_seaweedfs(run_cli, tmp_path):
    output = tmp_path / "demo-output"
    result = run_cli("demo", "--output", str(output), timeout=600)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stderr)
    for line in (
        "SeaweedFS (S3) running on http://127.0.0.1:",
        "s3://rbexport-export:",
        "instance-2.nii.gz",
        "category-3.nii.gz",
        "T1_2.nii.gz",
        "SeaweedFS stopped",
    ):
        assert line in result.stdout
    written = tree(output)
    assert {"standard/tasks.json", "semantic/tasks.json", "standard/export-report.json"} <= set(written)
    assert Path(output / "semantic/segmentations/Brain_004/T2/category-1.nii.gz").exists()


def test_progress_bar_on_a_terminal(prefect_api, sample_source, tmp_path):
    import os
    import pty
    import subprocess

    from conftest import RBEXPORT

    leader, follower = pty.openpty()
    environment = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "home"),
        "COLUMNS": "100",
        "TERM": "xterm",
    }
    process = subprocess.Popen(
        [RBEXPORT, "run", "--source", str(sample_source), "--dest", str(tmp_path / "export")],
        stdout=follower,
        stderr=follower,
        env=environment,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0
    text = output.decode(errors="replace")
    assert "━" in text and "6/6" in text  # the bar, at its end
    assert "[6/6]" not in text  # not the plain lines
    assert "6 tasks exported, 0 failed" in text


def test_version_is_the_installed_distributions(run_cli):
    from importlib.metadata import version

    import rbexport

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"rbexport {rbexport.__version__}"
    assert version("rbexport") == rbexport.__version__  # pyproject.toml reads the one place
