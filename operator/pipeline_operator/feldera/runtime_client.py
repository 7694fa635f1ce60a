"""Talking to a pipeline process over Feldera's runtime HTTP contract.

Whatever a pipeline answers is bounded before it is used: an answer's head (status line, header fields and
trailers) is bounded as it arrives (by status_http for the status polls; for everything else by aiohttp,
to :data:`MAX_HEAD_LINE` bytes a line and :data:`~pipeline_operator.feldera.status_http.MAX_FIELDS` fields), a body
is read up to :data:`MAX_STATUS_BODY` bytes, a JSON body nested deeper than :data:`MAX_JSON_DEPTH` levels is an
invalid answer (never a RecursionError), redirects are never followed (they could carry the
control token, or the operator's requests, to another address), and every string of an
observation is capped by :func:`~pipeline_operator.core.lifecycle.parse_status_response`.
A request the HTTP API passes through (:meth:`RuntimeClient.exchange`) is streamed both ways
instead: nothing of it is held in memory beyond one chunk, and the API decides what to do with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .. import jsondepth
from ..core.lifecycle import NOT_JSON, RuntimeObservation, parse_status_response
from ..jsondepth import TooDeep
from ..models import SpecRuntimeDesiredStatus
from .status_http import MAX_FIELDS, StatusConnections, StatusHeadTooLarge, StatusTooLarge, StatusUnanswered

log = logging.getLogger(__name__)

MAX_STATUS_BODY = 1024 * 1024  # a larger /status answer is not read
MAX_JSON_DEPTH = 64  # levels of nesting of a pipeline's JSON answer (Feldera's status has fewer than 10)
_PARSE_IN_THREAD = 64 * 1024  # bytes of a body from which decoding leaves the event loop
RESOLVER_THREADS = 16  # name lookups of pipelines' addresses at once (a lookup of an unknown name waits for DNS)
_STATUS_MEMO_BYTES = 16 * 1024  # a /status answer up to this size is kept, to recognise the next one as the same
_TOO_LARGE = f"the status answer is larger than {MAX_STATUS_BODY} bytes"
_STATUS_MEMO_LIMIT = 100_000  # endpoints remembered (then forgotten all at once: endpoints of deleted pipelines)



# aiohttp's bounds of an answer's head (its defaults but for the fields, stated so that they stay): its status
# line and each header field or trailer at most MAX_HEAD_LINE bytes, at most MAX_FIELDS fields (trailers
# included); past either, the answer is a ClientResponseError and its connection is closed.
MAX_HEAD_LINE = 8190
CONNECT_TIMEOUT = 10.0  # seconds to connect to a pipeline for a passed-through request
CHUNK = 64 * 1024  # bytes of a passed-through body read at once
MAX_WS_FRAME = 2 * 1024 * 1024  # bytes of one WebSocket message to or from a pipeline (Feldera's MAX_WS_FRAME_SIZE)


class PipelineUnreachable(Exception):
    """A passed-through request got no (complete) answer: the pipeline refused the connection, timed
    out, cut the connection or answered something that is not HTTP. The message says which, in
    Feldera's words where Feldera has them."""


class InvalidAnswer(Exception):
    """The pipeline answered, but with something that is not passed on (a redirect)."""


def timeout_message(seconds: float) -> str:
    """Feldera's ``format_timeout_error_message``, for a request that timed out."""
    return (f"timeout ({seconds:g}s) was reached: this means the pipeline took too long to respond -- this can simply "
            "be because the request was too difficult to process in time, or other reasons (e.g., deadlock): the "
            "pipeline logs might contain additional information")


def pipeline_url(endpoint: str, path: str, query: str = "") -> URL:
    """``endpoint`` + ``path`` + ``?query``, with ``path`` and ``query`` sent exactly as given (already
    percent-encoded: a client's query string passed through keeps its ``%25``, ``%23``, ``+`` and ``%2B``
    as the client wrote them; nothing is decoded or encoded again)."""
    base = URL(endpoint)
    return URL.build(scheme=base.scheme, authority=base.raw_authority, path=base.raw_path.rstrip("/") + path,
                     query_string=query, encoded=True)


