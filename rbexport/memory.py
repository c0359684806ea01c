"""How many volumes a process decodes at once: chosen by memory, not only by cores.

Every task reserves what its volumes will take before decoding them (from their headers,
read first); it waits while the reservations of other tasks would exceed the budget. One
task is always let through, however large, so a huge volume is slow, never stuck.

The budget is half the memory available when the process starts (cgroup limits
included), or RBEXPORT_MEMORY_LIMIT (bytes, or with a K/M/G suffix).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

# Bytes held per voxel of a decoded volume, on top of its input: the label values (up to
# 2), the positions of labelled voxels (up to 2 on average: 8 bytes for at most a quarter
# of them) and an output buffer being filled (up to 2).
WORKING_BYTES_PER_VOXEL = 6


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waiting = 0  # reservations held back until others are released
        self._changed = threading.Condition()

    def wait_until(self, predicate, timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked whenever the budget changes), at most `timeout` s."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    @contextmanager
    def reserve(self, amount: int) -> Iterator[None]:
        with self._changed:
            if self.used and self.used + amount > self.limit:
                self.waiting += 1
                self._changed.notify_all()
                while self.used and self.used + amount > self.limit:
                    self._changed.wait()
                self.waiting -= 1
            self.used += amount
            self.peak = max(self.peak, self.used)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()


def volume_bytes(voxels: int, input_itemsize: int) -> int:
    """What decoding and exporting one volume holds at most."""
    return voxels * (input_itemsize + WORKING_BYTES_PER_VOXEL)


@lru_cache(maxsize=1)
def process_budget() -> MemoryBudget:
    configured = os.environ.get("RBEXPORT_MEMORY_LIMIT")
    return MemoryBudget(parse_size(configured) if configured else available_memory() // 2)


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def available_memory() -> int:
    """MemAvailable, or the cgroup's limit minus its usage when that is lower."""
    available = _meminfo_available()
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            available = min(available, int(limit) - usage)
    return max(available, 256 * 1024**2)


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")) if hasattr(os, "sysconf") else 4 * 1024**3
