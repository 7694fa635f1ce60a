"""Bounded, fairly shared capacity of the HTTP API.

:class:`FairSlots` holds the requests being served: at most ``total`` at once, and at most a cap of them for any
one key of each kind (an identity, a namespace, the long-running requests), so that one tenant cannot take
what the others need. A request that cannot have a slot waits, but only behind as many others of its own keys
as their cap and for at most ``wait`` seconds: then 503 ``ApiBusy`` with ``Retry-After``, never a queue
without end. :class:`StreamSlots` bounds the open-ended streams (the live event streams; the data plane's log,
egress and query streams) overall and per client address, identity and namespace, with 429 beyond at once: a
stream is not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .errors import ApiError

Key = tuple[str, str]  # (kind, value): ("identity", "alice"), ("namespace", "data-team"), ("long", "")
UNBOUNDED = sys.maxsize
BUSY = "ApiBusy"
# What a scope is called in a refusal's message.
_WHERE = {"identity": "for user '{}'", "namespace": "in namespace '{}'", "long": "that wait for a pipeline or "
          "for the operator to act{}", "all": "in all{}"}


def _count(counts: dict[Key, int], keys: tuple[Key, ...], step: int) -> None:
    """Add ``step`` (1 or -1) to the count of each key; a count that reaches 0 is forgotten."""
    for key in keys:
        left = counts.get(key, 0) + step
        if left:
            counts[key] = left
        else:
            del counts[key]


def share(total: int, given: int | None) -> int:
    """A per-tenant cap: as given, else a quarter of ``total`` (at least 1)."""
    return given if given else max(1, total // 4)


@dataclass
class _Waiter:
    keys: tuple[Key, ...]
    order: int  # when it began to wait
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairSlots:
    """Slots shared fairly among tenants (see the module's docstring). ``caps`` bounds, per kind of key, what
    one key may hold; ``what`` names what is held in the 503's message; ``refused`` is told the scope of each
    refusal (for the metrics)."""

    def __init__(self, total: int, caps: Mapping[str, int], wait: float, what: str,
                 refused: Callable[[str], None] | None = None) -> None:
        self.total, self.caps, self.wait, self.what = total, dict(caps), wait, what
        self.refused = refused
        self.held = 0
        self.counts: dict[Key, int] = {}
        self.waiting: dict[Key, int] = {}
        self._waiters: dict[int, _Waiter] = {}  # in the order they began to wait
        self._queues: dict[Key, dict[int, _Waiter]] = {}  # the same, by key
        self._arrivals = 0

    def _full(self, keys: tuple[Key, ...]) -> tuple[str, str] | None:
        """The scope that has no slot for ``keys`` now (kind, value), or None when one is free."""
        if self.held >= self.total:
            return "all", ""
        return next(((kind, value) for kind, value in keys if self.counts.get((kind, value), 0) >= self.caps[kind]),
                    None)

    def _take(self, keys: tuple[Key, ...]) -> None:
        self.held += 1
        _count(self.counts, keys, 1)

    def _give_back(self, keys: tuple[Key, ...]) -> None:
        was_full = self.held >= self.total
        self.held -= 1
        _count(self.counts, keys, -1)
        # The slot goes to the longest-waiting request that may have it: a tenant at its own cap waits for
        # its own slots and never holds up another tenant's request behind it. Unless the pool was full, only
        # a request that shares a key with this one can have it now (the others wait for a key of theirs).
        if was_full:
            candidates = list(self._waiters.values())
        else:
            candidates = [w for _, w in sorted({n: w for key in keys for n, w in self._queues.get(key, {}).items()}
                                               .items())]
        for waiter in candidates:
            if self.held >= self.total:
                break
            if self._full(waiter.keys) is None:
                self._unqueue(waiter)
                self._take(waiter.keys)
                waiter.granted.set_result(None)

    def _unqueue(self, waiter: _Waiter) -> None:
        del self._waiters[waiter.order]
        for key in waiter.keys:
            queue = self._queues[key]
            del queue[waiter.order]
            if not queue:
                del self._queues[key]
        _count(self.waiting, waiter.keys, -1)

    @contextlib.asynccontextmanager
    async def slot(self, keys: Mapping[str, str]) -> AsyncIterator[None]:
        """Hold one slot for ``keys`` (kind -> value; each kind one of ``caps``) while the block runs."""
        held = tuple(keys.items())
        # Whenever a slot is given back it goes to a waiter that may have it, so none that waits could have
        # one now: a request that finds a free slot takes it without passing anyone.
        full = self._full(held)
        if full is not None:
            await self._wait(held, full)
        else:
            self._take(held)
        try:
            yield
        finally:
            self._give_back(held)

    async def _wait(self, keys: tuple[Key, ...], full: tuple[str, str]) -> None:
        queued = next((key for key in keys if self.waiting.get(key, 0) >= self.caps[key[0]]), None)
        if queued is not None or len(self._waiters) >= self.total:
            raise self._busy(queued or full, waited=0.0)
        self._arrivals += 1
        waiter = _Waiter(keys, self._arrivals)
        self._waiters[waiter.order] = waiter
        for key in keys:
            self._queues.setdefault(key, {})[waiter.order] = waiter
        _count(self.waiting, keys, 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.wait):
                await asyncio.shield(waiter.granted)
        except BaseException as exc:
            if waiter.granted.done():  # granted as the wait ended: given back (or kept, below)
                if isinstance(exc, TimeoutError):
                    return  # it came in time after all
                self._give_back(keys)
            else:
                self._unqueue(waiter)
                waiter.granted.cancel()
            if isinstance(exc, TimeoutError):
                raise self._busy(self._full(keys) or full, waited=loop.time() - started) from None
            raise

    def _busy(self, scope: tuple[str, str], waited: float) -> ApiError:
        kind, value = scope
        limit = self.total if kind == "all" else self.caps[kind]
        if self.refused is not None:
            self.refused(kind)
        where = _WHERE[kind].format(value[:253])
        return ApiError(503, BUSY, f"Too many {self.what} are under way {where}: at most {limit} at once, and this "
                                   f"one waited {waited:.1f} s for a slot; try again shortly",
                        {"scope": kind, "limit": limit, "waited_seconds": round(waited, 1)}, retry_after=2)


class StreamSlots:
    """The streams of one kind open now: at most ``streams`` in all, ``per_client`` from one client address,
    ``per_identity`` of one user and ``per_namespace`` in one namespace. ``what`` names them and ``advice``
    says what to do instead, in the 429's message."""

    def __init__(self, streams: int, per_client: int, what: str, advice: str, per_identity: int | None = None,
                 per_namespace: int | None = None) -> None:
        self.streams = streams
        self.caps = {"client": per_client, "identity": share(streams, per_identity),
                     "namespace": share(streams, per_namespace)}
        self.what, self.advice = what, advice
        self.open = 0
        self.counts: dict[Key, int] = {}

    @property
    def per_client(self) -> int:
        return self.caps["client"]

    @contextlib.contextmanager
    def slot(self, client: str, identity: str = "", namespace: str = "") -> Iterator[None]:
        keys = (("client", client), ("identity", identity), ("namespace", namespace))
        full = next(((kind, value) for kind, value in keys if self.counts.get((kind, value), 0) >= self.caps[kind]),
                    None)
        if self.open >= self.streams or full is not None:
            if self.open >= self.streams:
                limit, where = self.streams, "in all"
            else:
                assert full is not None
                limit = self.caps[full[0]]
                where = {"client": "from {}", "identity": "for user '{}'", "namespace": "in namespace '{}'"}[
                    full[0]].format(full[1][:253])
            raise ApiError(429, "TooManyStreams", f"Too many {self.what} are open {where}: at most {limit}; "
                                                  f"{self.advice}", {"limit": limit}, retry_after=5)
        self.open += 1
        _count(self.counts, keys, 1)
        try:
            yield
        finally:
            self.open -= 1
            _count(self.counts, keys, -1)
