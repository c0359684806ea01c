"""One writer per destination: a lease object at `<destination>/.rbexport/lock`.

Whoever writes an export holds the lease for the whole run (reading the destination's
state, writing masks, publishing tasks.json): the nightly, a manual run, an upload run,
the local engine, on any machine. The lease is a small JSON object (owner, since,
expires) taken with a conditional write (S3 If-None-Match / If-Match, an flock for
folders), renewed while the run lives, and deleted at its end. A run whose process died
leaves a lease that expires; the next writer takes it over then.

A second writer waits, polling, for up to `timeout` seconds, then gives up with
DestinationBusy ("... busy since ... by ..."), a ConfigurationError: the CLI exits 2.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .errors import ConfigurationError, ObjectNotFoundError, PreconditionFailed, StorageError, TransientStorageError
from .export_tree import LEASE_KEY
from .storage import Storage

# How long a lease lives without renewal; it is renewed every quarter of that. A writer
# killed without a chance to release blocks the destination this long at most.
LEASE_SECONDS = 120.0
# How long a second writer waits for the destination by default (a nightly run can be long).
WAIT_SECONDS = 3600.0


class DestinationBusy(ConfigurationError):
    """Another writer held the destination for longer than this run would wait."""


class LeaseLost(ConfigurationError):
    """The lease expired under this run (it could not renew it) and another writer took it."""


@dataclass(frozen=True)
class Lease:
    owner: str  # who: "alice@host pid 123", a Prefect flow run's name and deployment
    since: float  # seconds since the epoch
    expires: float
    token: str = ""  # this holder's, among holders of one owner (threads of one process)
    renewed: float = 0.0  # the holder's last renewal (0: never renewed, `since` then)

    def to_json(self) -> bytes:
        body = {**asdict(self), "since_utc": _utc(self.since), "expires_utc": _utc(self.expires)}
        return (json.dumps(body, indent=1) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> Lease | None:
        """The lease, or None for an object that is not one (it is then treated as expired)."""
        try:
            body = json.loads(data)
            since, expires = _epoch_seconds(body["since"]), _epoch_seconds(body["expires"])
            if since is None or expires is None:
                return None
            renewed = _epoch_seconds(body.get("renewed", since))
            return cls(str(body["owner"]), since, expires, str(body.get("token", "")), renewed or since)
        except (ValueError, TypeError, KeyError, RecursionError):
            return None

    def describe(self) -> str:
        return f"since {_utc(self.since)} by {self.owner}"

    def detail(self) -> str:
        """Who holds it, since when, until when: for a waiting run and `rbexport unlock`."""
        state = "runs until" if self.live else "expired"
        return f"{self.describe()} (its lease {state} {_utc(self.expires)} unless renewed)"

    @property
    def last_sign_of_life(self) -> float:
        """When the holder last wrote this lease (took it or renewed it)."""
        return max(self.since, self.renewed)

    def holder_process_gone(self) -> bool:
        """The holder ran on this host and its process is no longer there."""
        found = re.search(r"@(\S+) pid (\d+)\)?$", self.owner)
        if found is None or found.group(1) != socket.gethostname():
            return False
        try:
            os.kill(int(found.group(2)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, ValueError):
            return False
        return False

    @property
    def live(self) -> bool:
        return self.expires > time.time()


def read_lease(storage: Storage) -> Lease | None:
    """The lease in `storage` now (None: none, or an object that is not one)."""
    current = storage.read_tagged(LEASE_KEY)
    return Lease.parse(current[0]) if current else None


def default_owner() -> str:
    """This process, as a person reading the lease would look for it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def lease_seconds() -> float:
    """LEASE_SECONDS, or RBEXPORT_LEASE_SECONDS from the environment (at least 1 s)."""
    text = os.environ.get("RBEXPORT_LEASE_SECONDS")
    try:
        return max(1.0, float(text)) if text else LEASE_SECONDS
    except ValueError:
        raise ConfigurationError(f"RBEXPORT_LEASE_SECONDS={text!r} is not a number of seconds") from None