def _failure(exc: BaseException) -> str:
    """What went wrong with a passed-through request, for a person (Feldera's wording for a disconnection)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ("the pipeline disconnected while it was processing this HTTP request. This could be because the "
                "pipeline either (a) encountered a fatal error or panic, (b) was stopped, or (c) experienced network "
                "issues -- retrying might help in the last case. Alternatively, check the pipeline logs.")
    if isinstance(exc, aiohttp.ClientResponseError) and not isinstance(exc, aiohttp.ContentTypeError):
        return f"the pipeline's answer is not valid HTTP ({' '.join(str(exc.message).split())[:200]})"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


@dataclass
class Answer:
    """The head of a pipeline's answer to a passed-through request; its body is read with :meth:`chunks`."""
    status: int
    content_type: str
    response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (at most :data:`CHUNK` bytes at a time); a failure to read it (the pipeline
        cut the connection, stopped sending for longer than the read timeout) is :class:`PipelineUnreachable`."""
        try:
            async for chunk in self.response.content.iter_chunked(CHUNK):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PipelineUnreachable(_failure(exc) if not isinstance(exc, TimeoutError) else
                                      "the pipeline stopped sending its answer (read timeout)") from exc


def decode_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A pipeline's answer decoded as JSON (:func:`jsondepth.decode_json`): ValueError when it is not
    JSON, :class:`TooDeep` when it nests deeper than ``max_depth``."""
    return jsondepth.decode_json(raw, max_depth)


def _no_redirects() -> aiohttp.TraceConfig:
    """A redirect is never followed, not even where aiohttp offers no way to refuse it (a WebSocket handshake):
    it could take the operator's requests to another address. (Passed-through requests refuse them already.)"""
    async def refuse(session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestRedirectParams) -> None:
        params.response.close()
        raise InvalidAnswer(f"the pipeline answered a redirect (HTTP {params.response.status}), which is not followed")
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(refuse)
    return trace


