"""Hostile input, through the command line: whatever a source, a destination or a state
file holds, a run ends with the documented exit code and one line per problem (never a
traceback, a hang or a memory blow-up), writes nothing outside the destination, reads
nothing outside the source, deletes nothing it did not write, and prints nothing that
forges a line or moves the cursor.

Every test runs `rbexport run --engine local` (no Prefect) on a small project of a good
task and the hostile one, except where the case is about Prefect's logs or S3.
"""

from __future__ import annotations

import atexit
import gzip
import json
import os
import resource
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import RBEXPORT, tree

from rbexport.app.sample import TAXONOMY, nifti_bytes

LABELS = np.zeros((6, 5, 4), dtype=np.uint8)
LABELS[1:3, 1:3, 1:3] = 1
GOOD_MASK = nifti_bytes(LABELS)
SEGMENT_MAP = {"1": {"category": "Glioma"}}
# Address space for a run that must not read without bound (a run of this project needs ~1 GB).
MEMORY_LIMIT = 2 * 1024**3


def task(task_id: str, mask: str = "masks/good.nii.gz", segment_map: dict | None = None, **fields) -> dict:
    series = {"name": "T1", "segmentations": mask, "segmentMap": SEGMENT_MAP if segment_map is None else segment_map}
    return {"taskId": task_id, "series": [series], **fields}


def project(root: Path, *tasks: dict, masks: dict[str, bytes] | None = None) -> Path:
    """A source folder: a good task first, then `tasks`; masks/good.nii.gz and `masks`."""
    (root / "masks").mkdir(parents=True)
    (root / "masks" / "good.nii.gz").write_bytes(GOOD_MASK)
    for name, data in (masks or {}).items():
        (root / name).write_bytes(data)
    (root / "tasks.json").write_text(json.dumps([task("good"), *tasks]))
    (root / "taxonomy.json").write_text(json.dumps(TAXONOMY))
    return root


