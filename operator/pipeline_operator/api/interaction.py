"""The data plane of a pipeline through the API: its logs, and the requests Feldera's manager passes
through to the pipeline (:data:`ROUTES`: ``/stats``, ``/metrics``, the checkpoints, ``/ingress/{table_name}``,
``/egress/{table_name}``, ``/query``, the time series, the profiles, the transactions, the clock, the
connectors' routes, ...), and the ad-hoc query's WebSocket, relayed to the pipeline's (:meth:`Interaction._relay`).

Each passed-through request is authorised by its kind (a read of the pipeline's state is ``get``, what acts on the
pipeline or reads or changes its data is ``patch``, the verb of the lifecycle actions), refused by the pure core's
:func:`~pipeline_operator.core.lifecycle.interaction_refusal` exactly as the actions are
(``PipelineInteractionNotDeployed``, ``PipelineUnavailable``), then sent to the pipeline at the path Feldera's
manager asks it for, with the query string exactly as the client sent it (never decoded and encoded again; none
where Feldera's manager drops it), Feldera's timeout for that route, and the pipeline's token. Nothing is held in
memory: the client's body goes up as it arrives (``/ingress`` at most :data:`MAX_INGRESS_BYTES`, else 413
``PayloadTooLarge``), the pipeline's answer comes down as it arrives, with its status and nothing else of its
headers. No answer is Feldera's ``PipelineInteractionUnreachable`` (503, with the request and what went wrong in
``details``); a redirect, which is never followed, ``PipelineInteractionInvalidResponse`` (500).

A pipeline's answer is served from the API's origin, so it must not be able to script it: its content type is
kept only when it is one that Feldera's pipeline answers on that route (:func:`served_content_type`), anything
else (``text/html``, ``image/svg+xml``, ...) is served as ``application/octet-stream``, and every passed-through
body comes with ``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: default-src 'none'; sandbox``
(:data:`PASSED_THROUGH_HEADERS`).

``GET /v0/pipelines/{name}/logs`` streams the pipeline's log as Feldera's runner does (``text/plain``,
the recent past first, then new lines as they are written, across stops and starts, until the pipeline is
deleted, ``Logs have ended`` last) from the backend: the process's log file (local backend) or the pods' logs
through the Kubernetes API.

The open-ended streams (logs, egress, ad-hoc queries) are bounded per client address, user, namespace and
overall (429 ``TooManyStreams``) and end within a second when the API stops. Neither they nor uploads
(``/ingress``, which have slots of their own, shared fairly: :data:`UPLOADS`) hold one of the API's request
slots, so slow clients of a pipeline's data cannot take the slots every other call needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import ClientWebSocketResponse, StreamReader, WSCloseCode, WSMsgType, web

from ..backends import LogsUnavailable
from ..core.lifecycle import PipelineState, interaction_refusal
from ..feldera.runtime_client import MAX_WS_FRAME, InvalidAnswer, PipelineUnreachable
from . import writes
from .errors import ApiError
from .slots import FairSlots, StreamSlots, share

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps, ServedPipeline
    from .follow import FollowHub

log = logging.getLogger(__name__)

MAX_INGRESS_BYTES = 64 * 1024 * 1024  # one /ingress request's body (send more data in more requests)
MAX_EGRESS_BODY = 64 * 1024  # an /egress request's body: a connector configuration
STREAMS = 32  # open-ended streams (logs, egress, ad-hoc queries) open at once
STREAMS_PER_CLIENT = 4  # ... from one client address (and a quarter of them per user and per namespace)
UPLOADS = 32  # uploads (/ingress) under way at once, a quarter of them per user and per namespace
CLOSING_CHECK_SECONDS = 1.0  # how often a quiet stream looks whether the API is stopping
LOGS_END = b"Logs have ended\n"  # the last line of Feldera's log stream
# Whatever a pipeline answers is served with these: a browser neither guesses another type for the body (a
# text/plain answer holding HTML stays text) nor lets it run anything, load anything or act as the API's origin.
PASSED_THROUGH_HEADERS = {"X-Content-Type-Options": "nosniff",
                          "Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "no-cache"}
LOG_HEADERS = {**PASSED_THROUGH_HEADERS, "Content-Type": "text/plain; charset=utf-8", "X-Accel-Buffering": "no"}
JSON = "application/json"
# The error answers of every route: Feldera's ErrorResponse, or actix's own plain-text errors (a query
# parameter it cannot parse).
ERROR_TYPES = (JSON, "text/plain")
OPAQUE = "application/octet-stream"  # what any other content type is served as


def served_content_type(media_type: str, charset: str | None, allowed: tuple[str, ...]) -> str:
    """The Content-Type the API serves a pipeline's answer with: its media type when ``allowed`` has it (with
    ``charset=utf-8`` if the pipeline said so; no other parameter is kept), else ``application/octet-stream``.

    Served, not refused: an API client (the SDK, curl) still gets the body as the pipeline sent it, while a
    browser downloads it instead of rendering it, so a hostile pipeline's ``text/html`` cannot run a script
    in the API's origin. Refusing would also refuse a newer pipeline's answer in a format added since."""
    media_type = media_type.lower()
    if media_type not in allowed:
        return OPAQUE
    return f"{media_type}; charset=utf-8" if (charset or "").lower() == "utf-8" else media_type


@dataclass(frozen=True)
class Route:
    """One passed-through route: Feldera's method, path, RBAC class and timeouts for it."""
    method: str
    path: str                    # below /v0/pipelines/{name}/ (and the pipeline's own path, unless ``target``)
    verb: str                    # "get" for reads of the pipeline's state, "patch" for what acts on it or its data
    timeout: float | None        # seconds until the answer starts, and of every wait for more (None: none)
    max_body: int = 0            # bytes of the client's body passed on (0: none is)
    stream: bool = False         # an open-ended answer: counted against the stream limits
    upload: bool = False         # a body as large as a pipeline takes: counted against the upload slots
    notify: bool = False         # the monitoring loop looks at the pipeline again at once (Feldera's notify)
    answers: tuple[str, ...] = (JSON,)  # the content types Feldera's pipeline answers it with (besides errors)
    target: str = ""             # the pipeline's path, where Feldera's manager asks another one ({endpoint}: below)
    target_method: str = ""      # the pipeline's method, where Feldera's manager uses another one
    query: bool = True           # the client's query string is passed on (Feldera's manager drops it on some)

    @property
    def websocket(self) -> bool:
        """An ad-hoc query: a WebSocket upgrade of it is passed on as a WebSocket (:meth:`Interaction._relay`)."""
        return self.path == "query"


