"""Speed work that must not change results: mask filling, memory budget, task runners."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import tree

from rbexport.memory import MemoryBudget, parse_size
from rbexport.structures import masks
from rbexport.structures.masks import VoxelIndex, copy_of, relabelling, selection


def filled(fill, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=fill.dtype)
    fill.write(out)
    return out


@pytest.mark.parametrize("density", [0.0, 0.001, 0.2, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_masks_from_positions_equal_masks_from_a_full_look_up(density, dtype):
    rng = np.random.default_rng(int(density * 1000))
    shape = (13, 11, 7)  # 1001 voxels: not a multiple of the eight-byte words
    values = np.where(rng.random(shape) < density, rng.integers(1, 40, shape), 0).astype(dtype)
    values = np.asfortranarray(values)
    index = VoxelIndex(values)
    assert index.sparse == (np.count_nonzero(values) <= masks.DENSE_SHARE * values.size)
    flat = values.ravel(order="F")
    np.testing.assert_array_equal(index.counts, np.bincount(flat, minlength=len(index.counts)))
    np.testing.assert_array_equal(filled(copy_of(index), flat.size), flat)
    members = [3, 7, 39, 500]
    np.testing.assert_array_equal(filled(selection(index, members), flat.size), np.isin(flat, members).astype(np.uint8))
    table = np.zeros(index.table_size, dtype=np.uint16)
    table[1::2] = 300
    np.testing.assert_array_equal(filled(relabelling(index, table), flat.size), table[flat])


def test_positions_are_in_file_order():
    values = np.zeros((4, 3, 2), dtype=np.uint8, order="F")
    values[1, 0, 0] = values[0, 1, 0] = values[3, 2, 1] = 5
    # NIfTI stores the first axis fastest: (1,0,0) is voxel 1, (0,1,0) voxel 4, (3,2,1) voxel 23.
    assert VoxelIndex(values).positions(5).tolist() == [1, 4, 23]
    assert VoxelIndex(np.ascontiguousarray(values)).positions(5).tolist() == [1, 4, 23]


def test_the_memory_budget_holds_tasks_back_but_never_a_lone_one():
    budget = MemoryBudget(limit=100)
    order = []

    def hold_until_b_waits() -> None:
        with budget.reserve(70):
            order.append("a in")
            assert budget.wait_until(lambda b: b.waiting == 1, timeout=60), "b never waited"
            order.append("a out")

    def b() -> None:
        with budget.reserve(70):
            order.append("b in")
        order.append("b out")

    first = threading.Thread(target=hold_until_b_waits)
    first.start()
    assert budget.wait_until(lambda b: b.used == 70, timeout=60)  # a holds its 70
    second = threading.Thread(target=b)
    second.start()
    first.join(), second.join()
    assert order == ["a in", "a out", "b in", "b out"]  # b waited: 140 > 100
    assert budget.waiting == 0
    with budget.reserve(500):  # larger than the budget, but alone: let through
        assert budget.used == 500
    assert budget.used == 0 and budget.peak == 500
    assert parse_size("1.5G") == int(1.5 * 1024**3) and parse_size("512M") == 512 * 1024**2


def test_a_small_memory_budget_still_exports_everything(sample_source, tmp_path, monkeypatch):
    from rbexport import memory
    from rbexport.engine import run_export
    from rbexport.options import ExportOptions

    budget = MemoryBudget(limit=1)  # every task waits for the one before
    monkeypatch.setattr(memory, "process_budget", lambda: budget)
    monkeypatch.setattr("rbexport.task_export.process_budget", lambda: budget)
    [report] = run_export(str(sample_source), str(tmp_path / "export"), ExportOptions(), workers=6)
    assert len(report.exported) == 6
    largest = 48 * 48 * 16 * (2 + memory.WORKING_BYTES_PER_VOXEL)  # one sample volume, int16 input
    assert budget.peak <= 3 * largest  # one task at a time (a task may hold up to three maps)


def test_processes_and_a_dask_cluster_write_the_same_files_as_threads(prefect_api, sample_source, tmp_path):
    from distributed import LocalCluster

    from rbexport.flows.export import export_project

    variants = ["standard", "semantic-binary"]
    export_project(str(sample_source), str(tmp_path / "threads"), variants=variants, task_runner="threads")
    export_project(
        str(sample_source), str(tmp_path / "processes"), variants=variants, task_runner="processes", workers=2
    )
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        reports = export_project(
            str(sample_source),
            str(tmp_path / "dask"),
            variants=variants,
            task_runner="dask",
            dask_address=cluster.scheduler_address,
        )
    assert all(len(report.exported) == 6 for report in reports)

    def written(root):
        files = tree(root)
        return {path: data for path, data in files.items() if not path.endswith("export-report.json")}

    threads = written(tmp_path / "threads")
    assert len(threads) > 20
    assert written(tmp_path / "processes") == threads
    assert written(tmp_path / "dask") == threads