def rbexport(*arguments: str, umask: int | None = None, memory: int | None = None, timeout: float = 120, **env):
    """`rbexport <arguments>` in a process of its own (with this umask, and at most `memory`
    bytes of address space: a run that reads without bound dies instead of the machine)."""

    def limits() -> None:
        if umask is not None:
            os.umask(umask)
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    environment = {**os.environ, **env}
    return subprocess.run(
        [RBEXPORT, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        preexec_fn=limits,
        errors="surrogateescape",
    )


def run_local(source: Path | str, destination: Path | str, *options: str, **keywords):
    return rbexport(
        "run", "--engine", "local", "--source", str(source), "--dest", str(destination), *options, **keywords
    )


def assert_clean(result) -> None:
    """No traceback, no raw control character in anything the run printed."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert not any(ord(character) < 32 and character != "\n" for character in output), repr(output)


def assert_usage_error(result, *fragments: str) -> str:
    """Exit 2 with one `rbexport: error:` line holding every fragment; returns that line."""
    assert_clean(result)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rbexport: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_task_failed(result, destination: Path, task_id: str, *fragments: str) -> str:
    """Exit 1: the good task exported, `task_id` failed with one line holding every fragment."""
    assert_clean(result)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("  failed ")]
    assert len(failed) == 1, result.stdout
    assert failed[0].startswith(f"  failed {task_id}: "), failed[0]
    for fragment in fragments:
        assert fragment in failed[0], failed[0]
    exported = json.loads((destination / "tasks.json").read_text())
    assert [entry["taskId"] for entry in exported] == ["good"]
    return failed[0]


def files_under(folder: Path) -> dict[str, bytes]:
    return tree(folder) if folder.exists() else {}


# --- Locations and files -------------------------------------------------------------


def test_a_mask_symlinked_to_a_file_outside_the_source_is_not_read(tmp_path):
    secret = tmp_path / "elsewhere" / "secret.nii.gz"
    secret.parent.mkdir()
    secret.write_bytes(nifti_bytes(LABELS * 2))
    source = project(tmp_path / "source", task("linked", "masks/linked.nii.gz"))
    (source / "masks" / "linked.nii.gz").symlink_to(secret)
    result = run_local(source, tmp_path / "export")
    assert_task_failed(result, tmp_path / "export", "linked", "masks/linked.nii.gz", "symbolic link", "outside")
    assert not any("linked" in path for path in files_under(tmp_path / "export"))


def test_a_folder_symlinked_out_of_the_source_is_not_read(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.nii.gz").write_bytes(GOOD_MASK)
    source = project(tmp_path / "source", task("linked", "shared/a.nii.gz"))
    (source / "shared").symlink_to(outside)
    result = run_local(source, tmp_path / "export")
    assert_task_failed(result, tmp_path / "export", "linked", "shared/a.nii.gz", "symbolic link", "outside")


def test_a_symlink_that_stays_inside_the_source_is_followed(tmp_path):
    source = project(tmp_path / "source", task("linked", "masks/same.nii.gz"))
    (source / "masks" / "same.nii.gz").symlink_to("good.nii.gz")
    result = run_local(source, tmp_path / "export")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "export/segmentations/linked/T1.nii.gz").read_bytes() == (
        tmp_path / "export/segmentations/good/T1.nii.gz"
    ).read_bytes()


def test_a_tasks_json_symlinked_out_of_the_source_is_a_usage_error(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps([task("stolen")]))
    source = project(tmp_path / "source")
    (source / "tasks.json").unlink()
    (source / "tasks.json").symlink_to(outside)
    assert_usage_error(run_local(source, tmp_path / "export"), "tasks.json", "symbolic link", "outside")
    assert not (tmp_path / "export").exists()


def test_a_mask_that_is_a_loop_of_symlinks_fails_its_task(tmp_path):
    source = project(tmp_path / "source", task("loop", "masks/loop.nii.gz"))
    (source / "masks" / "loop.nii.gz").symlink_to("loop.nii.gz")
    result = run_local(source, tmp_path / "export")
    assert_task_failed(result, tmp_path / "export", "loop", "masks/loop.nii.gz", "Too many levels of symbolic links")


def test_a_mask_symlinked_to_dev_zero_fails_its_task_at_once(tmp_path):
    source = project(tmp_path / "source", task("zero", "masks/zero.nii.gz"))
    (source / "masks" / "zero.nii.gz").symlink_to("/dev/zero")
    result = run_local(source, tmp_path / "export", memory=MEMORY_LIMIT)
    assert_task_failed(result, tmp_path / "export", "zero", "masks/zero.nii.gz", "symbolic link", "outside")


def test_a_mask_that_is_a_named_pipe_fails_its_task_without_waiting(tmp_path):
    source = project(tmp_path / "source", task("pipe", "masks/pipe.nii.gz"))
    os.mkfifo(source / "masks" / "pipe.nii.gz")
    result = run_local(source, tmp_path / "export", timeout=90)
    assert_task_failed(result, tmp_path / "export", "pipe", "masks/pipe.nii.gz", "named pipe, not a regular file")


def test_a_mask_that_is_a_socket_fails_its_task(tmp_path):
    source = project(tmp_path / "source", task("socket", "masks/s.nii.gz"))
    listener = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(source / "masks")  # a socket's path may hold 107 bytes: bind it by its relative name
    try:
        listener.bind("s.nii.gz")
    finally:
        os.chdir(here)
    try:
        result = run_local(source, tmp_path / "export", timeout=90)
    finally:
        listener.close()
    assert_task_failed(result, tmp_path / "export", "socket", "masks/s.nii.gz", "socket, not a regular file")


def test_a_task_file_that_is_a_named_pipe_is_a_usage_error_not_skipped(tmp_path):
    source = project(tmp_path / "source")
    (source / "tasks").mkdir()
    (source / "tasks/a.json").write_text(json.dumps(task("a")))
    os.mkfifo(source / "tasks/b.json")
    assert_usage_error(run_local(source, tmp_path / "export", timeout=90), "tasks/b.json", "named pipe")


def test_a_tasks_json_larger_than_any_source_json_is_not_read(tmp_path):
    source = project(tmp_path / "source")
    with open(source / "tasks.json", "r+b") as tasks:
        tasks.truncate(3 * 1024**3)  # sparse
    result = run_local(source, tmp_path / "export", memory=MEMORY_LIMIT)
    assert_usage_error(result, "tasks.json", "holds more than 1.0 GiB")


def test_a_tasks_json_that_is_a_named_pipe_is_a_usage_error(tmp_path):
    source = project(tmp_path / "source")
    (source / "tasks.json").unlink()
    os.mkfifo(source / "tasks.json")
    assert_usage_error(run_local(source, tmp_path / "export", timeout=90), "tasks.json", "named pipe")


def test_an_image_item_that_is_a_named_pipe_fails_its_task(tmp_path):
    source = project(tmp_path / "source")
    good, pipe = task("good"), task("pipe")
    good["series"][0]["items"] = "masks/good.nii.gz"  # a NIfTI image, copied as it is
    pipe["series"][0]["items"] = "images/i.dcm"
    (source / "tasks.json").write_text(json.dumps([good, pipe]))
    (source / "images").mkdir()
    os.mkfifo(source / "images/i.dcm")
    result = run_local(source, tmp_path / "export", "--with-images", timeout=90)
    assert_task_failed(result, tmp_path / "export", "pipe", "images/i.dcm", "named pipe")


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_a_mask_far_larger_than_its_header_says_is_not_read_whole(tmp_path, name):
    """A mask whose header announces 120 bytes of voxels, in a 20 GB (sparse) file."""
    source = project(tmp_path / "source", task("huge", f"masks/{name}"))
    with open(source / "masks" / name, "wb") as huge:
        huge.write(nifti_bytes(LABELS, compress=name.endswith(".gz")))
        huge.truncate(20 * 1024**3)
    result = run_local(source, tmp_path / "export", memory=MEMORY_LIMIT)
    assert_task_failed(result, tmp_path / "export", "huge", f"masks/{name}", "more than", "header announces")


def test_a_symlink_in_the_destination_is_never_written_through(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    destination = tmp_path / "export"
    destination.mkdir()
    (destination / "segmentations").symlink_to(outside)
    source = project(tmp_path / "source")
    assert_usage_error(run_local(source, destination), "segmentations", "symbolic link")
    assert files_under(outside) == {}


def test_a_task_folder_symlinked_out_of_the_destination_is_never_written_through(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    source = project(tmp_path / "source")
    destination = tmp_path / "export"
    assert run_local(source, destination).returncode == 0
    (destination / "segmentations/good/T1.nii.gz").unlink()
    (destination / "segmentations/good").rmdir()
    (destination / "segmentations/good").symlink_to(outside)
    assert_usage_error(run_local(source, destination, "--full"), "segmentations/good", "symbolic link")
    assert files_under(outside) == {}


def test_a_destination_file_symlinked_outside_is_never_read(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text("[]")
    destination = tmp_path / "export"
    destination.mkdir()
    (destination / "tasks.json").symlink_to(outside)
    assert_usage_error(run_local(project(tmp_path / "source"), destination), "tasks.json", "symbolic link", "outside")
    assert outside.read_text() == "[]"


@pytest.mark.parametrize(
    "inside, options",
    [
        ("images", ["--with-images"]),
        ("standard/segmentations", ["--variant", "standard", "--variant", "semantic"]),
        ("semantic", ["--variant", "standard", "--variant", "semantic"]),
        ("imagesTr", ["--layout", "nnunet", "--modality", "MR"]),
        ("labelsTr", ["--layout", "msd", "--modality", "MR"]),
        (".rbexport", []),
        ("standard/.rbexport", ["--variant", "standard", "--variant", "binary"]),
    ],
)
def test_a_source_inside_the_export_tree_is_refused_before_anything_is_written(tmp_path, inside, options):
    destination = tmp_path / "export"
    source = project(destination / inside / "project")
    before = tree(destination)
    assert_usage_error(run_local(source, destination, *options), "lies inside")
    assert tree(destination) == before


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_exported_files_get_the_umask_permissions(tmp_path, umask, mode):
    destination = tmp_path / "export"
    result = run_local(project(tmp_path / "source"), destination, umask=umask)
    assert result.returncode == 0, result.stderr
    files = [path for path in destination.rglob("*") if path.is_file()]
    assert {path.relative_to(destination).as_posix() for path in files} >= {
        "tasks.json",
        "segmentations/good/T1.nii.gz",
    }
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {mode}


# --- Untrusted metadata: NIfTI headers ------------------------------------------------


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """A .nii.gz with the uncompressed header's bytes at `offset` replaced (little-endian `fmt`)."""
    raw = bytearray(gzip.decompress(data))
    struct.pack_into("<" + fmt, raw, offset, *values)
    return gzip.compress(bytes(raw), mtime=0)


DATATYPE, VOX_OFFSET, SCL_INTER, PIXDIM_1, QFORM_CODE, QUATERN_B = 70, 108, 116, 80, 252, 256
QFORMED = patched(GOOD_MASK, QFORM_CODE, "hh", 1, 0)  # the qform decides (no sform)


@pytest.mark.parametrize(
    "mask, reason",
    [
        (patched(GOOD_MASK, VOX_OFFSET, "f", float("nan")), "corrupt header: vox_offset is nan"),
        (patched(GOOD_MASK, VOX_OFFSET, "f", float("inf")), "corrupt header: vox_offset is inf"),
        (patched(GOOD_MASK, VOX_OFFSET, "f", -float("inf")), "corrupt header: vox_offset is -inf"),
        (patched(GOOD_MASK, VOX_OFFSET, "f", -100.0), "corrupt header: vox_offset is -100"),
        (patched(GOOD_MASK, SCL_INTER, "f", float("nan")), "scaling"),
        (patched(GOOD_MASK, PIXDIM_1, "f", float("nan")), "voxel sizes (pixdim)"),
        (patched(QFORMED, QUATERN_B, "fff", 5.0, 5.0, 5.0), "no voxel-to-world transform"),
        (patched(GOOD_MASK, DATATYPE, "h", 0), "voxel type code 0"),
    ],
    ids=[
        "vox-offset-nan",
        "vox-offset-inf",
        "vox-offset-minus-inf",
        "vox-offset-negative",
        "inter-nan",
        "pixdim-nan",
        "quaternion",
        "datatype-unknown",
    ],
)
def test_a_header_number_that_is_nan_inf_or_out_of_range_fails_its_task(tmp_path, mask, reason):
    source = project(tmp_path / "source", task("bad", "masks/bad.nii.gz"), masks={"masks/bad.nii.gz": mask})
    result = run_local(source, tmp_path / "export")
    assert_task_failed(result, tmp_path / "export", "bad", "masks/bad.nii.gz", reason)


# --- Untrusted metadata: JSON, segmentMap, taxonomy ------------------------------------


def test_a_tasks_json_nested_ten_thousand_levels_is_a_usage_error(tmp_path):
    source = project(tmp_path / "source")
    (source / "tasks.json").write_text("[" * 10_000 + "]" * 10_000)
    assert_usage_error(run_local(source, tmp_path / "export"), "tasks.json", "nests deeper than")
    assert not (tmp_path / "export").exists()


def test_a_task_nested_too_deeply_for_python_is_a_usage_error(tmp_path):
    """Deep enough to parse, too deep for what walks a task later (json.dumps, deepcopy)."""
    deep = {"taskId": "deep", "metaData": json.loads("[" * 900 + "]" * 900)}
    source = project(tmp_path / "source")
    (source / "tasks.json").write_text(json.dumps([task("good"), deep]))
    assert_usage_error(run_local(source, tmp_path / "export"), "tasks.json", "nests deeper than")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_number_that_json_does_not_have_is_a_usage_error(tmp_path, number):
    """Python's json reads NaN and Infinity (and 1e400 as infinity); tasks.json would then
    be written with values no other JSON reader accepts."""
    source = project(tmp_path / "source")
    (source / "tasks.json").write_text('[{"taskId": "t", "series": [], "metaData": {"score": ' + number + "}}]")
    assert_usage_error(run_local(source, tmp_path / "export"), "tasks.json", "not JSON this export reads")


def test_a_number_of_thousands_of_digits_is_a_usage_error(tmp_path):
    source = project(tmp_path / "source")
    (source / "tasks.json").write_text('[{"taskId": "big", "n": ' + "9" * 5000 + "}]")
    assert_usage_error(run_local(source, tmp_path / "export"), "tasks.json", "not JSON this export reads")


def test_a_previous_tasks_json_nested_too_deeply_is_exported_again(tmp_path):
    destination = tmp_path / "export"
    destination.mkdir()
    (destination / "tasks.json").write_text("[" * 10_000 + "]" * 10_000)
    result = run_local(project(tmp_path / "source"), destination)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [entry["taskId"] for entry in json.loads((destination / "tasks.json").read_text())] == ["good"]


@pytest.mark.parametrize(
    "key",
    [" 1", "1 ", "\u00b2", "\u0661", "\uff11", "9" * 5000],
    ids=["space", "trailing", "superscript", "arabic", "fullwidth", "5000-digits"],
)
def test_a_segment_map_key_that_is_not_ascii_digits_fails_its_task(tmp_path, key):
    source = project(tmp_path / "source", task("key", segment_map={key: {"category": "Glioma"}}))
    result = run_local(source, tmp_path / "export")
    reason = "is outside 1..65535" if len(key) > 10 else "is not an integer label value"
    assert_task_failed(result, tmp_path / "export", "key", reason)


def test_a_class_id_too_large_for_the_label_type_is_a_usage_error(tmp_path):
    source = project(tmp_path / "source")
    taxonomy = {"objectTypes": [*TAXONOMY["objectTypes"], {"category": "Huge", "classId": 70_000}]}
    (source / "taxonomy.json").write_text(json.dumps(taxonomy))
    assert_usage_error(run_local(source, tmp_path / "export", "--semantic"), "taxonomy.json", "'Huge'", "70000")
    assert not (tmp_path / "export").exists()


def test_two_categories_with_one_class_id_are_a_usage_error_naming_both(tmp_path):
    source = project(tmp_path / "source")
    taxonomy = {"objectTypes": [*TAXONOMY["objectTypes"], {"category": "Tumour", "classId": 0}]}
    (source / "taxonomy.json").write_text(json.dumps(taxonomy))
    assert_usage_error(run_local(source, tmp_path / "export", "--semantic"), "'Glioma'", "'Tumour'", "classId 0")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "name, folder", [("COM\u00b9", "_COM\u00b9"), ("lpt\u00b2.v2", "_lpt\u00b2.v2"), ("COM\u00b3 ", "_COM\u00b3")]
)
def test_windows_reserved_names_with_superscript_digits_get_an_underscore(tmp_path, name, folder):
    source = project(tmp_path / "source", task("reserved", name=name))
    assert run_local(source, tmp_path / "export").returncode == 0
    assert (tmp_path / "export/segmentations" / folder / "T1.nii.gz").is_file()


