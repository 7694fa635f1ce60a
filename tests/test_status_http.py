"""The status polls' HTTP (feldera/status_http.py), against servers that answer at the byte level: kept-alive
connections and when they are not reused, a pipeline that closes its end between polls or answers
something that is not HTTP, bodies framed every way HTTP/1.1 allows. Every test runs on both event
loops the operator can run on (``--event-loop``): their transports report a closed connection
differently."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import pytest
import uvloop

from pipeline_operator.core.lifecycle import RuntimeObservation, RuntimeProbe
from pipeline_operator.feldera import status_http
from pipeline_operator.feldera.runtime_client import MAX_HEAD_LINE, PipelineUnreachable, RuntimeClient
from pipeline_operator.models import RuntimeStatus

BODY = json.dumps({"runtime_status": "Running", "runtime_desired_status": "Running"}).encode()
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
_loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop


@pytest.fixture(autouse=True, params=sorted(LOOPS))
def event_loop_kind(request: pytest.FixtureRequest) -> str:
    global _loop_factory
    _loop_factory = LOOPS[request.param]
    return str(request.param)


def run_on_loop(coroutine: Any) -> Any:
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(coroutine)


CLOSE = object()  # an answer of Server: close the connection without answering


class Server:
    """A loopback server that records every connection's requests and answers each with ``answer(n, request)``:
    bytes to send, ``(bytes, True)`` to send and then close the connection, or :data:`CLOSE`."""

    def __init__(self, answer: Callable[[int, bytes], Any]) -> None:
        self.answer = answer  # n: the request's number on its connection, from 1
        self.connections: list[list[bytes]] = []
        self.closed_by_client = 0
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests: list[bytes] = []
        self.connections.append(requests)
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed_by_client += 1
                    return
                requests.append(request)
                answer = self.answer(len(requests), request)
                if answer is CLOSE:
                    return
                data, close = answer if isinstance(answer, tuple) else (answer, False)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()


class Serves(Protocol):
    url: str

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...


Served = TypeVar("Served", bound=Serves)


@asynccontextmanager
async def listening(server: Served) -> AsyncIterator[Served]:
    """``server`` (its ``handle``) on a loopback port, its ``url`` set, until the block ends."""
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield server
    finally:
        listener.close()


def serving(answer: Callable[[int, bytes], Any]) -> contextlib.AbstractAsyncContextManager[Server]:
    return listening(Server(answer))


def run(answer: Callable[[int, bytes], Any], count: int, pause: float = 0.0,
        token: str | None = None, through: str = "//") -> tuple[list[RuntimeObservation], Server]:
    """``count`` polls, ``pause`` seconds apart, of a server answering with ``answer`` (``through="//user@"``:
    through aiohttp, as an endpoint that is not plain ``http://``)."""
    async def scenario() -> tuple[list[RuntimeObservation], Server]:
        async with serving(answer) as server:
            client = RuntimeClient(status_timeout=5.0, token_for=lambda _: token)
            try:
                seen = []
                for _ in range(count):
                    seen.append(await client.status(server.url.replace("//", through)))
                    await asyncio.sleep(pause)
                return seen, server
            finally:
                await client.close()
    return run_on_loop(scenario())


def test_polls_share_one_kept_alive_connection_and_send_the_token():
    seen, server = run(lambda n, request: OK, 5, token="secret")
    assert [o.probe for o in seen] == [RuntimeProbe.OK] * 5
    assert len(server.connections) == 1 and len(server.connections[0]) == 5
    request = server.connections[0][0]
    assert request.startswith(b"GET /status HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer secret\r\n" in request
    assert f"\r\nHost: {server.url.removeprefix('http://')}\r\n".encode() in request


def test_a_connection_the_pipeline_closes_between_polls_is_replaced_without_a_failure():
    # Each connection answers one request and is then closed by the pipeline while unused (its keep-alive
    # timeout): the next poll finds it closed, before or after writing on it, and must still get its answer.
    seen, server = run(lambda n, request: OK if n == 1 else CLOSE, 4, pause=0.05)
    assert [o.probe for o in seen] == [RuntimeProbe.OK] * 4, seen
    assert len(server.connections) >= 4


def test_an_answer_that_asks_to_close_the_connection_is_not_reused():
    closing = OK.replace(b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n")
    seen, server = run(lambda n, request: closing, 3)
    assert [o.probe for o in seen] == [RuntimeProbe.OK] * 3
    assert [len(requests) for requests in server.connections] == [1, 1, 1]


@pytest.mark.parametrize("answer", [
    # no length: the body ends with the connection (HTTP/1.0 and HTTP/1.1 alike)
    (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY, True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY, True),
    # chunked, in three chunks
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:5], BODY[5:20], BODY[20:])) + b"0\r\n\r\n",
], ids=["http1.0-until-close", "http1.1-until-close", "chunked"])
def test_every_framing_of_the_body_is_read(answer):
    seen, server = run(lambda n, request: answer, 3)
    for observation in seen:
        assert observation.probe is RuntimeProbe.OK and observation.runtime_status is RuntimeStatus.RUNNING
    assert len(server.connections) == (3 if isinstance(answer, tuple) else 1)


