"""What both event-store backends share: the interface (:class:`EventStorage`), the bounded write
queue (:class:`QueuedEventStore`), and the errors a reader sees (:class:`StoreUnavailable`).

Writes never block the asyncio loop: ``append`` puts the events on a queue and returns; one writer
thread takes everything queued and commits it in one transaction. A failed commit is retried (with
backoff) and the events stay queued, but the queue is bounded (``queue_limit`` events): when it is
full, *new* events are dropped and counted in :attr:`QueuedEventStore.dropped`. Dropping the newest
rather than the oldest is deliberate: the newest events are also in each Pipeline's
``status.history``, from which the store is re-seeded once it can be written again (the
:attr:`QueuedEventStore.generation` advances), whereas the oldest would be lost for good. The same
thread prunes each pipeline that received events down to the newest ``retention`` at least every
30 s, so the count is "approximately 720", as Feldera documents. The newest event of each pipeline
is also kept in memory, so a monitoring pass never waits for the writer.
"""


from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString, Protocol

from ..identity import PipelineKey
from ..models import MonitorEvent


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 30.0
MAX_BATCH = 5000  # events per transaction: keeps the write-ahead log small
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
DEFAULT_QUEUE_LIMIT = 100_000
# Every pipeline uid in the store (both backends): one probe of the (pipeline_uid, ...) index per pipeline, a
# "loose index scan". About 10 ms for a thousand pipelines of 720 events each, where SELECT DISTINCT reads
# every entry of the index (150 ms).
STORED_UIDS: LiteralString = (
    "WITH RECURSIVE uids(uid) AS ("
    " SELECT min(pipeline_uid) FROM monitor_event"
    " UNION ALL SELECT (SELECT min(pipeline_uid) FROM monitor_event WHERE pipeline_uid > uids.uid)"
    " FROM uids WHERE uids.uid IS NOT NULL) "
    "SELECT uid FROM uids WHERE uid IS NOT NULL")


@dataclass
class _Batch:
    key: PipelineKey
    events: list[MonitorEvent]
    ignore_existing: bool = False
    forget: bool = False  # delete every stored event of the pipeline (its deletion)


@dataclass(frozen=True)
class Recovery:
    """The store was started afresh (the old file was corrupt, deleted or replaced): events
    stored before ``at`` are lost except those the Pipelines' ``status.history`` keeps."""
    generation: int
    at: dt.datetime
    what: str  # what happened, and where the old file is


class StoreClosed(Exception):
    pass


class StoreUnavailable(Exception):
    """A read of the event store failed for a reason outside the operator: the file is corrupt, gone
    or locked, the database server does not answer. The HTTP API answers 503 ``EventStoreUnavailable``;
    the writer recovers on its own (events wait in its queue)."""