def test_names_that_differ_only_in_unicode_normalization_are_repeats(tmp_path):
    """`é` as one character and as `e` + a combining accent (as macOS writes it): one
    name, a letter (not `e` and a character replaced by `-`), once."""
    source = project(tmp_path / "source", task("composed", name="caf\u00e9"), task("decomposed", name="cafe\u0301"))
    assert run_local(source, tmp_path / "export").returncode == 0
    entries = json.loads((tmp_path / "export/tasks.json").read_text())
    folders = [entry["series"][0]["segmentations"].split("/")[1] for entry in entries]
    assert folders == ["good", "caf\u00e9", "caf\u00e9_1"]


def test_text_that_is_not_unicode_is_kept_as_its_json_escape(tmp_path):
    """A lone surrogate (valid JSON, not Unicode) in a taskId and a name."""
    source = project(tmp_path / "source")
    (source / "tasks.json").write_text('[{"taskId": "lone-\\ud800", "name": "n\\udfff", "series": []}]')
    result = run_local(source, tmp_path / "export")
    assert_clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "export/tasks.json").read_text())[0]["taskId"] == "lone-\ud800"


def test_a_mask_path_that_is_not_unicode_fails_its_task(tmp_path):
    source = project(tmp_path / "source")
    tasks = json.loads((source / "tasks.json").read_text())
    tasks.append(task("lone", "masks/\ud800.nii.gz"))
    (source / "tasks.json").write_text(json.dumps(tasks))
    result = run_local(source, tmp_path / "export")
    assert_task_failed(result, tmp_path / "export", "lone", "not Unicode")


