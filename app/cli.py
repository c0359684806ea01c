"""`rbexport run | verify | unlock | demo`: an export from the command line, its check, and freeing a destination.

Exit codes: 0 every task exported (verify: every file as recorded); 1 some tasks failed,
the rest exported and published (verify: files missing or changed, one line each); 2
usage or configuration error (verify: no export at DST) (bad URL, unreachable endpoint, denied
access, invalid tasks.json, a credentials block that is not there), with one line saying
what is wrong and no traceback; 3 an internal error (a bug: --verbose shows it).

`--engine prefect` (the default) runs the Prefect flow in this process: on Prefect's
ephemeral API, or on a server when PREFECT_API_URL is set; `--engine local` runs the
same export without Prefect (app.runner). S3 keys come from boto3's chain, or from a
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

from app import runner
from app.runner import say
from rbexport import __version__

EXIT_OK, EXIT_TASKS_FAILED, EXIT_CONFIGURATION, EXIT_INTERNAL = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbexport",
        description="Export RedBrick-format annotation projects from and to S3-compatible storage or local folders.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs on the console")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,verify,unlock,demo}")

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
        choices=["nifti", "png", "mhd", "dicom-seg"],
        default="nifti",
        help="file format of the masks: nifti (default); png (2D series only, with class_map.json); "
        "mhd (MetaImage); dicom-seg (one DICOM SEG per series, referencing its DICOM items)",
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
        choices=["prefect", "local"],
        default="prefect",
        help="prefect (default): run the export flow, on Prefect's ephemeral API or the server "
        "PREFECT_API_URL names, with its logs, artifacts and UI; local: the same export in this "
        "process without Prefect (no server, starts at once): for CI jobs and quick runs",
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
            from app.demo import run_demo

            return run_demo(arguments.output)
        if arguments.command == "verify":
            return _verify(arguments)
        if arguments.command == "unlock":
            return _unlock(arguments)
        return _run(arguments)
    except KeyboardInterrupt:
        say(
            "interrupted; nothing was published (the previous export stays as it was); run again to export the rest"
            if arguments.command == "run"
            else "interrupted"
        )
        return 128 + _signals.received
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into exit codes
        return _exit_code_for(error, arguments.verbose)
    finally:
        _signals.restore(previous_handlers)
        if arguments.verbose:
            say(f"done in {time.perf_counter() - started:.1f} s")


def entry() -> None:
    """The `rbexport` console script."""
    code = main()
    _silence_shutdown_noise()
    sys.exit(code)


def _run(arguments: argparse.Namespace) -> int:
    from rbexport.errors import ConfigurationError
    from rbexport.options import ExportOptions
    from rbexport.run import check_locations
    from rbexport.variants import Variant, parse_variant_argument

    check_locations(arguments.source, arguments.dest)  # before Prefect starts: fail fast
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
        with_images=arguments.with_images or arguments.images_as_nifti,
        image_format="nifti" if arguments.images_as_nifti else "original",
    )
    lock_timeout = {} if arguments.lock_timeout is None else {"lock_timeout": arguments.lock_timeout}
    if arguments.engine == "local":
        if arguments.credentials_block:
            raise ConfigurationError("--credentials-block reads a Prefect block: it needs --engine prefect")
        if arguments.task_runner == "dask":
            raise ConfigurationError("--task-runner dask needs --engine prefect (prefect-dask)")
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
        **lock_timeout,
    )
    return EXIT_OK if all(report.succeeded for report in reports) else EXIT_TASKS_FAILED


def _verify(arguments: argparse.Namespace) -> int:
    from rbexport.storage import S3Access
    from rbexport.verify import verify_settled

    endpoint = _endpoint(arguments.endpoint_url, arguments.credentials_block)
    if arguments.credentials_block:
        with runner.prefect_api():
            from tasks.credentials import s3_access

            access = s3_access(endpoint, arguments.credentials_block)
    else:
        access = S3Access(endpoint)
    result = verify_settled(arguments.destination, access, arguments.lock_timeout, notify=say)
    for problem in result.problems:
        print(problem.line())
    print(result.summary())
    return EXIT_OK if result.ok else EXIT_TASKS_FAILED


def _unlock(arguments: argparse.Namespace) -> int:
    from rbexport.lease import read_lease, unlock
    from rbexport.storage import S3Access, open_storage

    endpoint = _endpoint(arguments.endpoint_url, arguments.credentials_block)
    prefect = bool(arguments.credentials_block or os.environ.get("PREFECT_API_URL"))
    with runner.prefect_api() if prefect else contextlib.nullcontext():
        if arguments.credentials_block:
            from tasks.credentials import s3_access

            access = s3_access(endpoint, arguments.credentials_block)
        else:
            access = S3Access(endpoint)
        storage = open_storage(arguments.destination, access)
        storage.check_reachable()
        done = [unlock(storage)]
        if os.environ.get("PREFECT_API_URL"):
            from tasks.one_writer import free_orphaned_slot

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
