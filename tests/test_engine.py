"""One fan-out under two engines (rbexport.engine): the Prefect flow and `--engine local`.

Both cut the jobs into batches, retry a task whose storage failed (only that task), turn
an unexpected error into that task's failure, and give the same export, byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import tree

import rbexport.engine
from rbexport.app.sample import write_sample_project, write_training_project
from rbexport.engine import BATCH_BYTES, UNKNOWN_TASK_BYTES, batch_label, make_batches, run_export
from rbexport.errors import TransientStorageError
from rbexport.flows.export import export_project
from rbexport.model import TaskJob
from rbexport.storage import LocalStorage


def job(number: int, weight: int = 0) -> TaskJob:
    return TaskJob(number, f"task-{number:03d}", f"T{number}", {}, "tasks.json", weight=weight)


def test_batches_hold_many_small_tasks_and_a_large_one_alone():
    small = [job(n, 100_000) for n in range(1, 1001)]
    batches = make_batches(small, workers=4)
    assert [len(batch) for batch in batches] == [125] * 8  # two rounds of 4 (BATCH_TASKS is 200)
    assert [item for batch in batches for item in batch] == small  # source order kept
    large = BATCH_BYTES + 1
    mixed = [job(1, 1000), job(2, large), job(3, 1000), job(4, 1000)]
    assert [[item.position for item in batch] for batch in make_batches(mixed, workers=1)] == [[1], [2], [3, 4]]
    # Never fewer batches than workers while there are enough tasks.
    assert [len(batch) for batch in make_batches([job(n, 10) for n in range(1, 7)], workers=4)] == [2, 2, 2]
    assert [len(batch) for batch in make_batches(small[:5], workers=2, batch_size=1)] == [1] * 5
    assert [len(batch) for batch in make_batches(small[:801], workers=4)] == [101] * 7 + [94]
    assert make_batches([], workers=2) == []
    unknown = [job(n) for n in range(1, 41)]  # sizes the listing did not give count as 1 MiB
    assert len(make_batches(unknown, workers=1)) == -(-40 * UNKNOWN_TASK_BYTES // BATCH_BYTES)
    assert batch_label(small[:3]) == "task-001..task-003 (3 tasks)" and batch_label(small[:1]) == "task-001"


def counting(monkeypatch, fail: dict[str, Exception] | None = None, times: int = 0) -> list[str]:
    """Count every export of a task; make the tasks in `fail` raise their error `times` times."""
    attempts: list[str] = []
    real = rbexport.engine.export_task

    def export(job, settings):
        attempts.append(job.task_id)
        if fail and job.task_id in fail and attempts.count(job.task_id) <= times:
            raise fail[job.task_id]
        return real(job, settings)

    monkeypatch.setattr(rbexport.engine, "export_task", export)
    monkeypatch.setattr(rbexport.engine, "BACKOFF_SECONDS", 0)
    return attempts


@pytest.mark.parametrize("engine", ["local", "prefect"])
def test_a_retry_reruns_only_the_task_whose_storage_failed(engine, prefect_api, sample_source, tmp_path, monkeypatch):
    attempts = counting(monkeypatch, {"task-003": TransientStorageError("s3://x: the store answered 503")}, times=2)
    destination = str(tmp_path / "export")
    if engine == "local":
        [report] = run_export(str(sample_source), destination, batch_size=6)
    else:
        [report] = export_project(str(sample_source), destination, batch_size=6)
    assert report.succeeded and len(report.exported) == 6
    assert sorted(attempts) == [
        "task-001",
        "task-002",
        "task-003",
        "task-003",
        "task-003",
        "task-004",
        "task-005",
        "task-006",
    ]


@pytest.mark.parametrize("engine", ["local", "prefect"])
def test_an_unexpected_error_fails_only_its_task(engine, prefect_api, sample_source, tmp_path, monkeypatch):
    counting(monkeypatch, {"task-002": ZeroDivisionError("a bug")}, times=99)
    destination = tmp_path / "export"
    if engine == "local":
        [report] = run_export(str(sample_source), str(destination), batch_size=3)
    else:
        state = export_project(str(sample_source), str(destination), batch_size=3, return_state=True)
        assert state.is_failed() and "1 of 6 tasks failed" in state.message
        report = state.result(raise_on_failure=False).report[0]
    assert [failure.reason for failure in report.failures] == ["unexpected error: ZeroDivisionError: a bug"]
    assert len(report.exported) == 5


def test_the_flow_names_each_batch_task_run_after_its_tasks(prefect_api, sample_source, tmp_path):
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state = export_project(str(sample_source), str(tmp_path / "export"), batch_size=4, return_state=True)
    assert state.is_completed()

    async def names():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            return sorted(run.name for run in runs)

    assert [name for name in asyncio.run(names()) if name.startswith("export-task")] == [
        "export-task-001..task-004 (4 tasks)",
        "export-task-005..task-006 (2 tasks)",
    ]


def test_both_engines_write_the_same_export(run_cli, tmp_path):
    source = tmp_path / "source"
    write_sample_project(LocalStorage(source), with_images=True)
    training = tmp_path / "training"
    write_training_project(LocalStorage(training), tasks=4)
    exports = {}
    for engine in ("local", "prefect"):
        destination = tmp_path / engine
        result = run_cli(
            "run",
            "--engine",
            engine,
            "--source",
            str(source),
            "--dest",
            str(destination),
            "--images-as-nifti",
            "--variant",
            "standard",
            "--variant",
            "semantic-binary",
            "--variant",
            "raw:with_images=true,compress=false",
        )
        assert result.returncode == 0, result.stderr
        result = run_cli(
            "run",
            "--engine",
            engine,
            "--source",
            str(training),
            "--dest",
            str(destination / "ds"),
            "--layout",
            "nnunet",
            "--channels",
            "T1,FLAIR",
        )
        assert result.returncode == 0, result.stderr
        exports[engine] = tree(destination)
    assert exports["local"].keys() == exports["prefect"].keys()
    for path, data in exports["local"].items():
        if path.endswith("export-report.json"):  # timings and the destination differ
            local, prefect = json.loads(data), json.loads(exports["prefect"][path])
            for report in (local, prefect):
                report.pop("seconds"), report.pop("timings"), report.pop("destination")
            assert local == prefect, path
        else:
            assert data == exports["prefect"][path], path


def test_the_local_engine_never_imports_prefect(sample_source, tmp_path):
    code = (
        "import sys; from rbexport.app.cli import main; "
        f"code = main(['run', '--engine', 'local', '--source', {str(sample_source)!r}, '--dest', {str(tmp_path / 'x')!r}]); "
        "loaded = sorted({name.split('.')[0] for name in sys.modules} & {'prefect', 'flows', 'tasks'}); "
        "print('loaded:', loaded); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout and "6 tasks exported" in result.stdout


def test_the_local_engine_refuses_what_needs_prefect(run_cli, sample_source, tmp_path):
    result = run_cli(
        "run",
        "--engine",
        "local",
        "--source",
        str(sample_source),
        "--dest",
        str(tmp_path / "x"),
        "--credentials-block",
        "s3-keys",
    )
    assert (
        result.returncode == 2
        and "--credentials-block reads a Prefect block: it needs --engine prefect" in result.stderr
    )
    assert not (tmp_path / "x").exists()


def test_the_run_graph_keeps_its_edges(prefect_api, sample_source, tmp_path):
    """The plan and outcomes reach Prefect quoted (not walked), yet the UI's graph still
    links read-source to every batch, and every batch and read-source to publish-export."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state = export_project(str(sample_source), str(tmp_path / "export"), batch_size=2, return_state=True)
    assert state.is_completed()

    async def inputs():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            names = {run.id: run.name for run in runs}
            return {
                run.name: sorted(names[item.id] for items in run.task_inputs.values() for item in items) for run in runs
            }

    upstream = asyncio.run(inputs())
    [read] = [name for name in upstream if name.startswith("read-source")]
    [publish] = [name for name in upstream if name.startswith("publish-export")]
    batches = sorted(name for name in upstream if name.startswith("export-task"))
    assert len(batches) == 3
    assert all(upstream[batch] == [read] for batch in batches), upstream
    assert upstream[publish] == sorted([read, *batches]), upstream