# --- Untrusted metadata: the state -----------------------------------------------------

STATE = ".rbexport/state.json"


_EXPORTED: dict[tuple[str, ...], Path] = {}


def exported(tmp_path: Path, *options: str) -> tuple[Path, Path]:
    """A two-task source and its export, in tmp_path: exported once by the CLI (per options)
    and copied for every later test, times kept (the export is what a run wrote)."""
    if options not in _EXPORTED:
        first = Path(tempfile.mkdtemp(prefix="rbexport-hostile-"))
        atexit.register(shutil.rmtree, first, ignore_errors=True)
        source, destination = project(first / "source", task("second")), first / "export"
        result = run_local(source, destination, *options)
        assert result.returncode == 0, result.stdout + result.stderr
        _EXPORTED[options] = first
    for name in ("source", "export"):
        shutil.copytree(_EXPORTED[options] / name, tmp_path / name, symlinks=True)
    return tmp_path / "source", tmp_path / "export"


def tamper(destination: Path, change) -> None:
    state = json.loads((destination / STATE).read_text())
    change(state, state["tasks"]["good"])
    (destination / STATE).write_text(json.dumps(state))


@pytest.mark.parametrize(
    "orphan",
    [
        "../victim.txt",
        "segmentations/../../victim.txt",
        "/VICTIM",
        "tasks.json",
        ".rbexport/state.json",
        "raw/keep.txt",
    ],
)
def test_a_tampered_state_never_makes_prune_delete_what_the_export_did_not_write(tmp_path, orphan):
    source, destination = exported(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (destination / "raw").mkdir()
    (destination / "raw/keep.txt").write_text("keep me too")
    orphan = orphan.replace("/VICTIM", str(victim))
    tamper(destination, lambda state, record: record["orphans"].append(orphan))
    before = tree(destination)
    assert_usage_error(run_local(source, destination, "--prune"), STATE, "cannot be used", "--full")
    assert victim.read_text() == "keep me" and tree(destination) == before

    result = run_local(source, destination, "--prune", "--full")  # rebuilds the state
    assert result.returncode == 0, result.stdout + result.stderr
    assert victim.read_text() == "keep me" and (destination / "raw/keep.txt").read_text() == "keep me too"
    assert (destination / "tasks.json").exists()
    assert json.loads((destination / STATE).read_text())["tasks"]["good"]["orphans"] == []


def test_a_tampered_state_never_makes_verify_read_outside_the_export(tmp_path):
    _, destination = exported(tmp_path)
    (tmp_path / "victim.txt").write_text("secret")
    tamper(destination, lambda state, record: record["files"].update({"../victim.txt": 6}))
    result = rbexport("verify", str(destination))
    assert_clean(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "state.json" in result.stdout and "victim" in result.stdout


def test_verify_shows_paths_from_a_tampered_tasks_json_escaped(tmp_path):
    _, destination = exported(tmp_path)
    entries = json.loads((destination / "tasks.json").read_text())
    entries[0]["series"][0]["segmentations"] = "segmentations/\x1b[2Jx\nrbexport: every file as recorded"
    (destination / "tasks.json").write_text(json.dumps(entries))
    result = rbexport("verify", str(destination))
    assert_clean(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert r"segmentations/\e[2Jx\nrbexport: every file as recorded" in result.stdout


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda state, record: state.update(format=99), "format 99, not 1"),
        (lambda state, record: state.update(tasks=[]), "tasks is not a JSON object"),
        (lambda state, record: record["files"].update({"segmentations/good/T1.nii.gz": -5}), "-5"),
        (lambda state, record: record["files"].update({"segmentations/good/T1.nii.gz": 1e308}), "whole number"),
        (lambda state, record: record.update(fingerprint=7), "fingerprint"),
        (
            lambda state, record: record.update(
                cases=[{"id": "c", "group": "g", "modalities": [], "voxels": {}, "fold": 99}]
            ),
            "fold 99",
        ),
        (lambda state, record: state.update(indexes={"../../x": "sha256:0"}), "index"),
    ],
    ids=["format", "tasks-list", "negative-size", "float-size", "fingerprint", "fold", "index-path"],
)
def test_a_state_with_values_a_run_cannot_use_is_a_usage_error_that_says_full(tmp_path, change, reason):
    source, destination = exported(tmp_path)
    tamper(destination, change)
    assert_usage_error(run_local(source, destination), STATE, reason, "--full")
    assert run_local(source, destination, "--full").returncode == 0