@pytest.mark.parametrize("answer, reason", [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not valid HTTP"),
    ((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"runtime", True), "before its answer was complete"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789", "not valid HTTP"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not valid HTTP"),
], ids=["not-http", "cut-short", "two-lengths", "bad-chunk"])
def test_what_is_not_a_complete_http_answer_is_unreachable_and_the_connection_is_dropped(answer, reason):
    answers = iter([answer, OK])
    (first, second), server = run(lambda n, request: next(answers), 2)
    assert first.probe is RuntimeProbe.UNREACHABLE and reason in first.reason, first
    assert second.probe is RuntimeProbe.OK, second
    assert [len(requests) for requests in server.connections] == [1, 1]  # the failed connection was dropped


def test_a_pipeline_that_closes_a_new_connection_without_answering_is_unreachable():
    seen, server = run(lambda n, request: CLOSE, 1)
    assert seen[0].probe is RuntimeProbe.UNREACHABLE
    assert "closed the connection without answering" in seen[0].reason
    assert len(server.connections) == 1  # a new connection's failure is the answer: not sent again


def test_a_refused_connection_names_the_address():
    async def scenario() -> RuntimeObservation:
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        client = RuntimeClient()
        try:
            return await client.status(f"http://127.0.0.1:{port}")
        finally:
            await client.close()

    observed = run_on_loop(scenario())
    assert observed.probe is RuntimeProbe.UNREACHABLE and "cannot connect to 127.0.0.1:" in observed.reason
    assert "refused" in observed.reason.lower()


def test_a_token_that_would_add_a_header_is_not_sent():
    seen, server = run(lambda n, request: OK, 1, token="secret\r\nX-Injected: 1")
    assert seen[0].probe is RuntimeProbe.UNREACHABLE and "token" in seen[0].reason
    assert server.connections == []


def test_unused_connections_are_closed(monkeypatch):
    monkeypatch.setattr(status_http, "KEEPALIVE", 0.2)

    async def scenario() -> Server:
        async with serving(lambda n, request: OK) as server:
            client = RuntimeClient()
            try:
                assert (await client.status(server.url)).probe is RuntimeProbe.OK
                await asyncio.sleep(0.3)
                # The next poll, of any pipeline, closes what has not been used for KEEPALIVE seconds.
                async with serving(lambda n, request: OK) as other:
                    assert (await client.status(other.url)).probe is RuntimeProbe.OK
                for _ in range(50):
                    if server.closed_by_client:
                        break
                    await asyncio.sleep(0.02)
                return server
            finally:
                await client.close()

    server = run_on_loop(scenario())
    assert server.closed_by_client == 1 and len(server.connections) == 1


def test_a_redirect_is_not_followed():
    redirect = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere/status\r\nContent-Length: 0\r\n\r\n"
    seen, server = run(lambda n, request: redirect, 1)
    assert seen[0].probe is RuntimeProbe.FATAL and "redirect" in seen[0].error.message
    assert len(server.connections) == 1 and len(server.connections[0]) == 1


class Endless:
    """A loopback server that answers every request with ``head`` and then ``piece`` over and over, until the
    client closes the connection (or ``seconds`` pass): ``sent`` counts the bytes it got out. Its send buffer is
    small, so that what it sent is close to what the client read."""

    def __init__(self, head: bytes, piece: bytes, seconds: float = 15.0) -> None:
        self.head, self.piece, self.seconds = head, piece, seconds
        self.sent = 0
        self.stopped_by_client = False
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        try:
            await reader.readuntil(b"\r\n\r\n")
            data = self.head
            while loop.time() < deadline:
                writer.write(data)
                await writer.drain()
                self.sent += len(data)
                data = self.piece
        except (ConnectionError, asyncio.IncompleteReadError):
            self.stopped_by_client = True
        finally:
            writer.close()