class DestinationLease:
    """`with DestinationLease(storage, owner).held(timeout):` writes as the destination's one writer."""

    def __init__(
        self,
        storage: Storage,
        owner: str | None = None,
        notify: Callable[[str], None] | None = None,
        seconds: float | None = None,
    ) -> None:
        self.storage = storage
        self.owner = owner or default_owner()
        self.notify = notify or (lambda message: None)
        self.seconds = seconds or lease_seconds()
        self.token = uuid.uuid4().hex
        self.tag: str | None = None
        self.lost: Lease | None = None
        self._stop = threading.Event()
        self.since = 0.0

    @contextmanager
    def held(self, timeout: float = WAIT_SECONDS) -> Iterator[DestinationLease]:
        self.acquire(timeout)
        renewer = threading.Thread(target=self._renew_until_stopped, name="rbexport-lease", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join()
            self.release()

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting_for: Lease | None = None
        failures = 0
        while True:
            try:
                current = self.storage.read_tagged(LEASE_KEY)
            except TransientStorageError as error:
                failures = _back_off(failures, error)
                continue
            held = Lease.parse(current[0]) if current else None
            now = time.time()
            if current is not None and held is not None and held.token == self.token:
                self.tag = current[1]  # ours: an earlier attempt was stored but its answer lost
                self.since = held.since
                return
            # A holder on this host whose process has ended (killed) frees the destination at once.
            gone = held is not None and held.expires > now and held.holder_process_gone()
            if current is None or held is None or held.expires <= now or gone:
                mine = Lease(self.owner, now, now + self.seconds, self.token, now)
                try:
                    self.tag = self.storage.write_if(LEASE_KEY, mine.to_json(), current[1] if current else None)
                except PreconditionFailed:
                    time.sleep(0.05)
                    continue  # another writer got there first: look again
                except TransientStorageError as error:
                    failures = _back_off(failures, error)
                    continue
                if not self._still_mine(mine):
                    continue  # a store that ignored the condition let another writer overwrite it
                self.since = now
                if held is not None:
                    why = "its process has ended" if gone else f"expired {_utc(held.expires)}"
                    self.notify(
                        f"took over the lease on {self.storage.url} from {held.owner} "
                        f"(held since {_utc(held.since)}, {why})"
                    )
                return
            if time.monotonic() >= deadline:
                raise DestinationBusy(
                    f"destination {self.storage.url} busy {held.describe()} (gave up after {timeout:.0f} s; "
                    f"its lease runs until {_utc(held.expires)} unless renewed; if that run is gone: "
                    f"rbexport unlock {self.storage.url})"
                )
            if waiting_for is None or waiting_for.owner != held.owner:
                self.notify(f"waiting for {self.storage.url}: busy {held.detail()}; {unlock_hint(self.storage.url)}")
                waiting_for = held
            time.sleep(max(0.05, min(self.seconds / 4, 1.0, deadline - time.monotonic())))

    def _still_mine(self, mine: Lease) -> bool:
        current = self.storage.read_tagged(LEASE_KEY)
        if current is not None and Lease.parse(current[0]) == mine:
            self.tag = current[1]
            return True
        self.tag = None
        return False

    def check(self) -> None:
        """Raise LeaseLost when another writer has taken the destination from this run."""
        if self.lost is not None:
            raise LeaseLost(
                f"lost the lease on {self.storage.url} (not renewed in time); {self.lost.owner} took it: this "
                "run stopped before publishing, run it again"
            )

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            now = time.time()
            try:
                self.tag = self.storage.write_if(
                    LEASE_KEY,
                    Lease(self.owner, self.since or now, now + self.seconds, self.token, now).to_json(),
                    self.tag,
                )
            except PreconditionFailed:
                try:
                    current = self.storage.read_tagged(LEASE_KEY)
                except StorageError:
                    current = None
                self.lost = (Lease.parse(current[0]) if current else None) or Lease("another writer", now, now)
                return
            except StorageError:
                continue  # the store did not answer this time; the lease outlives a few misses

    def release(self) -> None:
        if self.tag is None or self.lost is not None:
            return
        try:
            self.storage.delete_if(LEASE_KEY, self.tag)
        except (PreconditionFailed, ObjectNotFoundError):
            pass  # taken over meanwhile: the lease is another writer's now
        except StorageError as error:  # the run's work is done; the lease expires by itself
            self.notify(f"could not release the lease on {self.storage.url} ({error}); it expires by itself")
        self.tag = None


def unlock_hint(url: str) -> str:
    return f"a killed run's hold frees by itself when its lease expires; to free it now: rbexport unlock {url}"


def unlock(storage: Storage) -> str:
    """Delete the destination's lease object when its holder is not live; what was done, in a line.

    A live lease (not expired) is refused (DestinationBusy, naming its holder), unless the
    holder ran on this host and its process is gone."""
    current = storage.read_tagged(LEASE_KEY)
    if current is None:
        return f"{storage.url}: no lease held it"
    held = Lease.parse(current[0])
    if held is not None and held.live:
        if not held.holder_process_gone():
            raise DestinationBusy(
                f"{storage.url} is held {held.detail()}: that run is alive; stop it, or wait for its lease to expire"
            )
        reason = f"the lease whose holder's process is gone ({held.owner}, lease until {_utc(held.expires)})"
    elif held is not None:
        reason = f"the expired lease of {held.owner} (expired {_utc(held.expires)})"
    else:
        reason = "a lock object that is not a lease"
    try:
        storage.delete_if(LEASE_KEY, current[1])
    except (PreconditionFailed, ObjectNotFoundError):
        raise DestinationBusy(
            f"{storage.url}: its lease changed meanwhile (another run took it); not removed"
        ) from None
    return f"{storage.url}: removed {reason}"


def _back_off(failures: int, error: TransientStorageError) -> int:
    """Wait before asking the store again; after the fourth failure in a row, give up."""
    if failures >= 3:
        raise error
    time.sleep(0.5 * 2**failures)
    return failures + 1


# Expiry times a lease may hold: from the epoch to the year 9000 (datetime's range ends at
# 9999). Anything else (NaN, inf, 1e308, negative, a string, an int beyond a float) is not a
# lease this program wrote: it is treated as stale, like an unparsable object.
_LATEST_EPOCH_SECONDS = 221_845_392_000.0


def _epoch_seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and 0.0 <= seconds <= _LATEST_EPOCH_SECONDS else None


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
