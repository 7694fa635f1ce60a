"""The status polls' HTTP: ``GET /status`` on one kept-alive connection per pipeline, and nothing else.

Every pipeline is asked for its status every 2.5 s (Feldera's ``POLL_PERIOD_PROVISIONED``): 400 requests
a second with 1,000 pipelines, the operator's busiest work. aiohttp's client spends about 170 µs of CPU
on one such request (the request and response objects, headers as multidicts, tracing hooks, the
response stream); here a request is a few bytes written on a connection kept open between polls, and
the answer is parsed by httptools (llhttp, Node.js's parser, as uvicorn uses it): about 45 µs
(bench/status_poll_bench.py). Everything else the operator sends a pipeline goes through aiohttp.

Only what a status poll needs is done: HTTP/1.1 over TCP, GET, the answer's body bounded while it
arrives (``limit``), a compressed body decompressed within the same bound (a pipeline is not asked to
compress, but may), no redirect followed (the caller sees the 3xx). The answer's head (status line and
header fields, with the trailers of a chunked answer) is bounded too, in bytes (:data:`MAX_HEAD`) and in
fields (:data:`MAX_FIELDS`), also while a line of it has not ended (llhttp keeps no bound of its own, and
httptools gathers an unfinished field in memory). As aiohttp does, a request that finds its kept-alive
connection closed by the pipeline before any answer (the pipeline's keep-alive timeout raced the poll)
is sent once more on a new connection; any other failure closes the connection, so a connection is
reused only after a complete, well-formed answer that allows it, with no byte after it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httptools
from yarl import URL

KEEPALIVE = 15.0  # seconds an unused connection stays open (aiohttp's default)
MAX_HEAD = 64 * 1024  # bytes of an answer's status line and header fields, its trailers included
MAX_FIELDS = 100  # header fields of an answer, its trailers included
_TARGETS_LIMIT = 100_000  # endpoints remembered (then forgotten all at once: endpoints of deleted pipelines)

# (host, port) -> addresses to try, in order: a name lookup (in threads of its own, see runtime_client)
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]


class StatusUnanswered(Exception):
    """No (complete) answer came: the connection was refused or cut, or what came is not HTTP."""


class StatusTooLarge(Exception):
    """The answer's body is larger than the limit (after decompression, when it is compressed)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class StatusHeadTooLarge(Exception):
    """The answer's head (status line and header fields, with its trailers) is larger than :data:`MAX_HEAD`
    bytes or has more than :data:`MAX_FIELDS` fields: the rest of it is not read."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the status answer's head (status line, header fields and trailers) is larger than "
                         f"{MAX_HEAD} bytes or has more than {MAX_FIELDS} fields")
        self.status = status  # 0: not known


class _Stop(Exception):
    """Raised in a parser's callback to stop it: what to do is decided once it returned."""


class _Retry(Exception):
    """A kept-alive connection was closed before any byte of its answer: the request was not seen."""


@dataclass(frozen=True, slots=True)
class _Target:
    host: str  # without brackets
    port: int
    numeric: bool  # an IP address: nothing to look up
    head: bytes  # the request up to its last header line, without the token


