"""One writer per destination in Prefect runs: a global concurrency limit, then the lease.

The global concurrency limit (one slot, named after the destination: `rbexport:s3:bucket:prefix`)
queues Prefect runs of every deployment on the API they share, and shows in the UI's
Concurrency page which flow run holds the destination. The lease object in the destination
(rbexport.lease) then excludes writers that API does not see: the local engine, runs on
another Prefect server. Both are waited for within one timeout.

The slot is taken with the client's lease calls rather than `prefect.concurrency.sync.concurrency`,
whose timeout logs an error with a traceback: a busy destination is an answer, not a crash.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from uuid import UUID

from httpx import HTTPStatusError
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger

from rbexport.lease import DestinationBusy, DestinationLease, Lease, default_owner, read_lease, unlock_hint
from rbexport.model import ExportRequest
from rbexport.run import destination_lease

# Prefect's lease on the slot (its API's minimum): renewed every third of it while the run
# lives, so a killed run's slot frees within a minute where the API revokes expired leases.
SLOT_LEASE_SECONDS = 60.0
# Prefect revokes expired slot leases only in its `repossessor` service, and keeps the leases
# in memory while the slot count is in its database: an API restarted (or an ephemeral API
# killed, which has no repossessor) while a run held the slot leaves it taken for ever. A
# slot that stays taken while the destination's lease object shows no live holder for longer
# than the slot's lease plus this margin (a live holder renews both; the repossessor, where it
# runs, has revoked an expired slot lease by then) is orphaned: it is reset, with a warning.
ORPHAN_MARGIN_SECONDS = 45.0


def concurrency_limit_name(destination_url: str) -> str:
    """`s3://scans/exports` -> `rbexport:s3:scans:exports` (Prefect names may not hold / % & < >)."""
    return "rbexport:" + re.sub(r"[/%&<>]+", ":", destination_url.replace("://", ":")).strip(":")


@contextmanager
def one_writer(request: ExportRequest, notify: Callable[[str], None]) -> Iterator[DestinationLease]:
    """Hold the destination for this flow run: its concurrency slot, then its lease."""
    from prefect.runtime import flow_run

    lease = destination_lease(request, owner=_flow_run_owner(), notify=notify)
    url, name = lease.storage.url, concurrency_limit_name(lease.storage.url)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run.id)) if flow_run.id else None
    deadline = time.monotonic() + request.lock_timeout

    def waiting() -> None:
        held = read_lease(lease.storage)
        who = f" {held.detail()}" if held else " (no lease object in it: its holder has not written one yet, or died)"
        notify(f"waiting for {url}: concurrency limit {name} is taken{who}; {unlock_hint(url)}")

    def busy() -> DestinationBusy:
        held = _held_since(lease) or f" (its concurrency limit {name} stayed taken)"
        return DestinationBusy(f"destination {url} busy{held} (gave up after {request.lock_timeout:.0f} s)")

    def orphaned() -> str | None:
        return watch.orphaned(read_lease(lease.storage))

    watch = OrphanWatch()
    with _slot(name, holder, deadline, waiting, busy, orphaned, notify):
        with lease.held(max(0.0, deadline - time.monotonic())):
            yield lease


@contextmanager
def _slot(
    name: str,
    holder: ConcurrencyLeaseHolder | None,
    deadline: float,
    waiting: Callable[[], None],
    busy: Callable[[], Exception],
    orphaned: Callable[[], str | None] = lambda: None,
    notify: Callable[[str], None] = lambda message: None,
) -> Iterator[None]:
    """One slot of the limit `name`, renewed until the block ends; an orphaned one is reset."""
    _ensure_limit(name)
    said = False
    with get_client(sync_client=True) as client:
        lease_id = None
        while lease_id is None:
            try:
                answer = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=SLOT_LEASE_SECONDS, holder=holder
                )
                lease_id = UUID(answer.json()["lease_id"])
            except HTTPStatusError as error:
                if error.response.status_code != 423:  # 423 Locked: the slot is taken
                    raise
                why = orphaned()
                if why is not None:
                    reset_slot(client, name)
                    notify(f"concurrency limit {name} was taken by no live run ({why}): reset it")
                    continue
                if time.monotonic() >= deadline:
                    raise busy() from None
                if not said:
                    waiting()
                    said = True
                retry_after = float(error.response.headers.get("Retry-After") or 1)
                time.sleep(max(0.1, min(retry_after, 2.0, deadline - time.monotonic())))
    stop = threading.Event()
    # The thread runs in this context: its client talks to the API this run uses (a new
    # thread would start with Prefect's default settings, and an API of its own).
    renewer = threading.Thread(
        target=contextvars.copy_context().run, args=(_renew, lease_id, stop), name="rbexport-slot", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id)
        except Exception as error:  # noqa: BLE001 - the run's work is done; the slot's lease expires
            get_run_logger().warning("could not release concurrency slot %s (%s); it frees by itself", name, error)


class OrphanWatch:
    """Whether a taken slot has a live holder, judged by the destination's lease object.

    A live holder of the slot renews the lease object (rbexport.lease) every quarter of its
    lease; one that shows no sign of life (no lease object, or one last written) for longer
    than the slot's own lease plus a margin has died without releasing the slot."""

    def __init__(self, limit: float = SLOT_LEASE_SECONDS + ORPHAN_MARGIN_SECONDS) -> None:
        self.limit = limit
        self.absent_since: float | None = None

    def orphaned(self, held: Lease | None) -> str | None:
        now = time.time()
        if held is not None and held.holder_process_gone():  # killed on this host: no need to wait
            self.absent_since = None
            return f"{held.owner} has ended"
        if held is not None and held.live:
            self.absent_since = None
            return None
        if held is not None:
            self.absent_since = None
            silent = now - held.last_sign_of_life
            return f"{held.owner} last renewed its lease {silent:.0f} s ago" if silent > self.limit else None
        if self.absent_since is None:
            self.absent_since = now
        absent = now - self.absent_since
        return f"no lease object in the destination for {absent:.0f} s" if absent > self.limit else None