NDJSON = "application/x-ndjson"
SMALL_BODY = 64 * 1024  # a connector command's or a clock advance's JSON body
INPUT_CONNECTOR = "tables/{table_name}/connectors/{connector_name}"
OUTPUT_CONNECTOR = "views/{view_name}/connectors/{connector_name}"
CONNECTOR_ACTIONS = ("start", "pause")

# Feldera's forward_http_request_to_pipeline_by_name (10 s unless said otherwise; no body; the query string
# where Feldera passes it) and forward_streaming_http_request_to_pipeline_by_name (the client's method, query
# and body: ingress 30 s, egress, queries, time series streams and samply profiles none, profiles 120 s). A
# connector is the pipeline's endpoint ``{table or view}.{connector}`` (the table or view as a SQL identifier:
# lower-cased unless quoted), percent-encoded. What Feldera's pipeline answers (crates/adapters/src/server.rs,
# adhoc.rs, transport/http/output.rs): JSON, except the Prometheus text of /metrics, an ad-hoc query's text,
# JSON, Arrow IPC or Parquet results, the newline-delimited JSON of /time_series_stream, the ZIP of a circuit
# profile, the protobuf of a heap profile and the gzip of a samply profile; the connector actions, rebalance and
# compaction answer an empty 200.
ROUTES = (
    Route("GET", "stats", "get", 10.0),
    Route("GET", "metrics", "get", 10.0, answers=("text/plain", JSON)),
    Route("GET", "time_series", "get", 10.0),
    Route("GET", "time_series_stream", "get", None, stream=True, answers=(NDJSON,)),
    Route("GET", "circuit_profile", "get", 120.0, target="dump_profile", answers=("application/zip",)),
    Route("GET", "circuit_json_profile", "get", 120.0, target="dump_json_profile"),
    Route("GET", "heap_profile", "get", 10.0, answers=("application/protobuf",)),
    Route("POST", "samply_profile", "patch", 10.0),
    Route("GET", "samply_profile", "get", None, stream=True, answers=("application/gzip",)),
    Route("POST", "rebalance", "patch", 120.0, query=False),
    Route("POST", "start_compaction", "patch", 120.0, query=False),
    Route("POST", "checkpoint", "patch", 120.0, notify=True),
    Route("GET", "checkpoint_status", "get", 10.0, notify=True),
    Route("GET", "checkpoints", "get", 10.0, notify=True),
    Route("POST", "checkpoint/sync", "patch", 120.0),
    Route("GET", "checkpoint/sync_status", "get", 10.0),
    Route("GET", "completion_status", "get", 10.0),
    Route("POST", "start_transaction", "patch", 10.0),
    Route("POST", "commit_transaction", "patch", 10.0),
    Route("POST", "clock/advance", "patch", 10.0, max_body=SMALL_BODY),
    Route("POST", f"{INPUT_CONNECTOR}/{{action}}", "patch", 10.0, target="input_endpoints/{endpoint}/{action}",
          target_method="GET", query=False),
    Route("GET", f"{INPUT_CONNECTOR}/stats", "get", 10.0, target="input_endpoints/{endpoint}/stats", query=False),
    Route("GET", f"{INPUT_CONNECTOR}/completion_token", "get", 10.0,
          target="input_endpoints/{endpoint}/completion_token", query=False),
    Route("GET", f"{OUTPUT_CONNECTOR}/stats", "get", 10.0, target="output_endpoints/{endpoint}/stats", query=False),
    Route("POST", f"{OUTPUT_CONNECTOR}/command", "patch", 10.0, max_body=SMALL_BODY,
          target="output_endpoints/{endpoint}/command"),
    Route("POST", "ingress/{table_name}", "patch", 30.0, max_body=MAX_INGRESS_BYTES, upload=True),
    Route("POST", "egress/{table_name}", "patch", None, max_body=MAX_EGRESS_BODY, stream=True),
    Route("GET", "query", "patch", None, stream=True, answers=("text/plain", JSON, OPAQUE)),
)


