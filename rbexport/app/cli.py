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
--verbose; the progress bar and the summary say what happened. The flags are
rbexport.app.parser's.
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

from rbexport.app import runner
from rbexport.app.parser import build_parser as build_parser  # the parser: rbexport.app.parser
from rbexport.app.parser import export_options
from rbexport.app.runner import say

EXIT_OK, EXIT_TASKS_FAILED, EXIT_CONFIGURATION, EXIT_INTERNAL = 0, 1, 2, 3


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
    from rbexport.run import check_locations
    from rbexport.variants import Variant, parse_variant_argument, resolve_variants

    if arguments.dask_address and arguments.task_runner != "dask":
        raise ConfigurationError("--dask-address goes with --task-runner dask")
    variants = [parse_variant_argument(text) for text in arguments.variant]
    if variants and (arguments.semantic_mask or arguments.binary_mask is not None):
        raise ConfigurationError(
            "--semantic, --binary-mask and --single-mask choose one structure; with --variant, name each "
            "structure as a variant instead (e.g. --variant semantic-binary)"
        )
    if variants and arguments.layout != "redbrick":
        raise ConfigurationError(
            "--layout chooses the structure of a single export; with --variant, name the dataset as a variant "
            f"instead (e.g. --variant Dataset501_Name:layout={arguments.layout})"
        )
    options = export_options(arguments)
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
