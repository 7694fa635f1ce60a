"""Keeping the operator's memory lean after a burst, and its garbage collector quick.

A fleet's start is a burst: a thousand Pipelines, their children and their watch events decoded at
once, a thousand status writes under way. Two things stay from it for good unless something is done:

- Most of the memory is free again, but glibc's allocator keeps the freed pages in its heaps (one per
  thread that allocated, up to ``MALLOC_ARENA_MAX``), so the resident size stays at the burst's peak.
  ``malloc_trim(0)`` hands the free pages of every heap back (``MADV_DONTNEED``): with 200 idle
  pipelines it took the resident size from 243 MB to 194 MB. It is glibc's own, documented function;
  elsewhere (musl, macOS) there is nothing to call and nothing is done.
- The long-lived objects (the caches, the loops, Kopf's state: 600,000 of them with 1,000 pipelines)
  are all in the collector's oldest generation, which it scans whole whenever that generation grew by
  a quarter: with 1,000 pipelines that was 33 full collections in five minutes, up to 1.1 s each, with
  every monitoring loop and API request stopped meanwhile. Frozen (``gc.freeze``) after the burst,
  they are left out of every later collection, which then looks only at what changed since.

So :func:`settle_after_bursts` looks at the resident size every minute, and when it grew by a tenth
since it last settled, it settles: unfreezes, collects everything once (garbage cycles among what was
frozen are found then), freezes what is left, and trims.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL = 60.0  # seconds between two looks at the resident size
TRIM_GROWTH = 0.10  # settle when it grew by more than this since it last settled
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols (libc among them): no library search, which would run ldconfig at start-up.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return the allocator's free pages to the system now; False where that cannot be done."""
    if _TRIM is None:
        return False
    _TRIM(0)  # a foreign call: the GIL is released while it runs
    return True


def resident_bytes() -> int | None:
    """The process's resident set size, or None where ``/proc`` does not tell."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def settle() -> None:
    """After a burst: one full collection (what was frozen included), the survivors frozen, the freed
    pages returned. The collection stops every thread for as long as it takes (about a second with a
    thousand pipelines), as each of the collector's own full collections did."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim()


async def settle_after_bursts(interval: float = TRIM_INTERVAL, growth: float = TRIM_GROWTH) -> None:
    """Every ``interval`` seconds, :func:`settle` if the resident size grew by more than ``growth`` since
    it last settled (a steady operator pays nothing). Until cancelled."""
    floor: int | None = None
    while True:
        await asyncio.sleep(interval)
        size = resident_bytes()
        if size is None or (floor is not None and size <= floor * (1 + growth)):
            continue
        started = time.monotonic()
        await asyncio.to_thread(settle)
        floor = resident_bytes()
        log.info("memory settled after growth: resident %s -> %s MB, %d objects frozen, in %.0f ms",
                 size // 2**20, floor // 2**20 if floor is not None else "?", gc.get_freeze_count(),
                 (time.monotonic() - started) * 1000)


__all__ = ["trim", "settle", "settle_after_bursts", "resident_bytes", "TRIM_INTERVAL"]
