"""The retryable steps of an export run.

Retries are for transient storage errors only (5xx, throttling, resets, timeouts), with
exponential back-off: the steps' own, and inside a batch each source task's
(rbexport.engine); a task whose data is bad fails at once and is recorded by the flow.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from rbexport.display import shown
from rbexport.engine import BACKOFF_SECONDS, STORAGE_RETRIES, Interrupted, export_batch
from rbexport.errors import ConfigurationError, RbexportError, TaskDataError, TransientStorageError
from rbexport.model import ExportRequest, ExportSettings, RunPlan, TaskJob, TaskOutcome
from rbexport.report import RunReport
from rbexport.run import prepare_run, publish_export
from rbexport.source import wait_until_quiet
from rbexport.storage import S3Access, open_storage


def only_transient_errors(task, task_run, state) -> bool:
    """Retry condition: the step failed because the store did not answer this time."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(error, TransientStorageError)


P = ParamSpec("P")
R = TypeVar("R")

RETRY_STORAGE: dict[str, Any] = dict(
    retries=STORAGE_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_SECONDS),
    retry_jitter_factor=0.2,
    retry_condition_fn=only_transient_errors,
    cache_policy=NO_CACHE,
    persist_result=False,
)


def expected_failures_as_states(step: Callable[P, R]) -> Callable[P, R]:
    """Bad data and bad configuration are answers, not crashes: the step ends Failed with
    the error's one-line message and no traceback in the log. The flow calls such a step
    with `return_state=True` and gets the error back from the state's `.result()`."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R | State[Any]:
        try:
            return step(*args, **kwargs)
        except (ConfigurationError, TaskDataError) as error:
            return failed(error)

    # Typed as the step: Prefect makes a returned state the task run's state, whose
    # result is the step's value (or raises the error).
    return cast(Callable[P, R], run)


# What Prefect's engine logs, with a traceback, when a flow run ends Failed: it raises the
# state's error again after the run is over (prefect.flow_engine.run_flow, prefect.engine).
ENGINE_EXIT_MESSAGE = "exited with unexpected exception"
# What it logs (with `NoneType: None` for a traceback) when a task returns a Failed state,
# before "Finished in state Failed('...')" says the same in one line (prefect.task_engine).
TASK_STATE_MESSAGE = "Task run failed with state: "


class ExpectedFailureFilter(logging.Filter):
    """Drops the engine's records about a run that ended Failed as planned: a flow run's
    traceback for one of our own errors (the flow has logged it as one line, and it is the
    state's message), and a task run's repeat of the Failed state it returned. A worker and a
    served runner run the flow through that engine path; anything else is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(TASK_STATE_MESSAGE):
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, RbexportError) and ENGINE_EXIT_MESSAGE in message)


def quiet_expected_failures() -> None:
    """Install ExpectedFailureFilter on the loggers the engine reports through (once)."""
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, ExpectedFailureFilter) for existing in logger.filters):
            logger.addFilter(ExpectedFailureFilter())


quiet_expected_failures()  # at import: the engine loads the flow module before it runs the flow


def failed(error: BaseException, message: str | None = None) -> Any:
    """A Failed state carrying `error`: a flow or task that returns it ends Failed with the
    message, without a traceback in its log, and calling it raises `error`. (Typed Any: the
    caller gets its declared result type or the error, never the state.)"""
    return Failed(message=shown(message or str(error)), data=error)


@task(name="wait-for-uploads", **RETRY_STORAGE)
@expected_failures_as_states
def wait_for_uploads(source: str, quiet_seconds: float, access: S3Access) -> None:
    waited = wait_until_quiet(open_storage(source, access), quiet_seconds)
    get_run_logger().info(
        "source settled after %.1f s (every task complete, or quiet for %.0f s)", waited, quiet_seconds
    )


@task(name="read-source", **RETRY_STORAGE)
@expected_failures_as_states
def read_source(request: ExportRequest) -> RunPlan:
    plan = prepare_run(request)
    skipped = {target.target.name: len(target.skipped) for target in plan.targets}
    get_run_logger().info(
        "%d tasks in %s; to export: %d; skipped as unchanged: %s",
        len(plan.tasks),
        plan.settings.source,
        len(plan.jobs),
        skipped,
    )
    return plan


@task(name="export-batch", task_run_name="export-{label}", cache_policy=NO_CACHE, persist_result=False)
@expected_failures_as_states
def export_tasks_of_batch(jobs: list[TaskJob], settings: ExportSettings, label: str) -> list[TaskOutcome]:
    """The batch's source tasks, one after another (rbexport.engine.export_batch retries a
    task whose storage failed, and only that task); one outcome per source task.

    A batch with a failed source task ends Failed (red in the UI, naming the tasks) and
    still gives every outcome to the flow, which logs each failure once."""
    try:
        outcomes = export_batch(jobs, settings)
    except Interrupted as stopped:  # the run is ending (Ctrl-C): its tasks so far, without a traceback
        return cast(list[TaskOutcome], Failed(message=shown(str(stopped)), data=stopped))
    exported = [
        f"{shown(job.task_id)} [{shown(name)}]: {len(result.files)} files, {sum(record.bytes for record in result.files)} bytes"
        + (f", {len(result.warnings)} warnings" if result.warnings else "")
        for job, outcome in zip(jobs, outcomes, strict=True)
        for name, result in outcome.results.items()
    ]
    if exported:  # one record for the batch, a line per source task: a log record costs ~1 ms
        get_run_logger().info("exported:\n%s", "\n".join(exported))
    failed_ids = [outcome.task_id for outcome in outcomes if outcome.failures]
    if failed_ids:
        names = ", ".join(shown(task_id) for task_id in failed_ids[:10])
        names += f" and {len(failed_ids) - 10} more" if len(failed_ids) > 10 else ""
        return cast(
            list[TaskOutcome], Failed(message=f"{len(failed_ids)} of {len(jobs)} failed: {names}", data=outcomes)
        )
    return outcomes


@task(name="publish-export", **RETRY_STORAGE)
@expected_failures_as_states
def publish(plan: RunPlan, outcomes: list[TaskOutcome]) -> list[RunReport]:
    return publish_export(plan, outcomes)
