"""Live monitor events: ``GET /v0/pipelines/{name}/events?follow=true``.

A stream first replays, oldest first, the retained events newer than ``after`` (all of them without it),
then sends each new event as it is recorded, as newline-delimited JSON or, when the client's ``Accept``
asks for ``text/event-stream``, as server-sent events.

Where new events come from: every replica, leader or standby, polls the event store once a second for
each *followed* pipeline (one :class:`_Feed` per pipeline, shared by all its streams, so the store sees
one read per second per followed pipeline, not per connection); the replica that records a pipeline's
events also hands them to the hub the moment they are recorded (:meth:`FollowHub.published`), so its
streams do not wait for the poll nor for the store's writer. A feed keeps the newest event it delivered
as its cursor and delivers only what is newer, so an event seen both ways is sent once; each stream
keeps its own cursor as well, so its replay and its live events never overlap.

Monitoring never waits for a client: a feed hands events to each stream's bounded queue and returns. A
stream whose queue overflows (its client reads slower than events come) is ended with a final
``StreamLagging`` line that names the last event it sent, from which the client resumes with ``after=``.
A follow stream's socket send buffer is capped (:data:`SEND_BUFFER`; Linux would let it grow to
megabytes), so a client that stops reading is noticed after some tens of kilobytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from cachetools import TTLCache

from ..identity import PipelineKey
from ..models import MonitorEvent, project_event
from ..store.base import StoreUnavailable
from .errors import ApiError
from .slots import StreamSlots

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often a followed pipeline's new events are read from the store
POLL_PAGE = 32  # newest events a poll reads; all of them when every one of those is new
HEARTBEAT_SECONDS = 15.0  # proxies close connections idle for longer (nginx: 60 s, AWS ALB: 60 s)
SEND_BUFFER = 32 * 1024  # a stream's socket send buffer, and its transport's write buffer, in bytes
LAGGING_GRACE_SECONDS = 10.0  # a lagging client has this long to read what was sent, the final line included
CLOSING_GRACE_SECONDS = 1.0  # at shutdown, a stream's end waits this long for its client
# Events the recorder published, kept per pipeline: a stream that starts before the store's writer
# committed them still replays them.
RECENT_EVENTS = 32
RECENT_SECONDS = 60.0
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"

Order = tuple[dt.datetime, str]


def order(event: MonitorEvent) -> Order:
    """The store's order of events: ``recorded_at``, then ``event_id`` (UUIDv7)."""
    return event.recorded_at, str(event.event_id)


class FollowReader(Protocol):
    """What a stream reads of the event store (blocking; :class:`store.StoreUnavailable` when it cannot)."""
    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]: ...


@dataclass(frozen=True)
class FollowLimits:
    """Bounds of the live streams: open at once overall, per client address, per user and per namespace
    (None: a quarter of ``streams``), and the events a stream may hold for a client that has not read them yet."""
    streams: int = 100
    streams_per_client: int = 4
    queue: int = 1000
    streams_per_identity: int | None = None
    streams_per_namespace: int | None = None


class Subscriber:
    """One stream's bounded queue of new events."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: deque[MonitorEvent] = deque()
        self.lagging = False
        self.wake = asyncio.Event()  # new events, lagging, or the hub closing

    def offer(self, events: Sequence[MonitorEvent]) -> None:
        if self.lagging:
            return
        for event in events:
            if len(self.pending) >= self.limit:
                self.lagging = True
                break
            self.pending.append(event)
        self.wake.set()


class _Feed:
    """The new events of one followed pipeline, for all of its streams: a poll of the store every
    second, and what the local recorder publishes."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.subscribers: set[Subscriber] = set()
        self.cursor: Order | None = None  # the newest event delivered (or stored when the feed started)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    def deliver(self, events: Sequence[MonitorEvent]) -> None:
        if self.cursor is None:
            return  # not started: its first read of the store is the baseline
        cursor = self.cursor
        newer = sorted((e for e in events if order(e) > cursor), key=order)
        if not newer:
            return
        self.cursor = order(newer[-1])
        for subscriber in self.subscribers:
            subscriber.offer(newer)