class EventStorage(Protocol):
    """What the operator uses of an event store, whichever the backend (:class:`.sqlite.SqliteEventStore`,
    :class:`.postgres.PostgresEventStore`). Writing never blocks; reading does (call it through
    ``asyncio.to_thread``) and raises :class:`StoreUnavailable` when the store cannot be read now."""
    retention: int
    queue_limit: int
    appended: int
    write_failures: int
    dropped: int
    generation: int
    recovery: Recovery | None

    def append(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None: ...

    def seed(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None: ...

    def forget(self, key: PipelineKey) -> None: ...

    def forgetting(self) -> frozenset[str]: ...

    def newest(self, uid: str) -> MonitorEvent | None: ...

    @property
    def queue_length(self) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def commit_seconds(self) -> tuple[list[tuple[float, int]], float]: ...

    def flush(self, timeout: float = 30.0) -> bool: ...

    def prune_now(self) -> None: ...

    def close(self, timeout: float = 60.0) -> None: ...

    def pipeline_uids(self) -> list[str]: ...

    def pipeline_key(self, uid: str) -> PipelineKey | None: ...

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]: ...

    def list_json(self, uid: str, selector: str = "status") -> str: ...

    def get_json(self, uid: str, event_id: uuid.UUID | None, selector: str = "status") -> str | None: ...

    def get(self, uid: str, event_id: uuid.UUID) -> MonitorEvent | None: ...

    def latest(self, uid: str) -> MonitorEvent | None: ...

    def count(self, uid: str | None = None) -> int: ...

    def delete(self, uid: str) -> int: ...


class QueuedEventStore:
    """What both backends share: the bounded queue one writer thread drains, the newest event of each
    pipeline in memory, and the counters ``/metrics`` shows. A backend sets :attr:`where` (for the
    log) and starts :attr:`_writer`, its write loop: it takes what is queued with :meth:`_take`, commits
    it in one transaction, and reports it written with :meth:`_committed`."""

    where = "the event store"

    def __init__(self, retention: int, prune_interval: float, queue_limit: int) -> None:
        self.retention = retention
        self.prune_interval = prune_interval
        self.queue_limit = queue_limit
        self._queue: queue.Queue[_Batch | None] = queue.Queue()
        self._dirty: set[str] = set()
        self._closed = False
        self.appended = 0
        self.write_failures = 0
        self.dropped = 0
        self.generation = 0
        """Advances whenever the store lost events (recovered file, dropped events): pipelines re-seed."""
        self.recovery: Recovery | None = None
        self._newest: dict[str, MonitorEvent] = {}
        self._forgetting: set[str] = set()  # uids whose removal is queued and not committed yet
        self._dropping = False  # events are being dropped (the queue is full) until writes succeed again
        self._queued = 0  # events queued or held by the writer, not yet committed
        self._pending = 0
        self._idle = threading.Condition()
        self._writer: threading.Thread | None = None
        self._commits = [0] * (len(COMMIT_BUCKETS) + 1)  # commits by duration bucket (the last: slower)
        self._commit_sum = 0.0

    # -- writing -----------------------------------------------------------------------------

    def append(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Queue events for writing; returns at once."""
        if events:
            newest = max(events, key=lambda e: (e.recorded_at, str(e.event_id)))
            known = self._newest.get(key.uid)
            if known is None or (newest.recorded_at, str(newest.event_id)) >= (known.recorded_at, str(known.event_id)):
                self._newest[key.uid] = newest
        self._enqueue(_Batch(key, list(events)))

    def seed(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Queue events that may already be stored (e.g. from ``status.history``): existing ones are kept."""
        self._enqueue(_Batch(key, list(events), ignore_existing=True))

    def forget(self, key: PipelineKey) -> None:
        """Queue the removal of every event of a pipeline (after what is queued before it); returns at once."""
        self._newest.pop(key.uid, None)
        self._forgetting.add(key.uid)
        self._enqueue(_Batch(key, [], forget=True))

    def forgetting(self) -> frozenset[str]:
        """The pipelines whose removal is queued and not written yet (the store cannot be written now)."""
        return frozenset(self._forgetting)

    def newest(self, uid: str) -> MonitorEvent | None:
        """The newest event appended since start (in memory: never waits for the writer or the store)."""
        return self._newest.get(uid)

    @property
    def queue_length(self) -> int:
        """Events waiting to be written (at most ``queue_limit``)."""
        return self._queued

    def stats(self) -> dict[str, int]:
        """What ``/metrics`` shows of the store: events dropped because the queue was full, failed
        commits, events waiting to be written, events written, and the store's generation."""
        return {"dropped": self.dropped, "write_failures": self.write_failures, "queued": self.queue_length,
                "appended": self.appended, "generation": self.generation}

    def commit_seconds(self) -> tuple[list[tuple[float, int]], float]:
        """How long the writer's transactions took: cumulative counts by upper bound (Prometheus'
        histogram buckets, ``inf`` last) and their total."""
        with self._idle:
            counts, total = list(self._commits), self._commit_sum
        cumulative, running = [], 0
        for bound, count in zip([*COMMIT_BUCKETS, math.inf], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, total

    def _timed_commit(self, commit: Callable[[], None]) -> None:
        """One transaction of the writer, timed for :meth:`commit_seconds`."""
        started = time.monotonic()
        commit()
        took = time.monotonic() - started
        with self._idle:
            self._commits[bisect.bisect_left(COMMIT_BUCKETS, took)] += 1
            self._commit_sum += took

    def _enqueue(self, batch: _Batch) -> None:
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not batch.events and not batch.forget:
            return
        with self._idle:
            if batch.events and self._queued + len(batch.events) > self.queue_limit:
                if not self._dropping:
                    log.error("event store: %d events are waiting to be written and %d more would pass the "
                              "limit of %d (--event-store-queue-limit); new events are dropped until the store "
                              "accepts writes again (see the warnings about it), then re-seeded from "
                              "status.history", self._queued, len(batch.events), self.queue_limit)
                self._dropping = True
                self.dropped += len(batch.events)
                return
            self._queued += len(batch.events)
            self._pending += 1
        self._queue.put(batch)

    def _take(self, held: list[_Batch], wait: float | None) -> bool:
        """Move what is queued into ``held`` (up to :data:`MAX_BATCH` events: one transaction), first
        waiting up to ``wait`` seconds for anything if ``wait`` is given; True once the store is closing."""
        stopping = False
        if wait is not None:
            item: _Batch | object | None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = _NOTHING
            if item is None:
                stopping = True
            elif isinstance(item, _Batch):
                held.append(item)
        count = sum(len(b.events) for b in held)
        while count < MAX_BATCH:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stopping = True
            else:
                held.append(more)
                count += len(more.events)
        return stopping

    def _committed(self, held: list[_Batch]) -> None:
        """``held`` is written: what :meth:`flush` waits for."""
        with self._idle:
            self._pending -= len(held)
            self._queued -= sum(len(b.events) for b in held)
            self._forgetting.difference_update(b.key.uid for b in held if b.forget)
            self._idle.notify_all()

    def _recovered(self, what: str) -> None:
        self.generation += 1
        self.recovery = Recovery(self.generation, dt.datetime.now(dt.UTC), what)
        log.error("%s; events stored before are lost except those in each Pipeline's status.history, from "
                  "which every pipeline re-seeds its events now", what)

    def _writable_again(self) -> None:
        """Writes succeed again after failures: if events were dropped meanwhile, every pipeline
        re-seeds from its ``status.history`` (the newest of the dropped events come back)."""
        if self._dropping:
            self._dropping = False
            self.generation += 1
            log.warning("event store %s accepts writes again; %d events were dropped in all while it did not: "
                        "every pipeline re-seeds its newest events from status.history", self.where, self.dropped)
        else:
            log.warning("event store %s accepts writes again; nothing was lost", self.where)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is committed (tests and tools; the operator never waits)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 60.0) -> None:
        """Commit what is queued, prune, and stop the writer (waiting at most ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join(timeout=timeout)
        log.info("event store closed: %d events appended, %d write failures, %d dropped", self.appended,
                 self.write_failures, self.dropped)
        self._close_readers()

    def _close_readers(self) -> None:
        """Close what the readers use (the backend's)."""

    # Reading (each backend has its own SQL); the last methods of the class, so that ``list`` names
    # the built-in type everywhere above.
    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]:
        raise NotImplementedError

    def latest(self, uid: str) -> MonitorEvent | None:
        """The newest stored event of a pipeline (newest first: the first of a list of one)."""
        events = self.list(uid, limit=1)
        return events[0] if events else None


_NOTHING = object()