@pytest.mark.parametrize(
    "content", [b"{not json", b"[" * 10_000 + b"]" * 10_000, b'{"format": 1, "tasks": ' + b"9" * 5000 + b"}"]
)
def test_a_state_that_is_not_json_is_a_usage_error_that_says_full(tmp_path, content):
    source, destination = exported(tmp_path)
    (destination / STATE).write_bytes(content)
    assert_usage_error(run_local(source, destination), STATE, "cannot be used", "--full")
    assert run_local(source, destination, "--full").returncode == 0
    assert json.loads((destination / STATE).read_text())["format"] == 1


# --- Output hygiene ------------------------------------------------------------------

FORGED = "x\nrbexport: 99 tasks exported, 0 failed\x1b[2K\x1b[1A\r\u202e"


def test_a_task_id_cannot_forge_a_line_or_move_the_cursor(tmp_path):
    source = project(tmp_path / "source", task(FORGED, "masks/missing.nii.gz"))
    result = run_local(source, tmp_path / "export")
    assert_clean(result)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert not any(line.startswith("rbexport: 99 tasks exported") for line in lines), lines
    assert "\u202e" not in result.stdout + result.stderr
    assert r"x\nrbexport: 99 tasks exported, 0 failed\e[2K\e[1A\r\u202e: masks/missing.nii.gz" in result.stdout
    report = json.loads((tmp_path / "export/export-report.json").read_text())
    assert report["failed"] == [FORGED]  # the machine-readable report keeps the true value