def sql_identifier(name: str) -> str:
    """Feldera's ``SqlIdentifier::name``: a name in double quotes is taken as it is (without them), any other
    is case-insensitive (lower-cased)."""
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        return name[1:-1]
    return name.lower()


def pipeline_path(route: Route, match: Mapping[str, str]) -> str:
    """The path Feldera's manager asks the pipeline for ``route``, from the client's path parameters: a table's
    (or view's) name percent-encoded again, whatever it holds; a connector's endpoint name as Feldera forms it."""
    if "connector_name" in match:
        table = match.get("table_name", match.get("view_name", ""))
        endpoint = quote(f"{sql_identifier(table)}.{match['connector_name']}", safe="")
        return "/" + (route.target.replace("{endpoint}", endpoint)
                      .replace("{action}", quote(match.get("action", ""), safe="")))
    return "/" + (route.target or route.path).replace("{table_name}", quote(match.get("table_name", ""), safe=""))


def is_websocket(request: web.Request) -> bool:
    """Feldera's ``request_is_websocket``: ``Connection`` names ``upgrade`` and ``Upgrade`` is ``websocket``."""
    return "upgrade" in request.headers.get("Connection", "").lower() and \
        request.headers.get("Upgrade", "").lower() == "websocket"


async def reachable_endpoint(deps: ApiDeps, monitor: ServedPipeline, state: PipelineState) -> str:
    """Where the pipeline answers, if it may be asked now (Feldera's ``check_pipeline``), with its token
    known: for the passed-through routes and the forwarded actions alike."""
    refusal = interaction_refusal(state, monitor.key.name)
    if refusal is not None:
        raise ApiError.refused(refusal)
    endpoint = deps.endpoint(monitor.key)
    if endpoint is None:
        raise ApiError(503, "PipelineMissingDeploymentLocation",
                       "Unable to interact with pipeline because its deployment location is missing despite "
                       f"it being fully provisioned (pipeline: '{monitor.key.name}')")
    if deps.learn_token is not None:
        await deps.learn_token(monitor.key)
    return endpoint


