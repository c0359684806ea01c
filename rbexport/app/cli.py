"""`rbexport run | verify | unlock | demo`: an export from the command line, its check, and freeing a destination.

Exit codes: 0 every task exported (verify: every file as recorded); 1 some tasks failed,
the rest exported and published (verify: files missing or changed, one line each); 2
usage or configuration error (verify: no export at DST) (bad URL, unreachable endpoint, denied
access, invalid tasks.json, a credentials block that is not there), with one line saying
what is wrong and no traceback; 3 an internal error (a bug: --verbose shows it).

`--engine auto` (the default) runs the Prefect flow in this process where a Prefect API is
configured (PREFECT_API_URL, or a profile naming one: rbexport.app.engine_choice), and the same
export without Prefect otherwise (`--engine local`, rbexport.app.runner); `--engine prefect` runs the
flow on Prefect's ephemeral API when none is configured. The first line says which runs
and why; configuration errors are found before Prefect is imported (rbexport.app.preflight). S3 keys come from boto3's chain, or from a
Prefect block (--credentials-block: a Secret, or prefect-aws's AwsCredentials or
MinIOCredentials; tasks/credentials.py). Prefect's own console logging is off unless
--verbose; the progress bar and the summary say what happened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from rbexport import __version__
from rbexport.app import runner
from rbexport.app.runner import say

EXIT_OK, EXIT_TASKS_FAILED, EXIT_CONFIGURATION, EXIT_INTERNAL = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    from rbexport.mask_formats import WRITERS

    parser = argparse.ArgumentParser(
        prog="rbexport",
        description="Export RedBrick-format annotation projects from and to S3-compatible storage or local folders.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs on the console")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,verify,release,unlock,demo}")

    run = commands.add_parser("run", help="export a project", description="Export a project (SPEC.md).")
    run.add_argument("--source", required=True, metavar="SRC", help="s3://bucket/prefix or a local folder")
    run.add_argument("--dest", required=True, metavar="DST", help="s3://bucket/prefix or a local folder")
    run.add_argument("--semantic", action="store_true", help="write category numbers (needs taxonomy.json)")
    masks = run.add_mutually_exclusive_group()
    masks.add_argument(
        "--binary-mask",
        dest="binary_mask",
        action="store_const",
        const=True,
        help="one 0/1 file per instance (or category) for every series",
    )
    masks.add_argument(
        "--single-mask",
        dest="binary_mask",
        action="store_const",
        const=False,
        help="one label map per series; overlaps stay as overlappingGroups",
    )
    run.set_defaults(binary_mask=None)
    run.add_argument(
        "--no-consensus",
        action="store_true",
        help="export consensus tasks as plain tasks (super truth, else first annotator)",
    )
    run.add_argument(
        "--uncompressed", action="store_true", help="write .nii instead of .nii.gz (MetaImage: .raw, not .zraw)"
    )
    run.add_argument(
        "--mask-format",
        choices=list(WRITERS),
        default="nifti",
        help="file format of the masks: " + "; ".join(known.summary for known in WRITERS.values()),
    )
    run.add_argument(
        "--seg-type",
        choices=["auto", "binary", "labelmap"],
        default="auto",
        help="dicom-seg: auto (default; LABELMAP where no instances overlap, else BINARY); binary (the "
        "classic object older viewers and PACS read); labelmap (DICOM 2024; overlaps fail the task)",
    )
    run.add_argument(
        "--seg-compression",
        choices=["none", "rle", "jpegls"],
        default="none",
        help="dicom-seg: lossless frame compression of LABELMAP SEGs: none (default), rle (RLE Lossless) "
        "or jpegls (JPEG-LS Lossless); BINARY SEGs are never compressed",
    )
    run.add_argument(
        "--with-images",
        action="store_true",
        help="also copy every series' image files (its items) into DST/images/<Task>/<Series>/",
    )
    run.add_argument(
        "--images-as-nifti",
        action="store_true",
        help="put one NIfTI image per series in the export (DICOM converted), on its label map's "
        "voxel grid: DST/images/<Task>/<Series>.nii.gz (implies --with-images)",
    )
    dataset = run.add_argument_group("training layouts (SPEC 6)")
    dataset.add_argument(
        "--layout",
        choices=["redbrick", "nnunet", "msd"],
        default="redbrick",
        help="redbrick: the RedBrick export (default); nnunet: an nnU-Net v2 raw dataset, DST "
        "being the dataset folder (nnUNet_raw/Dataset501_Name); msd: a Medical Segmentation "
        "Decathlon dataset (MONAI). Both need taxonomy.json and write NIfTI on the label's grid",
    )
    dataset.add_argument(
        "--channels",
        metavar="NAME,NAME,...",
        help="the series of each task that are a case's channels, in order (e.g. T1,T2,FLAIR); "
        "default: every annotated series is a one-channel case",
    )
    dataset.add_argument(
        "--modality", metavar="NAME", help="channel name (CT, MR, ...) for series with no DICOM Modality"
    )
    dataset.add_argument(
        "--group-by",
        metavar="FIELD",
        help="task field whose equal values keep cases in one fold, e.g. metaData.patientId",
    )
    dataset.add_argument("--dataset-name", metavar="TEXT", help="name in dataset.json")
    dataset.add_argument("--description", metavar="TEXT", help="description in dataset.json")
    selection = run.add_argument_group("filters (SPEC 8): which tasks the export holds; several keep what matches all")
    selection.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="keep tasks in this stage (currentStageName; repeatable)",
    )
    selection.add_argument(
        "--ground-truth", action="store_true", help="keep only the ground truth (tasks whose currentStageName is END)"
    )
    selection.add_argument(
        "--task-id", action="append", default=[], metavar="ID", help="keep the task with this taskId (repeatable)"
    )
    selection.add_argument(
        "--since",
        metavar="TIME",
        help="keep tasks whose updatedAt is at or after TIME (ISO 8601; a date alone is midnight UTC)",
    )
    selection.add_argument(
        "--without-masks", action="store_true", help="write tasks.json and the report only, no mask file"
    )
    run.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME",
        help="write this structure too, under DST/NAME/ when there are several (repeatable): "
        "standard, binary, single, semantic, semantic-binary, or NAME:option=value,...",
    )
    run.add_argument(
        "--full", action="store_true", help="export every task again, even those unchanged since the last export"
    )
    run.add_argument(
        "--prune",
        action="store_true",
        help="delete the files of tasks removed from the source, and files no longer written",
    )
    run.add_argument(
        "--replace-layout",
        action="store_true",
        help="DST holds an export laid out the other way (one at its root, or variant folders): "
        "delete it and write this one",
    )
    run.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="while another run writes DST, wait this long before giving up with exit 2 (default: 3600)",
    )
    _store_arguments(run)
    run.add_argument(
        "--allow-bucket",
        action="append",
        default=[],
        metavar="BUCKET",
        help="also read masks from this bucket when tasks name it by s3:// URL (repeatable)",
    )
    run.add_argument(
        "--engine",
        choices=["auto", "prefect", "local"],
        default="auto",
        help="auto (default): the Prefect flow where a Prefect API is configured (PREFECT_API_URL, "
        "or a profile naming one), else local; prefect: the export flow, with its logs, artifacts "
        "and UI, on that API or on an ephemeral one; local: the same export in this process "
        "without Prefect (no server, starts at once)",
    )
    run.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        metavar="N",
        help="source tasks per batch (a Prefect task run); default: by size, about 32 MB each",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="tasks exported at once (threads, or processes/Dask workers)",
    )
    run.add_argument(
        "--task-runner",
        choices=["threads", "processes", "dask"],
        default="threads",
        help="run tasks on threads of this process (default), local processes, or Dask",
    )
    run.add_argument(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="Dask scheduler for --task-runner dask (default: a local cluster)",
    )

    verify = commands.add_parser(
        "verify",
        help="check that every file of an export is there with its recorded checksum",
        description="Re-read the export at DST (one export, variant folders, or a dataset layout) and "
        "check every file its state and tasks.json name against the checksum recorded when it was "
        "written. Exit 0: all present and unchanged; 1: each missing or changed file on its own line; "
        "2: no export at DST, or the store cannot be reached.",
    )
    verify.add_argument("destination", metavar="DST", help="s3://bucket/prefix or a local folder")
    _store_arguments(verify)
    verify.add_argument(
        "--lock-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="while a run writes DST, wait this long for it to publish before checking (default: 3600)",
    )

    release = commands.add_parser(
        "release",
        help="make, list and compare releases: named, immutable copies of an export (SPEC 9)",
        description="A release is a copy of an export, with release.json (every file's size and sha256), "
        "that no later run, --prune or --replace-layout touches.",
    )
    actions = release.add_subparsers(dest="release_command", required=True, metavar="{create,list,diff}")
    create = actions.add_parser(
        "create",
        help="copy EXPORT to RELEASE (an empty location) and write its release.json",
        description="Copy the export at EXPORT (every file its state records, tasks.json, the indexes) to "
        "RELEASE, an empty location outside EXPORT, under the export's lease; release.json is written last. "
        "S3 to S3 on one endpoint the store copies. Exit 0: released; 2: RELEASE not empty, no export at "
        "EXPORT, a bad name, a bucket without Object Lock for --retain-days.",
    )
    create.add_argument("export", metavar="EXPORT", help="the export: s3://bucket/prefix or a local folder")
    create.add_argument("release", metavar="RELEASE", help="where the release goes: empty, outside EXPORT")
    create.add_argument("--name", metavar="NAME", help="the release's name (default: RELEASE's last path part)")
    create.add_argument(
        "--retain-days",
        type=_positive,
        metavar="N",
        help="S3 Object Lock retention (compliance mode) of N days on every object: the bucket must have Object Lock",
    )
    create.add_argument(
        "--lock-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="while a run writes EXPORT, wait this long before giving up with exit 2 (default: 3600)",
    )
    _store_arguments(create)
    listing = actions.add_parser(
        "list", help="the releases made from EXPORT", description="The releases made from EXPORT."
    )
    listing.add_argument("export", metavar="EXPORT")
    _store_arguments(listing)
    diff = actions.add_parser(
        "diff",
        help="the tasks added, removed and changed from release A to release B",
        description="The tasks added, removed and changed (by their files' sha256) from release A to release B.",
    )
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    _store_arguments(diff)
    unlock = commands.add_parser(
        "unlock",
        help="free a destination a killed run left held",
        description="Remove the destination's lease object (DST/.rbexport/lock) when its holder is not "
        "live (expired, or not a lease), and free its Prefect concurrency slot when PREFECT_API_URL names "
        "a server and no live run holds it. Refuses (exit 2, naming the holder) while the holder is "
        "alive, unless it ran on this host and its process is gone. A killed run's hold also frees by "
        "itself: its lease expires 120 s after its last renewal.",
    )
    unlock.add_argument("destination", metavar="DST", help="s3://bucket/prefix or a local folder")
    _store_arguments(unlock)

    demo = commands.add_parser(
        "demo",
        help="export a generated sample project on a local SeaweedFS",
        description="Start SeaweedFS on loopback, upload a sample project, export it "
        "in the standard and the semantic structure, print the trees, stop the server.",
    )
    demo.add_argument("--output", metavar="DIR", help="also copy the exports into this local folder")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="instead of exporting: start SeaweedFS with the sample project, print the variables to "
        "export for the README's deployment steps, and keep it running until Ctrl-C",
    )
    return parser


def _store_arguments(command: argparse.ArgumentParser) -> None:
    """How to reach S3: the same for every command that reads or writes a store."""
    command.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL, else AWS)",
    )
    command.add_argument(
        "--credentials-block",
        metavar="NAME",
        help="read the S3 keys from this Prefect block: aws-credentials/NAME or minio-credentials/NAME "
        "(prefect-aws; with their endpoint and region), or secret/NAME or NAME (a Secret holding JSON keys); "
        "default: boto3's standard chain",
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    _quiet_prefect(arguments.verbose)
    previous_handlers = _signals.install()
    started = time.perf_counter()
    try:
        if arguments.command == "demo":
            from rbexport.app.demo import run_demo, serve_demo

            return serve_demo() if arguments.keep else run_demo(arguments.output)
        if arguments.command == "verify":
            return _verify(arguments)
        if arguments.command == "release":
            return _release(arguments)
        if arguments.command == "unlock":
            return _unlock(arguments)
        return _run(arguments)
    except KeyboardInterrupt as interruption:
        say(_interrupted_line(arguments.command, getattr(interruption, "kept", None)))
        return 128 + _signals.received
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into exit codes
        return _exit_code_for(error, arguments.verbose)
    finally:
        _signals.restore(previous_handlers)
        if arguments.verbose:
            say(f"done in {time.perf_counter() - started:.1f} s")


def _interrupted_line(command: str, kept: int | None) -> str:
    """What an interrupted command says; a run, how many finished tasks it recorded."""
    if command != "run":
        return "interrupted"
    unpublished = "nothing was published (the previous export stays as it was)"
    if kept is None:
        return f"interrupted; {unpublished}; run again to export the rest"
    return f"interrupted; {kept} finished task{'s' * (kept != 1)} kept for the next run; {unpublished}"


def entry() -> None:
    """The `rbexport` console script."""
    code = main()
    _silence_shutdown_noise()
    sys.exit(code)


def _run(arguments: argparse.Namespace) -> int:
    from rbexport.app.preflight import check_before_flow

    choice = _choose_engine(arguments)
    # Before Prefect and the export's own modules are imported: a configuration error in well under a second.
    check_before_flow(
        arguments.source,
        arguments.dest,
        _endpoint(arguments.endpoint_url),
        arguments.credentials_block if choice.engine == "prefect" else None,
    )
    from rbexport.errors import ConfigurationError
    from rbexport.filters import TaskFilter, parse_time
    from rbexport.options import ExportOptions
    from rbexport.run import check_locations
    from rbexport.variants import Variant, parse_variant_argument, resolve_variants

    if arguments.dask_address and arguments.task_runner != "dask":
        raise ConfigurationError("--dask-address goes with --task-runner dask")
    variants = [parse_variant_argument(text) for text in arguments.variant]
    if variants and (arguments.semantic or arguments.binary_mask is not None):
        raise ConfigurationError(
            "--semantic, --binary-mask and --single-mask choose one structure; with --variant, name each "
            "structure as a variant instead (e.g. --variant semantic-binary)"
        )
    if variants and arguments.layout != "redbrick":
        raise ConfigurationError(
            "--layout chooses the structure of a single export; with --variant, name the dataset as a variant "
            f"instead (e.g. --variant Dataset501_Name:layout={arguments.layout})"
        )
    options = ExportOptions(
        layout=arguments.layout,
        channels=arguments.channels,
        modality=arguments.modality,
        group_by=arguments.group_by,
        dataset_name=arguments.dataset_name,
        description=arguments.description,
        semantic_mask=arguments.semantic,
        binary_mask=arguments.binary_mask,
        no_consensus=arguments.no_consensus,
        compress=not arguments.uncompressed,
        mask_format=arguments.mask_format,
        seg_type=arguments.seg_type,
        seg_compression=arguments.seg_compression,
        with_images=arguments.with_images or arguments.images_as_nifti,
        image_format="nifti" if arguments.images_as_nifti else "original",
    )
    resolved = resolve_variants(options, variants)  # the variant folders' places, before Prefect starts
    check_locations(arguments.source, arguments.dest, [v.name for v in resolved] if len(resolved) > 1 else None)
    filters = TaskFilter(
        stages=tuple(arguments.stage),
        ground_truth=arguments.ground_truth,
        task_ids=tuple(arguments.task_id),
        updated_since=parse_time(arguments.since) if arguments.since is not None else None,
        without_masks=arguments.without_masks,
    )
    if not arguments.credentials_block:  # with a block the keys are the flow's; it refuses a release itself
        from rbexport.releases import refuse_release_destination
        from rbexport.storage import Location, S3Access

        # Before the engine line: a refusal is the run's only line.
        refuse_release_destination(Location.parse(arguments.dest), S3Access(_endpoint(arguments.endpoint_url)))
    lock_timeout = {} if arguments.lock_timeout is None else {"lock_timeout": arguments.lock_timeout}
    say(choice.line())
    if choice.engine == "local":
        from rbexport.model import ExportRequest
        from rbexport.storage import S3Access

        request = ExportRequest(
            source=arguments.source,
            destination=arguments.dest,
            options=options,
            variants=tuple(variants),
            incremental=not arguments.full,
            prune=arguments.prune,
            replace_layout=arguments.replace_layout,
            access=S3Access(_endpoint(arguments.endpoint_url)),
            allowed_buckets=tuple(arguments.allow_bucket),
            **lock_timeout,
            filters=filters,
        )
        reports = runner.run_local(request, arguments.workers, arguments.task_runner, arguments.batch_size)
        return EXIT_OK if all(report.succeeded for report in reports) else EXIT_TASKS_FAILED
    reports = runner.run_flow(
        arguments.source,
        arguments.dest,
        options,
        variants=[item for item in variants if not isinstance(item, Variant)],
        custom_variants=[item for item in variants if isinstance(item, Variant)],
        incremental=not arguments.full,
        prune=arguments.prune,
        replace_layout=arguments.replace_layout,
        endpoint_url=_endpoint(arguments.endpoint_url, arguments.credentials_block),
        credentials_block=arguments.credentials_block,
        allowed_buckets=arguments.allow_bucket,
        workers=arguments.workers,
        task_runner=arguments.task_runner,
        dask_address=arguments.dask_address,
        batch_size=arguments.batch_size or 0,
        filters=filters,
        **lock_timeout,
    )
    return EXIT_OK if all(report.succeeded for report in reports) else EXIT_TASKS_FAILED


def _choose_engine(arguments: argparse.Namespace):
    """--engine, and for auto whether a Prefect API is configured; flags only the flow
    supports make auto choose it, and are refused with --engine local."""
    from rbexport.app.engine_choice import LOCAL, choose_engine
    from rbexport.errors import ConfigurationError

    needs_prefect = (
        "--credentials-block"
        if arguments.credentials_block
        else "--task-runner dask"
        if arguments.task_runner == "dask"
        else None
    )
    if needs_prefect and arguments.engine == LOCAL:
        what = "reads a Prefect block" if arguments.credentials_block else "runs on prefect-dask"
        raise ConfigurationError(f"{needs_prefect} {what}: it needs --engine prefect or auto")
    return choose_engine(arguments.engine, needs_prefect)


def _access(arguments: argparse.Namespace):
    """The S3 access of a command: --endpoint-url, or a Prefect credentials block."""
    from rbexport.storage import S3Access

    endpoint = _endpoint(arguments.endpoint_url, arguments.credentials_block)
    if arguments.credentials_block:
        with runner.prefect_api():
            from rbexport.tasks.credentials import s3_access

            return s3_access(endpoint, arguments.credentials_block)
    return S3Access(endpoint)


def _verify(arguments: argparse.Namespace) -> int:
    from rbexport.display import shown
    from rbexport.releases import is_release, verify_release
    from rbexport.verify import verify_settled

    access = _access(arguments)
    if is_release(arguments.destination, access):
        result = verify_release(arguments.destination, access)
    else:
        result = verify_settled(arguments.destination, access, arguments.lock_timeout, notify=say)
    for problem in result.problems:
        print(shown(problem.line()))
    print(shown(result.summary()))
    return EXIT_OK if result.ok else EXIT_TASKS_FAILED


def _release(arguments: argparse.Namespace) -> int:
    from rbexport import releases
    from rbexport.display import shown

    access = _access(arguments)
    if arguments.release_command == "create":
        release = releases.create_release(
            arguments.export,
            arguments.release,
            access,
            name=arguments.name,
            retain_days=arguments.retain_days,
            notify=say,
            timeout=arguments.lock_timeout,
        )
        print(shown(release.summary()))
    elif arguments.release_command == "list":
        records = releases.list_releases(arguments.export, access)
        for record in records:
            print(f"{shown(record.name)}\t{shown(record.created)}\t{record.tasks} tasks\t{shown(record.url)}")
        if not records:
            print(f"no releases made from {shown(arguments.export)}")
    else:
        diff = releases.diff_releases(arguments.a, arguments.b, access)
        for line in diff.lines():
            print(shown(line))
        print(f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed")
    return EXIT_OK


def _unlock(arguments: argparse.Namespace) -> int:
    from rbexport.lease import read_lease, unlock
    from rbexport.storage import S3Access, open_storage

    endpoint = _endpoint(arguments.endpoint_url, arguments.credentials_block)
    prefect = bool(arguments.credentials_block or os.environ.get("PREFECT_API_URL"))
    with runner.prefect_api() if prefect else contextlib.nullcontext():
        if arguments.credentials_block:
            from rbexport.tasks.credentials import s3_access

            access = s3_access(endpoint, arguments.credentials_block)
        else:
            access = S3Access(endpoint)
        storage = open_storage(arguments.destination, access)
        storage.check_reachable()
        done = [unlock(storage)]
        if os.environ.get("PREFECT_API_URL"):
            from rbexport.tasks.one_writer import free_orphaned_slot

            freed = free_orphaned_slot(storage.url, read_lease(storage))
            done.append(freed or "its Prefect concurrency slot was free")
    print("; ".join(done))
    return EXIT_OK


def _exit_code_for(error: Exception, verbose: bool) -> int:
    from pydantic import ValidationError

    from rbexport.errors import ConfigurationError, TransientStorageError

    if isinstance(error, ConfigurationError):
        say(f"error: {error}")
        return EXIT_CONFIGURATION
    if isinstance(error, TransientStorageError):
        say(f"error: storage unavailable: {error}")
        return EXIT_CONFIGURATION
    if isinstance(error, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        say(f"error: invalid parameters: {problems}")
        return EXIT_CONFIGURATION
    if verbose:
        import traceback

        traceback.print_exception(error)
    say(f"internal error: {type(error).__name__}: {error} (run with --verbose for details)")
    return EXIT_INTERNAL


def _endpoint(url: str | None, credentials_block: str | None = None) -> str | None:
    """--endpoint-url, else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL. With a credentials block
    the environment's endpoint stays a default: the flow gets None, so the block's endpoint
    wins over it (and boto3 still falls back to it), while an explicit --endpoint-url that
    differs from the block's is an error there."""
    from rbexport.errors import ConfigurationError

    explicit = url
    url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    if url and not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"invalid endpoint URL {url!r}: it must start with http:// or https://")
    return explicit if credentials_block else url


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM: the first stops the run (KeyboardInterrupt in the main
    thread: the engine leaves after the tasks in flight, releases the destination, and the
    exit code is 128 + the signal: 130, 143); a second one exits at once."""

    received = signal.SIGINT

    def install(self) -> dict:
        """Returns the handlers it replaced (for `restore`)."""
        self.received = signal.SIGINT
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def restore(previous: dict) -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: object) -> None:
        if self._interrupted:
            os._exit(128 + self.received)
        self._interrupted = True
        self.received = signal.Signals(number)
        raise KeyboardInterrupt


_signals = _Signals()


def _quiet_prefect(verbose: bool) -> None:
    """Prefect's console logs only with --verbose; its API logs are kept either way."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _silence_shutdown_noise() -> None:
    """Prefect's ephemeral API can print CancelledError tracebacks at interpreter exit.

    Everything the user needs has been printed by now: flush, then send what is left of
    stderr to /dev/null so those tracebacks never reach the terminal.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


if __name__ == "__main__":
    entry()