class _Resolver(AbstractResolver):
    """Name lookups of the pipelines' addresses (``<pipeline>.<namespace>.svc``) in threads of their own.

    aiohttp's default resolver runs ``getaddrinfo`` in the event loop's default executor (six threads on
    two cores), which the operator's other blocking work shares: reading compiled programs, the event
    store's reads. While DNS does not answer, every lookup holds one of those threads for the resolver's
    whole timeout, and with a thousand pipelines that work would queue behind them for minutes. A lookup
    that is given up on (the status request timed out) leaves this pool's queue."""

    def __init__(self, workers: int = RESOLVER_THREADS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pipeline-dns")

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, 0,
                                          socket.AI_ADDRCONFIG))
        return [ResolveResult(hostname=host, host=str(address[0]), port=int(address[1]), family=found, proto=proto,
                              flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
                for found, _, proto, _, address in infos if found in (socket.AF_INET, socket.AF_INET6)]

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RuntimeClient:
    """HTTP to pipeline processes: ``GET /status``, the actions, and requests forwarded by the API.

    ``token_for`` maps an endpoint (exactly as the backend's ``endpoint()`` returned it) to the
    pipeline's control token, sent as ``Authorization: Bearer`` on every request to it."""

    def __init__(self, status_timeout: float = 5.0, action_timeout: float = 10.0,
                 token_for: Callable[[str], str | None] | None = None) -> None:
        self.status_timeout = status_timeout
        self.action_timeout = action_timeout
        self.token_for = token_for
        self._session: aiohttp.ClientSession | None = None
        self._polls: StatusConnections | None = None
        self._resolver: _Resolver | None = None
        self._status_timeout = aiohttp.ClientTimeout(total=status_timeout)
        # endpoint -> (HTTP status, body, observation) of its last answer (observations are immutable)
        self._last_status: dict[str, tuple[int, bytes, RuntimeObservation]] = {}

    @property
    def polls(self) -> StatusConnections:
        if self._polls is None:
            self._polls = StatusConnections(self._addresses, MAX_STATUS_BODY, "pipeline-operator")
        return self._polls

    async def _addresses(self, host: str, port: int) -> list[str]:
        if self._resolver is None:
            self._resolver = _Resolver()
        return [found["host"] for found in await self._resolver.resolve(host, port, socket.AF_UNSPEC)]

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._resolver is None:
                self._resolver = _Resolver()
            # No cookie jar: a pipeline sets none that matter (Feldera's manager keeps none), and
            # looking through one on every answer is work on every status poll.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=4, resolver=self._resolver),
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, max_line_size=MAX_HEAD_LINE,
                max_field_size=MAX_HEAD_LINE, max_headers=MAX_FIELDS, trace_configs=[_no_redirects()])
        return self._session

    async def close(self) -> None:
        if self._polls is not None:
            self._polls.close()
        if self._session is not None:
            await self._session.close()
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    def _headers(self, endpoint: str) -> dict[str, str]:
        """The only headers sent to a pipeline: its token, when one is known (never a client's)."""
        token = self.token_for(endpoint) if self.token_for is not None else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def status(self, endpoint: str) -> RuntimeObservation:
        """``GET {endpoint}/status`` with Feldera's 5 s timeout, read as Feldera's runner reads it.

        Sent on the pipeline's kept-alive connection of :mod:`~pipeline_operator.feldera.status_http` (through aiohttp
        for an endpoint that is not plain ``http://``). A pipeline answers its polls with the same body while
        nothing changes: an answer identical (status and bytes) to the last one from that endpoint is the same
        observation, not decoded again."""
        target = self.polls.target(endpoint)
        if target is None:
            return await self._status_through_session(endpoint)
        try:
            async with asyncio.timeout(self.status_timeout):
                status, raw = await self.polls.get(target, self.token_for(endpoint) if self.token_for else None)
        except TimeoutError:
            return parse_status_response(None, None, f"timed out after {self.status_timeout:g}s")
        except StatusTooLarge as exc:
            return parse_status_response(exc.status, NOT_JSON, _TOO_LARGE)
        except StatusHeadTooLarge as exc:
            return parse_status_response(exc.status or None, NOT_JSON, str(exc))
        except StatusUnanswered as exc:
            return parse_status_response(None, None, str(exc))
        except OSError as exc:  # no connection; socket.gaierror: no address
            why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            return parse_status_response(None, None, f"cannot connect to {target.host}:{target.port}: {why}")
        return await self._observe(endpoint, status, raw)

    async def _status_through_session(self, endpoint: str) -> RuntimeObservation:
        try:
            async with self.session.get(f"{endpoint}/status", timeout=self._status_timeout,
                                        headers=self._headers(endpoint), allow_redirects=False) as response:
                length = response.content_length
                if length is not None and length <= MAX_STATUS_BODY and "Content-Encoding" not in response.headers:
                    raw = await response.read()  # no more than the length it announced (not decompressed)
                else:
                    chunks, size = [], 0
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > MAX_STATUS_BODY:
                            return parse_status_response(response.status, NOT_JSON, _TOO_LARGE)
                        chunks.append(chunk)
                    raw = b"".join(chunks)
                return await self._observe(endpoint, response.status, raw)
        except TimeoutError:
            return parse_status_response(None, None, f"timed out after {self.status_timeout:g}s")
        except aiohttp.ClientResponseError as exc:  # not HTTP, or a head past the bounds
            return parse_status_response(None, None, _failure(exc))
        except aiohttp.ClientError as exc:
            return parse_status_response(None, None, f"{type(exc).__name__}: {exc}")

    async def _observe(self, endpoint: str, status: int, raw: bytes) -> RuntimeObservation:
        """What one answer to ``GET /status`` says."""
        if 300 <= status < 400:
            return parse_status_response(status, None)
        last = self._last_status.get(endpoint)
        if last is not None and last[0] == status and last[1] == raw:
            return last[2]
        try:
            if not raw:
                body = None
            elif len(raw) < _PARSE_IN_THREAD:
                body = decode_json(raw)
            else:
                body = await asyncio.to_thread(decode_json, raw)
        except TooDeep as exc:
            return parse_status_response(status, NOT_JSON, f"the status answer is {exc}")
        except ValueError:
            body = NOT_JSON
        observed = parse_status_response(status, body, "")
        if len(raw) <= _STATUS_MEMO_BYTES:
            if len(self._last_status) >= _STATUS_MEMO_LIMIT:
                self._last_status.clear()
            self._last_status[endpoint] = (status, raw, observed)
        return observed

    async def _call(self, method: str, endpoint: str, path: str) -> bool:
        """One action; a redirect is a failure (never followed, never sent again elsewhere)."""
        timeout = aiohttp.ClientTimeout(total=self.action_timeout)
        try:
            async with self.session.request(method, f"{endpoint}{path}", timeout=timeout,
                                            headers=self._headers(endpoint), allow_redirects=False) as response:
                if response.status < 300:
                    return True
                if response.status < 400:
                    log.warning("%s %s%s answered a redirect (HTTP %s), which is not followed", method, endpoint,
                                path, response.status)
                    return False
                text = (await response.content.read(2048)).decode(errors="replace")
                log.warning("%s %s%s answered %s: %s", method, endpoint, path, response.status, text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s %s%s failed: %s", method, endpoint, path, exc)
        return False

    # The timeout is aiohttp's per-request ClientTimeout (None on expiry, as for any failed request).
    async def forward(self, endpoint: str, method: str, path: str, query: str = "",
                      timeout: float = 60.0) -> tuple[int, bytes, str] | None:  # noqa: ASYNC109
        """Forward one request to the pipeline as Feldera's manager does: its status, body (at most
        1 MiB) and content type, or None when it did not answer.

        The body is passed on as bytes, never decoded here (so its nesting does not matter), and no
        header of the client's is passed on: the pipeline sees only the operator's token."""
        url = pipeline_url(endpoint, path, query)
        try:
            async with self.session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout),
                                            headers=self._headers(endpoint), allow_redirects=False) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    chunks.append(chunk[:MAX_STATUS_BODY - size])
                    size += len(chunks[-1])
                    if size >= MAX_STATUS_BODY:
                        break
                return response.status, b"".join(chunks), response.content_type
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("%s %s failed: %s", method, url, exc)
            return None

    @contextlib.asynccontextmanager
    async def exchange(self, endpoint: str, method: str, path: str, query: str = "", *,
                       body: AsyncIterable[bytes] | None = None, headers: Mapping[str, str] | None = None,
                       answer_timeout: float | None = None,
                       read_timeout: float | None = None) -> AsyncIterator[Answer]:
        """Pass one request through to the pipeline, as Feldera's manager's streaming proxy does: ``body``
        is sent as it is produced (chunked, unless ``headers`` give its Content-Length), and the answer's
        body is left to the caller to stream on (:meth:`Answer.chunks`).

        ``answer_timeout`` bounds the time until the answer starts (sending the body included; None: no
        bound, as Feldera's for egress and ad-hoc queries), ``read_timeout`` every wait for more of it.
        The pipeline gets ``headers`` (the caller chooses which of its client's to pass on), its token,
        and ``Accept-Encoding: identity`` (a compressed stream arrives in bursts); a redirect is
        :class:`InvalidAnswer`, never followed; no answer is :class:`PipelineUnreachable`. ``path`` and
        ``query`` are sent as given (:func:`pipeline_url`)."""
        url = pipeline_url(endpoint, path, query)
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in ("authorization", "accept-encoding")}
        sent.update(self._headers(endpoint))
        sent["Accept-Encoding"] = "identity"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout)
        try:
            async with asyncio.timeout(answer_timeout):
                response = await self.session.request(method, url, data=body, headers=sent, timeout=timeout,
                                                      allow_redirects=False)
        except TimeoutError as exc:
            assert answer_timeout is not None
            raise PipelineUnreachable(timeout_message(answer_timeout)) from exc
        except aiohttp.ClientError as exc:
            log.info("%s %s failed: %s", method, url, exc)
            raise PipelineUnreachable(_failure(exc)) from exc
        try:
            if 300 <= response.status < 400:
                raise InvalidAnswer(f"the pipeline answered a redirect (HTTP {response.status}), which is not "
                                    "followed")
            yield Answer(response.status, response.content_type, response)
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()  # not read to its end: the connection cannot be used again

    @contextlib.asynccontextmanager
    async def websocket(self, endpoint: str, path: str, query: str = "", *,
                        max_frame: int = MAX_WS_FRAME) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """Open a WebSocket to the pipeline, as Feldera's manager does for an ad-hoc query: the same path and
        query string (sent as given), the pipeline's token, frames of at most ``max_frame`` bytes, and
        :data:`CONNECT_TIMEOUT` for the connection and the handshake. A pipeline that does not complete the
        handshake (refuses the connection, answers without upgrading, redirects) is :class:`PipelineUnreachable`,
        whose message says what it answered."""
        url = pipeline_url(endpoint, path, query)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                socket_ = await self.session.ws_connect(
                    url, headers=self._headers(endpoint), max_msg_size=max_frame, autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CONNECT_TIMEOUT),
                    )
        except InvalidAnswer as exc:
            raise PipelineUnreachable(str(exc)) from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise PipelineUnreachable(f"the pipeline did not accept the WebSocket connection (HTTP {exc.status}: "
                                      f"{' '.join(str(exc.message).split())[:200]})") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("WebSocket %s failed: %s", url, exc)
            raise PipelineUnreachable(_failure(exc) if not isinstance(exc, TimeoutError) else
                                      timeout_message(CONNECT_TIMEOUT)) from exc
        try:
            yield socket_
        finally:
            await socket_.close()

    async def set_runtime_desired(self, endpoint: str, target: SpecRuntimeDesiredStatus, activate: bool) -> bool:
        if activate:
            return await self._call("POST", endpoint, f"/activate?initial={target.value.lower()}")
        path = "/start" if target is SpecRuntimeDesiredStatus.RUNNING else "/pause"
        return await self._call("GET", endpoint, path)

    async def suspend(self, endpoint: str) -> bool:
        return await self._call("POST", endpoint, "/suspend")

    async def approve(self, endpoint: str) -> bool:
        return await self._call("POST", endpoint, "/approve")