def test_a_mask_path_cannot_forge_a_line(tmp_path):
    path = "masks/\x1b]0;owned\x07\nrbexport: error: none.nii.gz"
    source = project(tmp_path / "source", task("t", path))
    result = run_local(source, tmp_path / "export")
    assert_clean(result)
    assert not any(line.startswith("rbexport: error") for line in result.stderr.splitlines())


def test_a_source_path_cannot_forge_a_line(tmp_path):
    source = tmp_path / "a\nrbexport: 99 tasks exported, 0 failed\x1b[1A"
    source.mkdir()
    line = assert_usage_error(run_local(source, tmp_path / "export"), "no tasks.json")
    assert r"a\nrbexport: 99 tasks exported, 0 failed\e[1A" in line


def test_prefect_logs_and_artifacts_show_input_escaped(run_cli, tmp_path):
    """Through the Prefect flow: its logs and its artifacts, read back from the API."""
    from test_security import logs_and_artifacts_of_the_flow_run_into

    source = project(tmp_path / "source", task(FORGED, "masks/missing.nii.gz"))
    result = run_cli("run", "--source", str(source), "--dest", str(tmp_path / "export"), "--engine", "prefect")
    assert result.returncode == 1, result.stdout + result.stderr
    assert_clean(result)
    recorded = logs_and_artifacts_of_the_flow_run_into(str(tmp_path / "export"))
    flow_parameters, _, logged = recorded.partition("\n")  # the parameters hold the true source path only
    assert r"x\nrbexport: 99 tasks exported" in logged
    assert "\x1b" not in logged and "\u202e" not in logged
    assert not any(line.startswith("rbexport: 99 tasks exported") for line in logged.splitlines())