def serving_endless(head: bytes, piece: bytes) -> contextlib.AbstractAsyncContextManager[Endless]:
    return listening(Endless(head, piece))


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(BODY), BODY)
ENDLESS = {
    "header-lines": (b"HTTP/1.1 200 OK\r\n", b"X-a: " + b"a" * 58 + b"\r\n"),
    "header-line": (b"HTTP/1.1 200 OK\r\nX-a: ", b"a" * 4096),
    "status-line": (b"HTTP/1.1 200 ", b"a" * 4096),
    "trailer-lines": (CHUNKED + b"0\r\n", b"X-a: " + b"a" * 58 + b"\r\n"),
    "trailer-line": (CHUNKED + b"0\r\nX-a: ", b"a" * 4096),
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_a_head_that_never_ends_is_an_invalid_answer_read_no_further_than_the_bound(case):
    """Header fields (or trailers) sent for ever, or one line that never ends: the client stops reading near
    MAX_HEAD bytes, closes the connection and reports the answer as invalid, at once (not at the timeout)."""
    head, piece = ENDLESS[case]

    async def scenario() -> tuple[RuntimeObservation, Endless, float]:
        async with serving_endless(head, piece) as server:
            client = RuntimeClient(status_timeout=5.0)
            try:
                started = asyncio.get_running_loop().time()
                observed = await client.status(server.url)
                took = asyncio.get_running_loop().time() - started
                for _ in range(100):
                    if server.stopped_by_client:
                        break
                    await asyncio.sleep(0.02)
                return observed, server, took
            finally:
                await client.close()

    observed, server, took = run_on_loop(scenario())
    assert observed.probe is RuntimeProbe.UNREACHABLE, observed
    assert f"larger than {status_http.MAX_HEAD} bytes" in observed.reason, observed
    assert took < 2.0
    assert server.stopped_by_client
    # What the server got out: what the client read (the bound and at most a read or two past it) and what
    # the sockets' buffers hold.
    assert server.sent < status_http.MAX_HEAD + 1024 * 1024, server.sent


def test_more_header_fields_than_the_bound_is_an_invalid_answer():
    fields = b"".join(b"X-%d: 1\r\n" % n for n in range(status_http.MAX_FIELDS + 1))
    answers = iter([OK.replace(b"\r\n\r\n", b"\r\n" + fields + b"\r\n", 1), OK])
    (first, second), server = run(lambda n, request: next(answers), 2)
    assert first.probe is RuntimeProbe.UNREACHABLE and f"{status_http.MAX_FIELDS} fields" in first.reason, first
    assert second.probe is RuntimeProbe.OK, second
    assert [len(requests) for requests in server.connections] == [1, 1]


def test_more_header_fields_than_the_bound_is_an_invalid_answer_through_aiohttp_too():
    fields = b"".join(b"X-%d: 1\r\n" % n for n in range(status_http.MAX_FIELDS + 1))
    seen, server = run(lambda n, request: OK.replace(b"\r\n\r\n", b"\r\n" + fields + b"\r\n", 1), 1,
                       through="//someone@")
    assert seen[0].probe is RuntimeProbe.UNREACHABLE and "Too many headers" in seen[0].reason, seen


def test_a_head_just_within_the_bounds_is_read():
    fields = status_http.MAX_FIELDS - 2  # with Content-Type and Content-Length
    value = b"a" * ((status_http.MAX_HEAD - 200) // fields - 12)
    head = b"".join(b"X-%02d: %s\r\n" % (n, value) for n in range(fields))
    seen, server = run(lambda n, request: OK.replace(b"\r\n\r\n", b"\r\n" + head + b"\r\n", 1), 2)
    assert [o.probe for o in seen] == [RuntimeProbe.OK] * 2, seen
    assert len(server.connections) == 1


@pytest.mark.parametrize("extra", [
    b"HTTP/1.1 2",  # the start of another answer
    OK,  # a whole other answer
    b"junk",
], ids=["partial-answer", "second-answer", "junk"])
def test_a_connection_with_bytes_after_a_complete_answer_is_not_reused(extra):
    seen, server = run(lambda n, request: OK + extra, 3)
    assert [o.probe for o in seen] == [RuntimeProbe.OK] * 3, seen
    assert [len(requests) for requests in server.connections] == [1, 1, 1]


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_through_aiohttp_a_head_that_never_ends_is_refused_too(case):
    """What does not go through status_http goes through aiohttp, whose bounds the runtime client states: a
    status poll of an endpoint that is not plain ``http://`` (here, one with a user name), and a request the
    HTTP API passes through to the pipeline (RuntimeClient.exchange)."""
    head, piece = ENDLESS[case]

    async def scenario() -> tuple[RuntimeObservation, str, list[Endless]]:
        async with serving_endless(head, piece) as polled, serving_endless(head, piece) as passed:
            client = RuntimeClient(status_timeout=5.0)
            try:
                observed = await client.status(polled.url.replace("//", "//someone@"))
                with pytest.raises(PipelineUnreachable) as failure:
                    async with asyncio.timeout(5.0), client.exchange(passed.url, "GET", "/stats") as answer:
                        async for _ in answer.chunks():  # trailers come after the body
                            pass
                for _ in range(100):
                    if polled.stopped_by_client and passed.stopped_by_client:
                        break
                    await asyncio.sleep(0.02)
                return observed, str(failure.value), [polled, passed]
            finally:
                await client.close()

    observed, failure, servers = run_on_loop(scenario())
    bounds = (f"more than {MAX_HEAD_LINE} bytes", "Too many headers")  # aiohttp's words
    assert observed.probe is RuntimeProbe.UNREACHABLE and any(b in observed.reason for b in bounds), observed
    assert any(b in failure for b in bounds), failure
    for server in servers:
        assert server.stopped_by_client and server.sent < status_http.MAX_HEAD + 1024 * 1024, server.sent
