"""Served flow runs start in a process forked from a warm one, not in a new interpreter.

Prefect's runner starts each run of a flow it was given (`Runner.add_flow`) in a process of
its own, `run_flow_in_subprocess`, with multiprocessing's `spawn`: a new interpreter that
imports Prefect and the flow again, 1.6-1.7 s of the served runner's 5 s from an upload to
its export (benchmarks/latency.py: Pending to Running). Prefect offers no setting for it.

`start_flow_runs_warm(modules)` starts multiprocessing's fork server once, with Prefect's
engine and the served flows imported, and has `run_flow_in_subprocess` take its processes
from it: each run is a fork of that server, Running 0.3 s after Pending. A run still has a
process of its own (its memory, signals, exit code, the environment and settings Prefect
gives it, Ctrl+C as from a terminal); the fork server is single-threaded (forking it is
safe), ignores Ctrl+C and exits with the process that started it.

It replaces one name, `multiprocessing`, in `prefect.flow_engine`, the module that holds
`run_flow_in_subprocess` (Prefect 3.8.8): that module then sees multiprocessing itself but
for `get_context`, which gives the fork server's context. Where the fork server does not
exist (Windows) or that function no longer names multiprocessing (another Prefect), runs
start as Prefect starts them, and `start_flow_runs_warm` says so.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import signal
import types
from collections.abc import Sequence

# Imported by the fork server besides the flows: what run_flow_in_subprocess's child runs.
ENGINE_MODULES = ("prefect.engine", "prefect.flow_engine")


class _FlowRunProcess(multiprocessing.context.ForkServerProcess):
    """A flow run's process: a fork of the fork server, taking Ctrl+C again (the server
    ignores it, and its children inherit that) as a process Prefect spawns does."""

    def run(self) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        super().run()


class _FlowRunContext(multiprocessing.context.ForkServerContext):
    Process = _FlowRunProcess


class _ForkServerMultiprocessing(types.ModuleType):
    """The multiprocessing module as `prefect.flow_engine` sees it: itself, but for
    get_context(), which gives the fork server's context whatever method is asked for."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        super().__init__("multiprocessing")
        self._context = context

    def __getattr__(self, name: str) -> object:
        return getattr(multiprocessing, name)

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context


def start_flow_runs_warm(modules: Sequence[str]) -> str | None:
    """Start the fork server with Prefect's engine and `modules` imported, and have
    run_flow_in_subprocess fork its runs from it. Returns None, or why runs start cold."""
    import prefect.flow_engine

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "this platform has no fork server: each flow run starts a new interpreter"
    if isinstance(prefect.flow_engine.multiprocessing, _ForkServerMultiprocessing):
        return None  # started already
    if "multiprocessing" not in prefect.flow_engine.run_flow_in_subprocess.__code__.co_names:
        return "this Prefect starts flow runs another way: each flow run starts as Prefect starts it"
    context = _FlowRunContext()
    context.set_forkserver_preload([*ENGINE_MODULES, __name__, *modules])
    # Now, not on the first run (importing takes 1.5 s), and ignoring Ctrl+C from its first
    # instruction: a Ctrl+C while it imports would print a traceback of the import.
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, interrupt)
    prefect.flow_engine.multiprocessing = _ForkServerMultiprocessing(context)
    return None