# --- The S3 store --------------------------------------------------------------------


def test_s3_a_tampered_state_never_deletes_outside_the_export(seaweed, make_bucket, tmp_path):
    bucket = make_bucket()
    source = project(tmp_path / "source", task("second"))
    for key, data in tree(source).items():
        bucket.write(f"project/{key}", data)
    bucket.write("victim/keep.txt", b"keep me")
    destination = f"s3://{bucket.bucket}/export"
    arguments = (
        "--source",
        f"s3://{bucket.bucket}/project",
        "--dest",
        destination,
        "--endpoint-url",
        seaweed.endpoint_url,
    )
    assert rbexport("run", "--engine", "local", *arguments).returncode == 0
    state = json.loads(bucket.read(f"export/{STATE}"))
    state["tasks"]["good"]["orphans"] += ["../victim/keep.txt", "segmentations/../../victim/keep.txt"]
    bucket.write(f"export/{STATE}", json.dumps(state).encode())
    assert_usage_error(rbexport("run", "--engine", "local", "--prune", *arguments), "cannot be used", "--full")
    assert bucket.read("victim/keep.txt") == b"keep me"
    assert rbexport("run", "--engine", "local", "--prune", "--full", *arguments).returncode == 0
    assert bucket.read("victim/keep.txt") == b"keep me"


