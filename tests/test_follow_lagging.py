"""A live event stream whose client stops reading: monitoring goes on undisturbed, the stream holds
at most its queue of events, and it ends with one ``StreamLagging`` line naming the last event sent,
from which ``after=`` resumes without a gap or a duplicate. The hub and a real HTTP server on
loopback; the events come from a list standing in for the store (the store's own reads are tested
with the operator in tests/test_events_follow.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket

from aiohttp import web

from pipeline_operator.api.follow import FollowHub, FollowLimits
from pipeline_operator.core.emission import UuidV7, make_event
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import (
    EventStatus,
    MonitorEvent,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    StorageStatus,
)

KEY = PipelineKey("ns", "orders", "uid-1")
T0 = dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC)
STATUS = EventStatus(deployment_resources_status=ResourcesStatus.STOPPED,
                     deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
                     program_status=ProgramStatus.SUCCESS, storage_status=StorageStatus.IN_USE,
                     storage_status_details={"checkpoints": ["x" * 200]})
QUEUE = 20


class Recorded:
    """What the store would hold: every event recorded so far (``list`` is newest first, as the store's)."""

    def __init__(self) -> None:
        self.events: list[MonitorEvent] = []

    def list(self, uid: str, limit: int | None = None) -> list[MonitorEvent]:
        newest = list(reversed(self.events))
        return newest if limit is None else newest[:limit]


async def serve(hub: FollowHub) -> tuple[web.AppRunner, int]:
    async def events(request: web.Request) -> web.StreamResponse:
        return await hub.stream(request, KEY, "status")

    app = web.Application()
    app.router.add_get("/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def open_stream(port: int, query: str = "", reader_buffer: int | None = None,
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One follow request (HTTP/1.0: the body comes unchunked, one event per line)."""
    sock = socket.socket()
    if reader_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, reader_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET /events?{query} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def lines_of(reader: asyncio.StreamReader, count: int | None = None) -> list[dict]:
    """The stream's lines as JSON: ``count`` of them, or all until it ends."""
    while (await asyncio.wait_for(reader.readline(), 30)).strip():
        pass  # the status line and the headers
    lines: list[dict] = []
    while count is None or len(lines) < count:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            break
        lines.append(json.loads(line))
    return lines


async def lines_of_rest(reader: asyncio.StreamReader) -> list[bytes]:
    return [line for line in (await asyncio.wait_for(reader.read(), 30)).splitlines() if line.strip()]


def test_a_client_that_stops_reading_is_ended_with_stream_lagging_and_resumes_without_a_gap():
    async def scenario() -> None:
        recorded = Recorded()
        hub = FollowHub(recorded, FollowLimits(queue=QUEUE), poll_seconds=3600)  # only published events
        runner, port = await serve(hub)
        ids = UuidV7()
        try:
            reader, writer = await open_stream(port, reader_buffer=4096)
            await asyncio.sleep(0.3)  # the stream is attached and has replayed nothing
            # Monitoring records 2,000 events while the client reads none (publishing never waits).
            for i in range(2000):
                at = T0 + dt.timedelta(seconds=i)
                event = make_event(STATUS, ids(at), at)
                recorded.events.append(event)
                hub.published(KEY, [event])
                if i % 50 == 0:
                    await asyncio.sleep(0)  # the stream writes what its connection takes
            sent = await lines_of(reader)  # the client reads again: what was sent, then the final line
            writer.close()
            final = sent.pop()
            assert final["error_code"] == "StreamLagging", final
            assert len(sent) < 2000  # it held no more than the connection and its queue took
            ids_sent = [e["event_id"] for e in sent]
            assert ids_sent == [str(e.event_id) for e in recorded.events[:len(sent)]]  # in order, no gap
            assert final["details"]["last_event_id"] == ids_sent[-1]
            assert f"after={ids_sent[-1]}" in final["message"]

            # Resuming from the cursor the final line named replays exactly the rest, and nothing more.
            reader, writer = await open_stream(port, f"after={ids_sent[-1]}")
            rest = await lines_of(reader, 2000 - len(sent))
            assert [e["event_id"] for e in rest] == [str(e.event_id) for e in recorded.events[len(sent):]]
            await hub.close()  # the API stops: the stream ends, with no line after the replay
            assert await lines_of_rest(reader) == []
            writer.close()
        finally:
            await runner.cleanup()
    asyncio.run(scenario())
