"""The one fan-out of a run: batches of source tasks, retried, one outcome per task.

Both engines use it: the Prefect flow (flows/export.py) submits each batch as a Prefect
task; the local engine (`run_local`, `rbexport run --engine local`) runs batches on a
thread or process pool of its own, without Prefect. Either way:

- the jobs are cut into batches by their work (mask and image bytes): a large CT task
  alone, many small ones together, never fewer batches than workers while there are
  enough tasks (`make_batches`);
- a batch exports its tasks one after another (`export_batch`); a transient storage error
  retries only that task, with exponential back-off; bad data fails only that task; an
  unexpected error becomes that task's failure (the run goes on);
- a ConfigurationError (the run itself is wrong) stops the run once every batch is back;
- progress is reported per source task as its batch comes back;
- an interruption (Ctrl-C, SIGTERM: KeyboardInterrupt in the main thread) stops every
  batch before its next task and cancels those not started; the batches in flight come
  back within DRAIN_SECONDS with the tasks they finished, which are recorded in the state
  (`keep_finished`, rbexport.run.record_finished) for the next run, and nothing is published.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed

from . import progress
from .display import shown
from .errors import ConfigurationError, TaskDataError, TransientStorageError
from .filters import TaskFilter
from .lease import DestinationLease
from .model import ExportRequest, ExportSettings, RunPlan, TaskFailed, TaskJob, TaskOutcome
from .options import ExportOptions
from .report import Failure, RunReport
from .run import destination_lease, prepare_run, publish_export, record_finished
from .storage import S3Access
from .task_export import export_task
from .variants import Preset, Variant

STORAGE_RETRIES = 3
BACKOFF_SECONDS = 2.0  # then 4, 8
# A batch holds about this much mask and image data (compressed, as stored) ...
BATCH_BYTES = 32 * 1024 * 1024
# ... and at most this many tasks.
BATCH_TASKS = 200
UNKNOWN_TASK_BYTES = 1024 * 1024  # a task whose objects the listing does not show
# Source tasks exported at once: twice the cores (they also wait on the store), at most 8.
DEFAULT_WORKERS = min(8, 2 * (os.cpu_count() or 1))
# After an interruption, how long the batches in flight may take to finish their current
# task and come back with what they finished (what is not back by then is not recorded).
DRAIN_SECONDS = 3.0

logger = logging.getLogger("rbexport")

# Set when the run is interrupted (Ctrl-C, SIGTERM): a batch on this process's threads
# stops before its next task, so an interrupted run ends after the tasks in flight.
STOPPING = threading.Event()


class Interrupted(Exception):
    """The run was told to stop before its batch's next task; `outcomes`: the tasks of the
    batch it had finished (the first ones), to be recorded."""

    def __init__(self, message: str, outcomes: Sequence[TaskOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)

    def __reduce__(self):
        return (type(self), (str(self), self.outcomes))


class RunInterrupted(KeyboardInterrupt):
    """An interrupted run, once it has recorded what it finished: `kept` source tasks (None:
    none could be recorded, or the export had not started)."""

    def __init__(self, kept: int | None) -> None:
        super().__init__(f"interrupted; {kept} finished tasks kept")
        self.kept = kept


# (batch, its outcomes or the exception that ended it), in the order batches finish. A
# generator: on an interruption export_all throws the KeyboardInterrupt into it, and it
# yields what the batches in flight bring back before raising it again.
BatchResults = Generator[tuple[list[TaskJob], list[TaskOutcome] | BaseException], None, None]


def export_batch(
    jobs: Sequence[TaskJob],
    settings: ExportSettings,
    retries: int | None = None,
    backoff_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[TaskOutcome]:
    """Export each job; one outcome per job, in order. Raises only ConfigurationError.

    `retries` and `backoff_seconds` default to STORAGE_RETRIES and BACKOFF_SECONDS.
    """
    retries = STORAGE_RETRIES if retries is None else retries
    backoff = BACKOFF_SECONDS if backoff_seconds is None else backoff_seconds
    outcomes: list[TaskOutcome] = []
    for job in jobs:
        if STOPPING.is_set():
            raise Interrupted(f"stopped before {job.task_id}", outcomes)
        outcomes.append(_export_with_retries(job, settings, retries, backoff, sleep))
    return outcomes


def _export_with_retries(
    job: TaskJob, settings: ExportSettings, retries: int, backoff_seconds: float, sleep: Callable[[float], None]
) -> TaskOutcome:
    for attempt in range(retries + 1):
        try:
            return export_task(job, settings)
        except TransientStorageError as error:
            if attempt == retries:
                return TaskOutcome(job.task_id, failures=failure_of(job, error))
            delay = backoff_seconds * 2**attempt
            logger.warning("%s: %s; retrying in %.0f s", shown(job.task_id), shown(error), delay)
            sleep(delay)
        except ConfigurationError:
            raise
        except Exception as error:  # noqa: BLE001 - bad data, or a bug: this task's failure, not the run's
            if not isinstance(error, TaskDataError):
                logger.exception("%s: unexpected error", shown(job.task_id))
            return TaskOutcome(job.task_id, failures=failure_of(job, error))
    raise AssertionError("unreachable")


def failure_of(job: TaskJob, error: BaseException) -> dict[str, Failure]:
    """How a failed task is reported for each variant it was exported for."""
    if isinstance(error, TaskFailed):
        return dict(error.failures)
    if isinstance(error, TaskDataError):
        failure = Failure(job.task_id, error.file, error.reason)
    elif isinstance(error, TransientStorageError):
        failure = Failure(job.task_id, None, f"storage kept failing after retries: {error}")
    else:
        failure = Failure(job.task_id, None, f"unexpected error: {type(error).__name__}: {error}")
    return {name: failure for name in job.targets}


def job_bytes(job: TaskJob) -> int:
    return job.weight if job.weight > 0 else UNKNOWN_TASK_BYTES


def make_batches(jobs: Sequence[TaskJob], workers: int, batch_size: int = 0) -> list[list[TaskJob]]:
    """Cut the jobs (in source order) into batches.

    `batch_size` > 0: that many tasks per batch. 0 (auto): up to BATCH_BYTES of work and
    BATCH_TASKS tasks per batch, the tasks spread evenly over rounds of `workers` batches
    (1,000 tasks on 4 workers: 8 batches of 125, not 5 of 200 with one worker left to
    finish alone); a task of BATCH_BYTES or more is a batch alone.
    """
    if not jobs:
        return []
    if batch_size > 0:
        return [list(jobs[start : start + batch_size]) for start in range(0, len(jobs), batch_size)]
    workers = max(workers, 1)
    rounds = math.ceil(len(jobs) / (workers * BATCH_TASKS))
    most = max(1, math.ceil(len(jobs) / (workers * rounds)))
    batches: list[list[TaskJob]] = []
    current: list[TaskJob] = []
    weight = 0
    for job in jobs:
        size = job_bytes(job)
        if current and (weight + size > BATCH_BYTES or len(current) >= most):
            batches.append(current)
            current, weight = [], 0
        current.append(job)
        weight += size
    batches.append(current)
    return batches


def batch_label(batch: Sequence[TaskJob]) -> str:
    """What a batch holds, for its name: `task-001` or `task-001..task-200 (200 tasks)`."""
    if len(batch) == 1:
        return shown(batch[0].task_id)
    return shown(f"{batch[0].task_id}..{batch[-1].task_id} ({len(batch)} tasks)")


def export_all(
    plan: RunPlan,
    run_batches: Callable[[list[list[TaskJob]]], BatchResults],
    workers: int,
    batch_size: int = 0,
    log: logging.Logger | logging.LoggerAdapter = logger,
    finished: list[TaskOutcome] | None = None,
) -> list[TaskOutcome]:
    """Export every job of the plan through `run_batches`; one outcome per job.

    `run_batches` runs the batches it is given (anywhere) and yields each with its
    outcomes, or with the exception that ended it, as they finish. The outcomes are added to
    `finished` as they come: on an interruption (KeyboardInterrupt, raised from here) it
    holds every task that finished, those of the batches in flight included.
    """
    STOPPING.clear()  # a run interrupted before, in this process (a worker's), is over
    observer = progress.current()
    jobs = plan.jobs
    exporting = {job.task_id for job in jobs}
    # Tasks a dataset variant cannot make cases of, and that no other variant exports.
    unplanned = {
        failure.taskId: failure
        for target_plan in plan.targets
        for failure in target_plan.failures
        if failure.taskId not in exporting
    }
    observer.started(len(jobs) + len(plan.failures) + len(unplanned), len(plan.tasks) - len(jobs) - len(unplanned))
    for target_plan in plan.targets:
        for failure in target_plan.failures:
            log.warning("[%s] %s", shown(target_plan.target.name), shown(failure.line()))
    for failure in plan.failures:
        log.warning("%s", shown(failure.line()))
    for failure in [*plan.failures, *unplanned.values()]:
        observer.task_done(failure.taskId or "(no taskId)", failure.detail)

    started = time.perf_counter()
    outcomes: list[TaskOutcome] = [] if finished is None else finished
    configuration_error: ConfigurationError | None = None
    results = run_batches(make_batches(jobs, workers, batch_size))
    interruption: BaseException | None = None
    while True:
        try:
            # After an interruption here (not in run_batches), it is thrown into run_batches,
            # which yields the batches in flight, then raises it again.
            batch, result = next(results) if interruption is None else results.throw(interruption)
        except StopIteration:
            break
        interruption = None
        try:
            if isinstance(result, Interrupted):
                batch, result = batch[: len(result.outcomes)], result.outcomes  # the rest never started
            elif isinstance(result, BaseException):
                if isinstance(result, ConfigurationError):
                    configuration_error = configuration_error or result
                result = [TaskOutcome(job.task_id, failures=failure_of(job, result)) for job in batch]
            outcomes.extend(result)  # one step: a signal cannot land halfway through a batch
            for job, outcome in zip(batch, result, strict=True):
                first: Failure | None = next(iter(outcome.failures.values()), None)
                if first:
                    log.warning("%s", shown(first.line()))
                observer.task_done(job.task_id, first.detail if first else None)
        except KeyboardInterrupt as error:
            STOPPING.set()
            interruption = error
    if configuration_error is not None:
        raise configuration_error
    plan.timings["export_tasks"] = time.perf_counter() - started
    return outcomes


def pool_batches(pool: Executor, settings: ExportSettings) -> Callable[[list[list[TaskJob]]], BatchResults]:
    """Run batches on a concurrent.futures pool (the local engine)."""

    def run(batches: list[list[TaskJob]]) -> BatchResults:
        futures = {pool.submit(export_batch, batch, settings): batch for batch in batches}
        waiting = set(futures)
        try:
            for future in as_completed(futures):
                waiting.discard(future)
                yield futures[future], _result(future)
        except (KeyboardInterrupt, SystemExit):
            # Interrupted (KeyboardInterrupt from the signal): no new batch starts, running
            # ones stop before their next task and come back with what they finished.
            STOPPING.set()
            pool.shutdown(wait=False, cancel_futures=True)
            in_flight = [future for future in waiting if not future.cancel()]
            yield from in_flight_results(in_flight, lambda future: (futures[future], _result(future)), as_completed)
            raise

    return run


def _result(future: Future) -> list[TaskOutcome] | BaseException:
    error = future.exception()
    return error if error is not None else future.result()


def in_flight_results(in_flight: list, result_of: Callable, completed: Callable) -> Generator:
    """What the batches in flight bring back after an interruption, within DRAIN_SECONDS
    (`completed`: the futures' as_completed, which takes a timeout)."""
    try:
        for future in completed(in_flight, timeout=DRAIN_SECONDS):
            yield result_of(future)
    except TimeoutError:
        logger.debug("%d batches in flight were not back in %.0f s", len(in_flight), DRAIN_SECONDS)


def keep_finished(plan: RunPlan, finished: list[TaskOutcome], lease: DestinationLease) -> int | None:
    """On an interruption, while the run still holds the destination: record the tasks that
    finished (rbexport.run.record_finished); how many, or None when they could not be."""
    try:
        lease.check()  # never write the state of a destination another writer has taken
        return record_finished(plan, finished)
    except Exception as error:  # noqa: BLE001 - the run is ending: say so, never mask the interruption
        logger.warning("the finished tasks could not be recorded: %s", shown(error))
        return None


def run_local(
    request: ExportRequest, workers: int = 1, task_runner: str = "threads", batch_size: int = 0
) -> list[RunReport]:
    """A whole run in this process, without Prefect: plan, fan-out, publish, as the
    destination's one writer (waiting up to `request.lock_timeout` for another to finish)."""
    if task_runner not in ("threads", "processes"):
        raise ConfigurationError(f"the local engine runs tasks on threads or processes, not {task_runner!r}")
    STOPPING.clear()
    with destination_lease(request, notify=progress.current().notice).held(request.lock_timeout) as lease:
        plan = prepare_run(request)
        pool: Executor = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rbexport-task")
            if task_runner == "threads"
            else ProcessPoolExecutor(max_workers=workers)
        )
        finished: list[TaskOutcome] = []
        with pool:
            try:
                outcomes = export_all(plan, pool_batches(pool, plan.settings), workers, batch_size, finished=finished)
            except BaseException as error:
                STOPPING.set()  # interrupted: leave after the tasks in flight, publish nothing
                pool.shutdown(wait=False, cancel_futures=True)
                if isinstance(error, KeyboardInterrupt):
                    raise RunInterrupted(keep_finished(plan, finished, lease)) from None
                raise
        lease.check()
        return publish_export(plan, outcomes)


def run_export(
    source: str,
    destination: str,
    options: ExportOptions | None = None,
    endpoint_url: S3Access | str | None = None,
    variants: Sequence[Preset | Variant | str] | None = None,
    incremental: bool = True,
    prune: bool = False,
    workers: int = 1,
    replace_layout: bool = False,
    allowed_buckets: Sequence[str] = (),
    batch_size: int = 0,
    filters: TaskFilter | None = None,
) -> list[RunReport]:
    """`run_local` with the request spelled out; `endpoint_url` may also be an S3Access."""
    request = ExportRequest(
        source=source,
        destination=destination,
        options=options or ExportOptions(),
        variants=tuple(variants or ()),
        incremental=incremental,
        prune=prune,
        replace_layout=replace_layout,
        access=S3Access.of(endpoint_url),
        allowed_buckets=tuple(allowed_buckets),
        filters=filters or TaskFilter(),
    )
    return run_local(request, workers=workers, batch_size=batch_size)