class FollowHub:
    """The live streams of one HTTP API: their feeds, their limits, and their end at shutdown."""

    def __init__(self, reader: FollowReader, limits: FollowLimits | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.reader = reader
        self.limits = limits or FollowLimits()
        self.poll_seconds = poll_seconds
        self._feeds: dict[str, _Feed] = {}
        self._recent: TTLCache[str, deque[MonitorEvent]] = TTLCache(maxsize=10_000, ttl=RECENT_SECONDS)
        self._slots = StreamSlots(self.limits.streams, self.limits.streams_per_client, "event streams",
                                  "close one, or read the events without follow=true",
                                  self.limits.streams_per_identity, self.limits.streams_per_namespace)
        self._ending: set[asyncio.Task[Any]] = set()  # the streams open now: their handlers' tasks
        self.closing = False

    # -- what the recorder publishes -------------------------------------------------------------

    def published(self, key: PipelineKey, events: Sequence[MonitorEvent]) -> None:
        """Events this replica just recorded (called on the event loop, by the recorder; never waits)."""
        if not events:
            return
        recent = self._recent.get(key.uid)
        if recent is None:
            recent = deque(maxlen=RECENT_EVENTS)
        recent.extend(events)
        self._recent[key.uid] = recent
        feed = self._feeds.get(key.uid)
        if feed is not None:
            feed.deliver(events)

    # -- feeds ------------------------------------------------------------------------------------

    async def _newest(self, uid: str, cursor: Order | None) -> list[MonitorEvent]:
        """The stored events newer than ``cursor`` (the newest page when ``cursor`` is None), newest first."""
        page = await asyncio.to_thread(self.reader.list, uid, POLL_PAGE)
        if cursor is None:
            return page
        newer = [e for e in page if order(e) > cursor]
        if len(newer) == len(page) == POLL_PAGE:  # more than a page is new: read them all
            newer = [e for e in await asyncio.to_thread(self.reader.list, uid, None) if order(e) > cursor]
        return newer

    async def _poll(self, feed: _Feed) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                feed.deliver(await self._newest(feed.uid, feed.cursor))
            except StoreUnavailable as exc:  # the streams stay open; the next poll tries again
                log.info("live events of %s: the event store cannot be read now (%s)", feed.uid, exc)

    async def _attach(self, uid: str, subscriber: Subscriber) -> _Feed:
        feed = self._feeds.get(uid)
        if feed is None:
            feed = self._feeds[uid] = _Feed(uid)
            try:
                page = await self._newest(uid, None)
            except BaseException as exc:
                del self._feeds[uid]
                feed.ready.set_exception(exc)
                feed.ready.exception()  # retrieved here: other streams waiting for it get it too
                raise
            feed.cursor = max((order(e) for e in page), default=(dt.datetime.min.replace(tzinfo=dt.UTC), ""))
            feed.task = asyncio.create_task(self._poll(feed), name=f"follow-{uid}")
            feed.ready.set_result(None)
        else:
            await asyncio.shield(feed.ready)
        feed.subscribers.add(subscriber)
        return feed

    def _detach(self, feed: _Feed, subscriber: Subscriber) -> None:
        feed.subscribers.discard(subscriber)
        if not feed.subscribers and self._feeds.get(feed.uid) is feed:
            del self._feeds[feed.uid]
            if feed.task is not None:
                feed.task.cancel()

    @contextlib.asynccontextmanager
    async def _slot(self, client: str, identity: str, namespace: str) -> AsyncIterator[None]:
        """One of the bounded stream slots, overall and for the client's address, user and namespace; else 429
        at once."""
        if self.closing:
            raise ApiError(503, "ShuttingDown", "The operator is stopping; follow the events again in a few seconds",
                           retry_after=5)
        with self._slots.slot(client, identity, namespace):
            yield

    # -- a stream ---------------------------------------------------------------------------------

    async def stream(self, request: web.Request, key: PipelineKey, selector: str,
                     identity: str = "") -> web.StreamResponse:
        """Serve one follow request (authorised already) of ``identity``."""
        sse = SSE in request.headers.get("Accept", "")
        after = _after(request, sse)
        client = request.remote or ""
        subscriber = Subscriber(self.limits.queue)
        async with self._slot(client, identity, key.namespace):
            feed = await self._attach(key.uid, subscriber)
            try:
                # Attached first, read second: whatever the feed delivers from now on is queued, and
                # what it delivered before is stored, or among the recorder's recent events.
                replay = await self._replay(key, after)
                task = asyncio.current_task()
                assert task is not None
                self._ending.add(task)
                try:
                    return await _Stream(request, subscriber, selector, sse, self).run(replay)
                finally:
                    self._ending.discard(task)
            finally:
                self._detach(feed, subscriber)

    async def _replay(self, key: PipelineKey, after: uuid.UUID | None) -> list[MonitorEvent]:
        stored = await asyncio.to_thread(self.reader.list, key.uid, None)
        known = {e.event_id: e for e in (*stored, *self._recent.get(key.uid, ()))}
        events = sorted(known.values(), key=order)
        if after is None:
            return events
        start = known.get(after)
        if start is None:
            raise ApiError(404, "UnknownPipelineMonitorEvent",
                           f"Pipeline monitor event '{after}' does not exist: it might have been deleted as only a "
                           "limited number of events are retained; follow from the start (without after=)",
                           {"event_id": str(after)})
        return [e for e in events if order(e) > order(start)]

    async def close(self) -> None:
        """End every stream (the operator stops): each ends within :data:`CLOSING_GRACE_SECONDS`."""
        self.closing = True
        for feed in list(self._feeds.values()):
            for subscriber in feed.subscribers:
                subscriber.wake.set()
        if self._ending:
            await asyncio.wait(list(self._ending), timeout=CLOSING_GRACE_SECONDS + 2)


class _Stream:
    """The writing side of one stream: replay, then live events and heartbeats, then its end."""

    def __init__(self, request: web.Request, subscriber: Subscriber, selector: str, sse: bool,
                 hub: FollowHub) -> None:
        self.request, self.subscriber, self.selector, self.sse, self.hub = request, subscriber, selector, sse, hub
        self.last: Order | None = None
        self.last_id: str | None = None
        self.response = web.StreamResponse(headers={"Content-Type": SSE if sse else NDJSON,
                                                    "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def run(self, replay: list[MonitorEvent]) -> web.StreamResponse:
        transport = self.request.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=SEND_BUFFER)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.response.force_close()  # a stream's connection is not reused
        await self.response.prepare(self.request)
        pump = asyncio.create_task(self._pump(replay))
        ended = asyncio.create_task(self._ended())
        try:
            await asyncio.wait({pump, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            ended.cancel()
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            log.info("HTTP API: an event stream to %s ended: %s", self.request.remote, pump.exception())
            return self.response
        if self.subscriber.lagging:
            resume = f"after={self.last_id}" if self.last_id else "no after= (nothing was sent)"
            log.info("HTTP API: an event stream to %s lags behind (more than %d events not sent); it is ended, "
                     "and resumes with %s", self.request.remote, self.subscriber.limit, resume)
            message = (f"The client read events slower than they came (more than {self.subscriber.limit} were "
                       f"waiting); resume with {resume}")
            final = {"error_code": "StreamLagging", "message": message,
                     "details": {"last_event_id": self.last_id}}
            await self._end(self._error(final), LAGGING_GRACE_SECONDS)
        else:
            await self._end(None, CLOSING_GRACE_SECONDS)
        return self.response

    async def _ended(self) -> None:
        while not (self.subscriber.lagging or self.hub.closing):
            self.subscriber.wake.clear()
            await self.subscriber.wake.wait()

    async def _pump(self, replay: list[MonitorEvent]) -> None:
        for event in replay:
            await self._send(event)
        subscriber = self.subscriber
        while True:
            while subscriber.pending:
                event = subscriber.pending.popleft()
                if self.last is None or order(event) > self.last:
                    await self._send(event)
            try:
                await asyncio.wait_for(self._next(), HEARTBEAT_SECONDS)
            except TimeoutError:
                await self.response.write(b": keepalive\n\n" if self.sse else b"\n")

    async def _next(self) -> None:
        while not self.subscriber.pending:
            self.subscriber.wake.clear()
            await self.subscriber.wake.wait()

    async def _send(self, event: MonitorEvent) -> None:
        body = json.dumps(project_event(event, self.selector), separators=(",", ":"))
        line = f"id: {event.event_id}\ndata: {body}\n\n" if self.sse else body + "\n"
        # Counted as sent before the write: the write hands the bytes to the connection before it
        # waits for the client, so a stream cut while waiting has sent them.
        self.last, self.last_id = order(event), str(event.event_id)
        await self.response.write(line.encode())

    def _error(self, final: dict[str, Any]) -> bytes:
        body = json.dumps(final, separators=(",", ":"))
        return (f"event: error\ndata: {body}\n\n" if self.sse else body + "\n").encode()

    async def _end(self, final: bytes | None, grace: float) -> None:
        """The final line, if any, and the end of the body; a client that does not read them within
        ``grace`` seconds is disconnected."""
        try:
            async with asyncio.timeout(grace):
                if final is not None:
                    await self.response.write(final)
                await self.response.write_eof()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("HTTP API: an event stream to %s was cut: %s", self.request.remote, exc or type(exc).__name__)
            if self.request.transport is not None:
                self.request.transport.abort()


def _after(request: web.Request, sse: bool) -> uuid.UUID | None:
    """``after=`` (or, for server-sent events, the ``Last-Event-ID`` a reconnecting browser sends)."""
    raw = request.query.get("after") or (request.headers.get("Last-Event-ID") if sse else None)
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "InvalidUuidParam", f"Invalid UUID '{raw[:60]}' for after", {"value": raw[:60]}) from None