def test_s3_keys_with_dot_dot_or_control_characters(seaweed, make_bucket, tmp_path):
    """A mask key that climbs out of the source prefix fails its task; one holding control
    characters is read like any key, and shown escaped."""
    bucket = make_bucket()
    strange = "masks/\x1b[2J\u202e\nrbexport: 99 tasks exported.nii.gz"
    source = project(
        tmp_path / "source",
        task("climbs", "masks/../../other/x.nii.gz"),
        task("strange", strange),
        task("strange-missing", strange + ".gone"),
    )
    for key, data in tree(source).items():
        bucket.write(f"project/{key}", data)
    bucket.write(f"project/{strange}", GOOD_MASK)
    bucket.write("other/x.nii.gz", GOOD_MASK)
    destination = tmp_path / "export"
    result = rbexport(
        "run",
        "--engine",
        "local",
        "--source",
        f"s3://{bucket.bucket}/project",
        "--dest",
        str(destination),
        "--endpoint-url",
        seaweed.endpoint_url,
    )
    assert_clean(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed climbs: masks/../../other/x.nii.gz: path leaves the source prefix" in result.stdout
    assert (
        r"failed strange-missing: masks/\e[2J\u202e\nrbexport: 99 tasks exported.nii.gz.gone: mask file"
        in result.stdout
    )
    assert "\u202e" not in result.stdout + result.stderr
    assert [entry["taskId"] for entry in json.loads((destination / "tasks.json").read_text())] == ["good", "strange"]