def reset_slot(client, name: str) -> None:
    """Give back the limit's taken slot (active_slots 0): its holder is gone."""
    client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def free_orphaned_slot(destination_url: str, held: Lease | None) -> str | None:
    """For `rbexport unlock`: reset the destination's slot when it is taken and `held` (the
    lease object now) shows no live holder; what was done, or None (nothing to free)."""
    name = concurrency_limit_name(destination_url)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None
        if not limit.active_slots:
            return None
        if held is not None and held.live and not held.holder_process_gone():
            raise DestinationBusy(f"concurrency limit {name} is taken, and the destination is held {held.detail()}")
        reset_slot(client, name)
    return f"freed the Prefect concurrency slot {name}"


def _renew(lease_id: UUID, stop: threading.Event) -> None:
    with get_client(sync_client=True) as client:
        while not stop.wait(SLOT_LEASE_SECONDS / 3):
            try:
                client.renew_concurrency_lease(lease_id, lease_duration=SLOT_LEASE_SECONDS)
            except Exception:  # noqa: BLE001 - the next renewal may reach the API; the slot outlives a miss
                continue


def _ensure_limit(name: str) -> None:
    """Create the destination's limit (one slot) the first time a run writes there."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another writer created it meanwhile


def _held_since(lease: DestinationLease) -> str:
    """` since ... by ...` from the destination's lease object (the slot's holder wrote it), or ""."""
    held = read_lease(lease.storage)
    return f" {held.describe()}" if held else ""


def _flow_run_owner() -> str:
    from prefect.runtime import deployment, flow_run

    deployed = f", deployment {deployment.name}" if deployment.name else ""
    return f"flow run {flow_run.name}{deployed} ({default_owner()})"


@contextmanager
def one_writer_of(lease: DestinationLease, timeout: float, notify: Callable[[str], None]) -> Iterator[DestinationLease]:
    """`one_writer` for a lease made elsewhere (a release holds its export this way): the
    destination's concurrency slot, then the lease, within `timeout`."""
    from prefect.runtime import flow_run

    url, name = lease.storage.url, concurrency_limit_name(lease.storage.url)
    lease.owner = _flow_run_owner()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run.id)) if flow_run.id else None
    deadline = time.monotonic() + timeout

    def waiting() -> None:
        notify(f"waiting for {url}: concurrency limit {name} is taken{_held_since(lease)}")

    def busy() -> DestinationBusy:
        held = _held_since(lease) or f" (its concurrency limit {name} stayed taken)"
        return DestinationBusy(f"destination {url} busy{held} (gave up after {timeout:.0f} s)")

    with _slot(name, holder, deadline, waiting, busy):
        with lease.held(max(0.0, deadline - time.monotonic())):
            yield lease