class BoundedBody:
    """A client's body as it arrives, cut when it grows past ``limit`` bytes (``exceeded`` is then set,
    and the upload to the pipeline fails: the pipeline never gets the rest)."""

    def __init__(self, content: StreamReader, limit: int) -> None:
        self.content, self.limit = content, limit
        self.size = 0
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.content.iter_chunked(64 * 1024):
            self.size += len(chunk)
            if self.size > self.limit:
                self.exceeded = True
                raise ValueError(f"the body is larger than {self.limit} bytes")
            yield chunk


def too_large(limit: int, route: str) -> web.Response:
    """413, on a connection that is closed after it: the rest of the body is never read."""
    what = route.split("/")[0]
    response = ApiError(413, "PayloadTooLarge", f"The request body is larger than {limit} bytes, the most the "
                                                f"operator passes on to a pipeline's /{what}: send the data in smaller "
                                                "requests", {"limit_bytes": limit}).response()
    response.force_close()
    return response


class Interaction:
    """The routes of a pipeline's data plane (see the module's docstring)."""

    def __init__(self, gate: Gate, deps: ApiDeps, follow: FollowHub) -> None:
        self.gate = gate
        self.deps = deps
        self.follow = follow  # closing: the API is stopping
        self.slots = StreamSlots(STREAMS, STREAMS_PER_CLIENT, "log, egress and query streams",
                                 "close one and try again")
        self.uploads = FairSlots(UPLOADS, {"identity": share(UPLOADS, None), "namespace": share(UPLOADS, None)},
                                 gate.queue_timeout, "uploads to pipelines (/ingress)",
                                 refused=lambda scope: deps.metrics.busy.labels("uploads", scope).inc())

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v0/pipelines/{name}/logs", self.logs)
        self.gate.unpooled_routes.add("GET /v0/pipelines/{name}/logs")
        for route in ROUTES:
            path = f"/v0/pipelines/{{name}}/{route.path}"
            r.add_route(route.method, path, self._handler(route))
            (self.gate.unpooled_routes if route.stream or route.upload else self.gate.long_routes).add(
                f"{route.method} {path}")

    # -- passed through ---------------------------------------------------------------------------

    def _handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            namespace, name = await self.gate.namespace(request), request.match_info["name"]
            await self.gate.authorize(request, route.verb, namespace, name)
            action = request.match_info.get("action")
            if action is not None and action not in CONNECTOR_ACTIONS:  # checked first, as Feldera's manager does
                raise ApiError(400, "InvalidConnectorAction", f"Invalid connector action '{action[:100]}'; "
                               "valid actions are: 'start' or 'pause'", {"action": action[:100]})
            monitor = self.gate.monitor(namespace, name)
            state = await writes.served_state(monitor)
            identity = self.gate.identity(request)
            upgrade = route.websocket and is_websocket(request)
            if route.stream or upgrade:
                with self.slots.slot(request.remote or "", identity, namespace):
                    if upgrade:
                        return await self._relay(request, route, monitor, state)
                    return await self._pass(request, route, monitor, state)
            if route.upload:
                async with self.uploads.slot({"identity": identity, "namespace": namespace}):
                    return await self._pass(request, route, monitor, state)
            return await self._pass(request, route, monitor, state)
        return handler

    async def _pass(self, request: web.Request, route: Route, monitor: ServedPipeline,
                    state: PipelineState) -> web.StreamResponse:
        endpoint = await reachable_endpoint(self.deps, monitor, state)
        name = monitor.key.name
        path = pipeline_path(route, request.match_info)
        headers = {k: v for k in ("Accept", "Content-Type") if (v := request.headers.get(k))}
        body = None
        if route.max_body:
            if request.content_length is not None:
                if request.content_length > route.max_body:
                    return too_large(route.max_body, route.path)
                headers["Content-Length"] = str(request.content_length)
            body = BoundedBody(request.content, route.max_body)
        # As the client wrote it: decoded, ``%25`` would arrive as ``%`` and ``%23`` would end the query.
        query = request.rel_url.raw_query_string if route.query else ""
        method = route.target_method or route.method
        described = f"{method} {path}" + (f"?{query[:200]}" if query else "")
        try:
            async with self.deps.runtime.exchange(endpoint, method, path, query, body=body, headers=headers,
                                                  answer_timeout=route.timeout,
                                                  read_timeout=route.timeout) as answer:
                if route.notify:
                    monitor.poke()  # Feldera's notify: the storage status is looked at again at once
                allowed = route.answers + ERROR_TYPES if answer.status >= 400 else route.answers
                response = web.StreamResponse(status=answer.status, headers={
                    **PASSED_THROUGH_HEADERS, "Content-Type": served_content_type(
                        answer.response.content_type, answer.response.charset, allowed)})
                try:
                    await response.prepare(request)
                    ended = await self._copy(answer.chunks(), response)
                except PipelineUnreachable as exc:  # cut in the middle: the client sees the body cut too
                    log.info("HTTP API: %s of pipeline %s: the answer was cut: %s", described, monitor.key, exc)
                    ended = False
                except ConnectionError:  # the client went away
                    ended = False
                await self._end(request, response, ended)
                return response
        except PipelineUnreachable as exc:
            if body is not None and body.exceeded:
                return too_large(body.limit, route.path)
            raise ApiError(503, "PipelineInteractionUnreachable",
                           f"Error sending HTTP request to pipeline: {exc} Failed request: {described} (pipeline: "
                           f"'{name}')", {"pipeline_name": name, "request": described, "error": str(exc)}) from None
        except InvalidAnswer as exc:
            raise ApiError(500, "PipelineInteractionInvalidResponse",
                           f"Encountered an unexpected invalid response when interacting with pipeline: {exc} "
                           f"(pipeline: '{name}')", {"pipeline_name": name, "error": str(exc)}) from None

    # -- ad-hoc queries over a WebSocket -------------------------------------------------------------

    async def _relay(self, request: web.Request, route: Route, monitor: ServedPipeline,
                     state: PipelineState) -> web.StreamResponse:
        """Feldera's ``forward_websocket_request_to_pipeline_by_name``: a WebSocket to the pipeline at the same
        path and query string first (a pipeline that does not take it is Feldera's 400 ``UnableToConnect``, and
        the client's connection is not upgraded), then the client's handshake, then every text and binary
        message and the close (its code and reason) relayed both ways, one message at a time, until either side
        closes or the API stops."""
        endpoint = await reachable_endpoint(self.deps, monitor, state)
        client = web.WebSocketResponse(max_msg_size=MAX_WS_FRAME, autoping=True)
        ready = client.can_prepare(request)
        if not ready.ok:
            raise ApiError(400, "UnableToConnect", "Unable to initiate websocket connection with client: the request "
                                                   "is not a WebSocket handshake", {"reason": "not a handshake"})
        query = request.rel_url.raw_query_string
        try:
            async with self.deps.runtime.websocket(endpoint, "/" + route.path, query) as upstream:
                await client.prepare(request)
                await self._shuttle(client, upstream)
        except PipelineUnreachable as exc:
            if client.prepared:  # the pipeline went away before its WebSocket ended
                await client.close(code=WSCloseCode.INTERNAL_ERROR)
                return client
            raise ApiError(400, "UnableToConnect", f"Unable to initiate websocket connection with pipeline: {exc}",
                           {"reason": str(exc)}) from None
        return client

    async def _shuttle(self, client: web.WebSocketResponse, upstream: ClientWebSocketResponse) -> None:
        """Relay messages both ways until one side closes (its close goes to the other) or the API stops."""
        async def relay(source: web.WebSocketResponse | ClientWebSocketResponse,
                        sink: web.WebSocketResponse | ClientWebSocketResponse) -> None:
            while True:
                message = await source.receive()
                if message.type is WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                elif message.type is WSMsgType.CLOSE:
                    reason = str(message.extra or "").encode("utf-8", "replace")[:123]  # a close frame's bound
                    await sink.close(code=int(message.data or WSCloseCode.OK), message=reason)
                    return
                else:  # closed, or an error (a message too large, invalid UTF-8): the other side is told
                    await sink.close(code=WSCloseCode.INTERNAL_ERROR if message.type is WSMsgType.ERROR
                                     else WSCloseCode.OK)
                    return

        tasks = {asyncio.ensure_future(relay(upstream, client)), asyncio.ensure_future(relay(client, upstream))}
        try:
            while not (await asyncio.wait(tasks, timeout=CLOSING_CHECK_SECONDS,
                                          return_when=asyncio.FIRST_COMPLETED))[0]:
                if self.follow.closing:  # the API is stopping: its streams end now
                    break
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                    await task
            with contextlib.suppress(ConnectionError, RuntimeError):
                await client.close(code=WSCloseCode.GOING_AWAY if self.follow.closing else WSCloseCode.OK)

    # -- logs ---------------------------------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """Feldera's ``GET /v0/pipelines/{name}/logs``, from the backend: the recent past, then followed as
        Feldera's runner follows it, across stops and starts, until the pipeline is deleted (then ``Logs have
        ended``) or the client goes."""
        monitor = await self.gate.pipeline(request, "get")
        if self.deps.logs is None:
            raise ApiError(501, "NotServed", "This operator's backend does not serve pipeline logs")
        key = monitor.key

        def deleted() -> bool:
            found = self.deps.pipelines.get(key.namespace, key.name)
            return found is None or found.obj is None or found.key.uid != key.uid

        with self.slots.slot(request.remote or "", self.gate.identity(request), key.namespace):
            async with contextlib.AsyncExitStack() as stack:
                try:
                    chunks = await stack.enter_async_context(self.deps.logs(key, True))
                except LogsUnavailable as exc:
                    raise ApiError(503, "RunnerInteractionUnreachable",
                                   f"Unable to reach pipeline runner to interact due to: {exc}",
                                   {"error": str(exc)}) from None
                response = web.StreamResponse(headers=LOG_HEADERS)
                try:
                    await response.prepare(request)
                    ended = await self._copy(chunks, response, lines=True, until=deleted)
                    if ended:
                        await response.write(LOGS_END)
                except OSError as exc:  # the client went away (ConnectionError), or the log could not be read
                    if not isinstance(exc, ConnectionError):
                        log.warning("HTTP API: the log of pipeline %s could not be read on: %s", key, exc)
                    ended = False
                await self._end(request, response, ended)
                return response

    # -- streaming ----------------------------------------------------------------------------------

    async def _copy(self, chunks: AsyncIterator[bytes], response: web.StreamResponse, lines: bool = False,
                    until: Callable[[], bool] | None = None) -> bool:
        """Write ``chunks`` as they come: True once they end (or, while they are quiet, ``until`` says they are
        over), False when the API stops first. With ``lines``, a last line without its end gets one (what follows
        starts on a line of its own)."""
        source = aiter(chunks)
        last = b"\n"
        while True:
            nxt = asyncio.ensure_future(anext(source, None))
            try:
                while not (await asyncio.wait({nxt}, timeout=CLOSING_CHECK_SECONDS))[0]:
                    if self.follow.closing:  # the API is stopping: its streams end now
                        return False
                    if until is not None and until():
                        chunk = None
                        break
                else:
                    chunk = nxt.result()
            finally:
                nxt.cancel()
            if chunk is None:
                if lines and last != b"\n":
                    await response.write(b"\n")
                return True
            if chunk:
                last = chunk[-1:]
                await response.write(chunk)

    @staticmethod
    async def _end(request: web.Request, response: web.StreamResponse, ended: bool) -> None:
        """End the body: cleanly when it ended, else cut the connection (the client must not take a cut
        stream for a complete one)."""
        if ended:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        elif request.transport is not None:
            request.transport.abort()
