"""Deleting what is no longer part of an export: an export of the other layout, when a run
replaces it (`check_layout`: one destination holds one layout), and the files of removed
tasks and orphans (`prune`). Only files the state records, and the export's own files."""

from __future__ import annotations

from ..errors import ConfigurationError
from ..export_tree import REPORT_JSON, STATE_KEY, TASKS_JSON
from ..incremental import ExportState, export_roots
from ..storage import Location, S3Access, Storage, open_storage


def check_layout(
    destination: Location, access: S3Access, variant_folders: list[str] | None, replace: bool, rebuild: bool = False
) -> None:
    """One destination holds one layout: one export at its root, or variant folders.

    A run of the other layout stops here (ConfigurationError) unless `replace` is given;
    then the export already there is deleted first: the files its state records, its
    tasks.json, report and state.
    """
    storage = open_storage(destination.url, access)
    roots = export_roots(info.key for info in storage.list())
    at_root, folders = "" in roots, [root for root in roots if root]
    if variant_folders is None and folders:
        found, wanted, old_roots = f"variant folders ({', '.join(folders)})", "one export at its root", folders
    elif variant_folders is not None and at_root:
        found, wanted, old_roots = "one export at its root", f"variant folders ({', '.join(variant_folders)})", [""]
    else:
        return
    if not replace:
        raise ConfigurationError(
            f"{destination.url} already holds {found} and this run writes {wanted}: choose another "
            "destination, or replace that export (--replace-layout, flow parameter replace_layout)"
        )
    for root in old_roots:
        _delete_export(open_storage(destination.child(root).url if root else destination.url, access), rebuild)


def _delete_export(storage: Storage, rebuild: bool) -> None:
    state = ExportState.load(storage, rebuild)
    for record in state.tasks.values():
        for path in sorted({*record.files, *record.orphans}):
            storage.delete(path)
    for path in (TASKS_JSON, REPORT_JSON, STATE_KEY):
        storage.delete(path)


def prune(destination: Storage, state: ExportState, source_task_ids: set[str]) -> list[str]:
    """Delete files no longer part of the export: removed tasks' and orphans. Returns them."""
    deleted = []
    owned = {path for task_id, record in state.tasks.items() if task_id in source_task_ids for path in record.files}
    for task_id in list(state.tasks):
        record = state.tasks[task_id]
        gone = task_id not in source_task_ids
        for path in sorted(record.orphans + (list(record.files) if gone else [])):
            if path not in owned:
                destination.delete(path)
                deleted.append(path)
        if gone:
            del state.tasks[task_id]
        else:
            record.orphans = []
    return deleted