class _Connection(asyncio.Protocol):
    """One connection to one pipeline; one request at a time."""

    __slots__ = ("parser", "transport", "closed", "idle_since", "limit", "answer", "started", "chunks", "size",
                 "too_large", "encoding", "framed", "headers_done", "head", "fields", "unfinished", "head_too_large",
                 "result", "more")

    def __init__(self, limit: int) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.limit = limit
        self.answer: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._reset()

    def _reset(self) -> None:
        self.started = False  # a byte of the answer arrived
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.encoding = b""
        self.framed = False  # Content-Length or Transfer-Encoding: the end is not the connection's end
        self.headers_done = False
        self.head = 0  # bytes of the status line and of the header fields (trailers too) parsed so far
        self.fields = 0  # header fields and trailers parsed so far
        self.unfinished = 0  # bytes received since the parser last finished a field or read body bytes
        self.head_too_large = False
        self.result: tuple[int, bytes, bool] | BaseException | None = None  # the complete answer's
        self.more = False  # bytes came after the complete answer

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Write ``request``: its answer's (status, body, whether the connection may be used again)."""
        assert self.transport is not None and self.answer is None
        self._reset()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _settle(self, result: tuple[int, bytes, bool] | None, error: BaseException | None = None) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)  # type: ignore[arg-type]
        if error is not None:
            self.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # nothing was asked: the connection is not in a known state
            self.close()
            return
        self.started = True
        self.unfinished += len(data)
        failure: BaseException | None = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            failure = StatusUnanswered("the pipeline switched protocols")
        except httptools.HttpParserError as exc:
            failure = StatusUnanswered(f"the pipeline's answer is not valid HTTP ({exc})")
        result = self.result
        if result is not None:  # complete; whatever followed it (bytes, a failure) only closes the connection
            if isinstance(result, BaseException):
                self._settle(None, result)
            else:
                self._settle(result if not (self.more or failure) else (result[0], result[1], False))
                if self.more or failure:
                    self.close()
        elif self.head_too_large or (not self.too_large and self.unfinished > MAX_HEAD):
            self._settle(None, StatusHeadTooLarge(self.parser.get_status_code()))
        elif self.too_large:
            self._settle(None, StatusTooLarge(self.parser.get_status_code()))
        elif failure is not None:
            self._settle(None, failure)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is None:
            return
        if self.headers_done and not self.framed:  # a body that ends with the connection: it ended
            result = self._finish(keep_alive=False)
            self._settle(*((None, result) if isinstance(result, BaseException) else (result, None)))
        elif not self.started:
            self._settle(None, _Retry())
        else:
            self._settle(None, StatusUnanswered("the pipeline closed the connection before its answer was complete"))

    # httptools callbacks (an exception raised in one stops the parser; httptools raises its own instead)

    def on_message_begin(self) -> None:
        if self.result is not None:  # another answer after the one asked for
            self.more = True
            raise _Stop

    def on_status(self, status: bytes) -> None:
        self.head += len(status)  # the reason phrase; the status line's other bytes are few
        if self.head > MAX_HEAD:
            self.head_too_large = True
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.unfinished = 0
        self.fields += 1
        self.head += len(name) + len(value) + 4  # ": " and CRLF
        if self.fields > MAX_FIELDS or self.head > MAX_HEAD:
            self.head_too_large = True
            raise _Stop
        if self.headers_done:  # a trailer: it does not say how the body is sent
            return
        name = name.lower()
        if name == b"content-encoding":
            self.encoding = value.strip().lower()
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.unfinished = 0
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.unfinished = 0
        self.size += len(body)
        if self.size > self.limit:
            self.too_large = True  # settled after the parser returns
            self.chunks = []
        elif not self.too_large:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.unfinished = 0
        self.result = self._finish(keep_alive=self.parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> tuple[int, bytes, bool] | BaseException:
        """The complete answer: (status, body, whether the connection may be used again), or why it is refused."""
        status = self.parser.get_status_code()
        if self.too_large:
            return StatusTooLarge(status)
        body = b"".join(self.chunks)
        self.chunks = []
        if self.encoding and self.encoding != b"identity":
            try:
                body = _decompress(self.encoding, body, self.limit)
            except StatusTooLarge:
                return StatusTooLarge(status)
        return status, body, keep_alive and not self.closed


def _decompress(encoding: bytes, body: bytes, limit: int) -> bytes:
    """A gzip or deflate body, decompressed to at most ``limit`` bytes; any other is left as it is."""
    if encoding in (b"gzip", b"x-gzip"):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == b"deflate":
        decompressor = zlib.decompressobj(zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
    else:
        return body  # not decoded: not JSON either
    try:
        plain = decompressor.decompress(body, limit + 1)
    except zlib.error:
        return body
    if len(plain) > limit:
        raise StatusTooLarge(0)
    return plain


class StatusConnections:
    """``GET {endpoint}/status`` for any number of pipelines, each on a connection of its own kept between polls."""

    def __init__(self, resolve: Resolve, limit: int, user_agent: str) -> None:
        self._resolve = resolve
        self._limit = limit
        self._user_agent = user_agent.encode()
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._next_sweep = 0.0

    def target(self, endpoint: str) -> _Target | None:
        """What a poll of ``endpoint`` connects to and sends; None when it is not plain ``http://``."""
        target = self._targets.get(endpoint)
        if target is None:
            url = URL(f"{endpoint}/status")
            if url.scheme != "http" or not url.raw_host or url.user is not None:
                return None
            host, port = url.raw_host, url.port or 80
            try:
                numeric = ipaddress.ip_address(host) is not None
            except ValueError:
                numeric = False
            authority = f"[{host}]" if ":" in host else host
            if url.explicit_port is not None:
                authority += f":{port}"
            head = (f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
                    + b"User-Agent: " + self._user_agent + b"\r\nAccept: application/json\r\n")
            if len(self._targets) >= _TARGETS_LIMIT:
                self._targets.clear()
            target = self._targets[endpoint] = _Target(host, port, numeric, head)
        return target

    async def get(self, target: _Target, token: str | None) -> tuple[int, bytes]:
        """The pipeline's answer (HTTP status, body). Raises :class:`StatusUnanswered` or
        :class:`StatusTooLarge`; OSError when no connection could be made."""
        request = target.head
        if token:
            if any(c in token for c in "\r\n\0"):
                raise StatusUnanswered("the pipeline's control token cannot be sent in a header")
            request += b"Authorization: Bearer " + token.encode("latin-1", "replace") + b"\r\n"
        request += b"\r\n"
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (target.host, target.port)
        connection = self._take(key, now)
        if connection is not None:
            try:
                return await self._ask(key, connection, request)
            except _Retry:
                pass  # the pipeline closed it while it was unused: once more, on a new one
        connection = await self._connect(target)
        try:
            return await self._ask(key, connection, request)
        except _Retry:
            raise StatusUnanswered("the pipeline closed the connection without answering") from None

    async def _ask(self, key: tuple[str, int], connection: _Connection, request: bytes) -> tuple[int, bytes]:
        reusable = False
        try:
            status, body, reusable = await connection.send(request)
            return status, body
        finally:
            if reusable:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.setdefault(key, []).append(connection)
            else:
                connection.close()  # a failure, a cancellation (timeout), or the pipeline's wish

    def _take(self, key: tuple[str, int], now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE:
                return connection
            connection.close()
        return None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = [target.host] if target.numeric else await self._resolve(target.host, target.port)
        if not addresses:
            raise OSError(f"{target.host} has no address")
        failure: OSError | None = None
        for address in addresses:
            try:
                _, connection = await loop.create_connection(lambda: _Connection(self._limit), address, target.port)
                return connection
            except OSError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def _sweep(self, now: float) -> None:
        """Close the connections unused for :data:`KEEPALIVE` seconds (pipelines stopped or deleted)."""
        for key in list(self._idle):
            kept = []
            for connection in self._idle[key]:
                if connection.closed or now - connection.idle_since >= KEEPALIVE:
                    connection.close()
                else:
                    kept.append(connection)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        self._next_sweep = now + KEEPALIVE

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
