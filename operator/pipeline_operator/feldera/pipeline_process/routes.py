"""The reference pipeline's HTTP routes: Feldera's runtime HTTP contract (``/status``, the lifecycle actions
with Feldera's answers and errors, statistics, metrics, checkpoints, ingress, egress and the ad-hoc query),
the control token they require, and the debug routes' faults."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from .state import ReferenceState

log = logging.getLogger("pipeline_operator.feldera.pipeline_process")
TOKEN_ENV = "PIPELINE_CONTROL_TOKEN"
DEBUG_ROUTES_ENV = "PIPELINE_DEBUG_ROUTES"
# The routes that need the control token (when the process has one): these, and those under GUARDED_PREFIXES.
CONTROL_PATHS = frozenset({"/start", "/pause", "/activate", "/suspend", "/approve", "/checkpoint",
                           "/checkpoint/sync", "/query"})
GUARDED_PREFIXES = ("/ingress/", "/egress/", "/debug/")
# Bytes the ``broken`` fault answers instead of HTTP: not a status line, not even text.
NOT_HTTP = b"\x00\xff\xfe SSH-2.0-not-a-pipeline \xc3\x28\r\n\r\n"
MAX_REQUEST_BODY = 64 * 1024  # no route reads a body; a larger one is refused before it is read
MAX_SHOWN_PARAMETER = 40  # characters of a query parameter repeated in an error message
NESTED_DEPTH = 100_000  # levels of the ``nested`` fault's answer
GARBAGE = b"\xff\xfe\x00{\"runtime_status\": \xc3\x28 this is not JSON"  # invalid UTF-8, then not JSON
# The ``endless-header`` fault's answer: this head, then ENDLESS_PIECE over and over (one field that never ends).
ENDLESS_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Endless: "
ENDLESS_PIECE = b"a" * 16 * 1024
ENDLESS_BUFFERED = 64 * 1024  # bytes left unsent in the transport before the fault waits for the client

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, code: str, details: Any = None) -> web.Response:
    return web.json_response({"message": message, "error_code": code, "details": details}, status=status)


def _drop_connection(request: web.Request) -> web.Response:
    """End the request's connection without an answer, as a process that is gone does: the client sees
    the connection closed (the response returned is never sent)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=503)


def _shown(value: str) -> str:
    """A query parameter as repeated in an error message: short, whatever the client sent."""
    return value if len(value) <= MAX_SHOWN_PARAMETER else value[:MAX_SHOWN_PARAMETER] + "..."


def _identifier(name: str) -> str:
    """A SQL name as Feldera compares it: a quoted name as written, any other in lower case."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1]
    return name.lower()


class ReferencePipeline(ReferenceState):
    """The reference pipeline: its state, served over Feldera's runtime HTTP contract (:meth:`app`)."""

    # -- HTTP --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY, middlewares=[self._guard])
        app.router.add_get("/status", self.handle_status)
        app.router.add_get("/pause", self.handle_pause)
        app.router.add_get("/start", self.handle_start)
        app.router.add_post("/suspend", self.handle_suspend)
        app.router.add_post("/activate", self.handle_activate)
        app.router.add_post("/approve", self.handle_approve)
        app.router.add_get("/stats", self.handle_stats)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_post("/checkpoint", self.handle_checkpoint)
        app.router.add_get("/checkpoint_status", self.handle_checkpoint_status)
        app.router.add_post("/checkpoint/sync", self.handle_checkpoint_sync)
        app.router.add_get("/checkpoint/sync_status", self.handle_checkpoint_sync_status)
        app.router.add_post("/ingress/{table}", self.handle_ingress)
        app.router.add_post("/egress/{view}", self.handle_egress)
        app.router.add_get("/query", self.handle_query)
        if self.debug_routes:
            app.router.add_post("/debug/fail", self.handle_fail)
            # Last: only paths no other route serves (and none under /debug/, which stay 404 unless routed).
            app.router.add_route("*", "/{path:(?!debug/).*}", self.handle_echo)
        return app

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries the control token (always, when the process has none)."""
        if self.control_token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared in constant time, as bytes (a header may hold any character).
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self.control_token)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await self.guarded(request, request.path, request.match_info.http_exception is None, handler)

    async def guarded(self, request: web.Request, path: str, routed: bool, handler: Handler) -> web.StreamResponse:
        """The ``hang`` fault, the size of the body (no route reads one; aiohttp would discard it), then
        the token of the control routes (a route that does not exist answers 404 whatever the token).
        ``path`` is the route below the pipeline's address, ``routed`` whether a route matched it."""
        if self.hung:
            await self.gone.wait()  # the request waits until the process ends (or the fleet drops the pipeline)
            return _drop_connection(request)
        if self.broken and not path.startswith("/debug/"):
            if request.transport is not None:
                request.transport.write(NOT_HTTP)
            return _drop_connection(request)
        if (request.content_length or 0) > MAX_REQUEST_BODY:
            return _error(413, f"The request body is larger than {MAX_REQUEST_BODY} bytes; no route of a pipeline "
                          "takes a body this large", "PayloadTooLarge")
        control = path in CONTROL_PATHS or path.startswith(GUARDED_PREFIXES)
        if control and routed and not self.authorized(request):
            return _error(401, f"{request.method} {path} needs the pipeline's control token: send "
                          f"'Authorization: Bearer <token>' with the value of {TOKEN_ENV} of the process",
                          "AuthenticationFailed")
        return await handler(request)

    async def handle_status(self, request: web.Request) -> web.Response:
        if self.status_fault == "garbage":
            return web.Response(body=GARBAGE, content_type="application/json")
        if self.status_fault == "nested":
            return web.Response(body=b"[" * NESTED_DEPTH + b"]" * NESTED_DEPTH, content_type="application/json")
        if self.status_fault == "endless-header":
            return await self._endless_header(request)
        if self.panic is not None:
            body = {k: v for k, v in self.panic.items() if k != "http_status"}
            return web.json_response(body, status=self.panic.get("http_status", 500))
        return web.json_response(self.status_body())

    async def _endless_header(self, request: web.Request) -> web.Response:
        """The ``endless-header`` fault: a head that never ends, written on the connection itself (aiohttp
        writes a head only once it is complete), at the pace the client reads it, until the client closes
        the connection, the fault ends or the pipeline goes; then the connection is dropped."""
        transport = request.transport
        if transport is None:
            return _drop_connection(request)
        transport.write(ENDLESS_HEAD)
        while not transport.is_closing() and self.status_fault == "endless-header" and not self.gone.is_set():
            if transport.get_write_buffer_size() > ENDLESS_BUFFERED:
                await asyncio.sleep(0.005)  # the client reads no faster (or not at all): wait for it
            else:
                transport.write(ENDLESS_PIECE)
                await asyncio.sleep(0)  # the loop goes on serving the other requests meanwhile
        return _drop_connection(request)

    def _transition(self, action: str, target: str, may_activate: bool = False) -> web.Response:
        """Feldera's ``state_transition``: 202 with what changed, or 400 ``InvalidTransition``."""
        if self.panic is not None:
            return _error(self.panic.get("http_status", 500), self.panic["message"], self.panic["error_code"])
        old = self.desired
        if (may_activate or old != "Standby") and self._may_transition_to(target):
            self.desired = target
            if self.status in ("Running", "Paused", "Standby"):
                self._settle()
            return web.json_response(f"Pipeline transitioning from {old} to {target}", status=202)
        return _error(400, f"Cannot execute {action} transition starting from {old}", "InvalidTransition")

    async def handle_pause(self, request: web.Request) -> web.Response:
        return self._transition("pause", "Paused")

    async def handle_start(self, request: web.Request) -> web.Response:
        return self._transition("start", "Running")

    async def handle_suspend(self, request: web.Request) -> web.Response:
        response = self._transition("suspend", "Suspended")
        if response.status == 202 and self.status not in ("Suspended",):
            self._spawn(self._suspend())
        return response

    async def handle_activate(self, request: web.Request) -> web.Response:
        raw = request.query.get("initial", "running")
        target = {"running": "Running", "paused": "Paused"}.get(raw)
        if target is None:
            return _error(400, f"Invalid activation status {_shown(raw)} (only running and paused are valid)",
                          "InvalidActivateStatus")
        return self._transition("activate", target, may_activate=True)

    async def handle_approve(self, request: web.Request) -> web.Response:
        """Feldera's ``/approve``: the bootstrap is allowed from now on (whatever the current phase),
        and the answer comes once the pipeline has left AwaitingApproval."""
        flags = {name: request.query.get(name, "false").lower() == "true"
                 for name in ("silent_bootstrap", "concurrent_bootstrap")}
        if all(flags.values()):
            return _error(400, "silent_bootstrap and concurrent_bootstrap cannot both be set", "InvalidParam")
        self.require_approval = False
        self.bootstrap_policy = "allow"
        # As above: a poll of the reference pipeline's own state, set by the bootstrap task.
        while self.status == "AwaitingApproval":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return web.json_response("Bootstrap approved", status=200)

    # -- statistics, checkpoints and data: what a Feldera pipeline's controller answers -------------

    def _no_controller(self) -> web.Response | None:
        """Feldera's answer where its pipeline would have no controller to ask (``missing_controller_error``):
        a panic's error, or Initializing, AwaitingApproval or Suspended; None when there is one."""
        if self.panic is not None:
            return _error(self.panic.get("http_status", 500), self.panic["message"], self.panic["error_code"],
                          self.panic.get("details"))
        if self.status in ("Initializing", "Standby"):
            return _error(503, "Operation failed because the pipeline has not finished initializing.", "Initializing")
        if self.status == "AwaitingApproval":
            return _error(503, "Operation failed: the pipeline is waiting for approval to bootstrap modified "
                               "components.", "AwaitingApproval")
        if self.status == "Suspended" or self.desired == "Suspended":
            return _error(503, "Operation failed because the pipeline has been suspended.", "Suspended")
        return None

    async def handle_stats(self, request: web.Request) -> web.Response:
        refused = self._no_controller()
        if refused is not None:
            return refused
        return web.json_response({"global_metrics": await self.figures(), "inputs": [], "outputs": [],
                                  "checkpoint_activity": {"status": "idle"}, "suspend_error": None,
                                  "permanent_checkpoint_errors": None})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        refused = self._no_controller()
        if refused is not None:
            return refused
        fmt = request.query.get("format", "prometheus")
        if fmt not in ("prometheus", "json"):
            return _error(400, f"Invalid parameter: unknown variant `{_shown(fmt)}`, expected `prometheus` or `json`.",
                          "InvalidParam", {"error": f"unknown variant `{_shown(fmt)}`"})
        figures = await self.figures()
        metrics: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]] = [
            ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
             [({}, figures["cpu_msecs"] / 1000)]),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             [({}, figures["rss_bytes"])]),
            ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
             [({}, figures["start_time"])]),
            ("pipeline_start_time_seconds", "counter", "Start time of the pipeline in seconds since the Unix "
             "epoch (earlier than process_start_time_seconds if it resumed from a checkpoint).",
             [({}, figures["initial_start_time"])]),
            ("storage_usage_bytes", "gauge", "The number of bytes of storage currently in use",
             [({}, figures["storage_bytes"])]),
            ("reference_pipeline_workers", "gauge", "Feldera's runtime_config.workers the process was given.",
             [({}, self.workers)]),
            ("reference_pipeline_checkpoints_written_total", "counter",
             "Checkpoints this process wrote (suspends and POST /checkpoint).", [({}, self.checkpoints_written)]),
            ("reference_pipeline_runtime_status", "gauge", "1 for the runtime status the process is in.",
             [({"status": self.status}, 1)]),
        ]
        if fmt == "json":
            body = [{"key": name, "type": kind, "description": text,
                     "values": [{"labels": labels, "value": value} for labels, value in values]}
                    for name, kind, text, values in metrics]
            return web.json_response(body)
        lines = []
        for name, kind, text, values in metrics:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in values:
                shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")
        # Exactly text/plain, as Feldera's pipeline answers (its SDK compares the header as a whole).
        return web.Response(body=("\n".join(lines) + "\n").encode(), headers={"Content-Type": "text/plain"})

    async def handle_checkpoint(self, request: web.Request) -> web.Response:
        """Feldera's ``POST /checkpoint``: a checkpoint of the storage, numbered; answered once written."""
        refused = self._no_controller()
        if refused is not None:
            return refused
        sequence = self.checkpoint_sequence
        self.checkpoint_sequence += 1
        try:
            checkpoint = await asyncio.to_thread(self.write_checkpoint)
        except OSError as exc:
            self.checkpoint_failure = {"sequence_number": sequence, "error": f"cannot write the checkpoint: {exc}",
                                       "failed_at": dt.datetime.now(dt.UTC).isoformat()}
            log.error("checkpoint %d failed: %s", sequence, exc)
        else:
            self.checkpoint_success = sequence
            log.info("checkpoint %d written (%s)", sequence, checkpoint["uuid"])
        return web.json_response({"checkpoint_sequence_number": sequence})  # c44's CheckpointResponse

    async def handle_checkpoint_status(self, request: web.Request) -> web.Response:
        return web.json_response({"success": self.checkpoint_success, "failure": self.checkpoint_failure})

    async def handle_checkpoint_sync(self, request: web.Request) -> web.Response:
        refused = self._no_controller()
        if refused is not None:
            return refused
        error = "the reference pipeline process has no object store to sync checkpoints to"
        return _error(400, f"Not supported: {error}", "NotSupported", {"error": error})

    async def handle_checkpoint_sync_status(self, request: web.Request) -> web.Response:
        refused = self._no_controller()
        if refused is not None:
            return refused
        return web.json_response({"success": None, "failure": None, "periodic": None})

    def _declared(self, name: str, kinds: tuple[str, ...]) -> bool:
        """Whether the program declares ``name`` among its ``kinds`` ("tables", "views"): an unquoted
        name in any case, a quoted one exactly, as Feldera resolves SQL identifiers."""
        wanted = _identifier(name)
        return any(_identifier(str(declared)) == wanted for kind in kinds for declared in self.program.get(kind) or [])

    async def handle_ingress(self, request: web.Request) -> web.Response:
        refused = self._no_controller()
        if refused is not None:
            return refused
        table = request.path[len("/ingress/"):]
        endpoint = f"{table}.api-ingress-{_shown(request.query.get('format', 'json'))}"
        if not self._declared(table, ("tables",)):
            return _error(404, f"invalid controller configuration: Input endpoint '{_shown(endpoint)}' specifies "
                               f"unknown table '{_shown(table)}'", "ConfigError.UnknownInputStream",
                          {"config_error": {"endpoint_name": _shown(endpoint), "stream_name": _shown(table)}})
        error = f"the reference pipeline process takes no input: table '{_shown(table)}' cannot be written to"
        return _error(400, f"Not supported: {error}", "NotSupported", {"error": error})

    async def handle_egress(self, request: web.Request) -> web.Response:
        refused = self._no_controller()
        if refused is not None:
            return refused
        view = request.path[len("/egress/"):]
        endpoint = f"{view}.api-{uuid.uuid4()}"
        if not self._declared(view, ("tables", "views")):
            return _error(404, f"invalid controller configuration: Output endpoint '{_shown(endpoint)}' specifies "
                               f"unknown output table or view '{_shown(view)}'", "ConfigError.UnknownOutputStream",
                          {"config_error": {"endpoint_name": _shown(endpoint), "stream_name": _shown(view)}})
        error = f"the reference pipeline process produces no output: '{_shown(view)}' has no changes to stream"
        return _error(400, f"Not supported: {error}", "NotSupported", {"error": error})

    async def handle_query(self, request: web.Request) -> web.StreamResponse:
        if self.debug_routes and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.handle_echo(request)
        refused = self._no_controller()
        if refused is not None:
            return refused
        error = "the reference pipeline process holds no data, so it evaluates no ad-hoc query"
        return _error(400, f"Error during query processing: {error}.", "AdHocQueryError", {"error": error})

    async def handle_echo(self, request: web.Request) -> web.StreamResponse:
        """With ``--debug-routes``: any path no other route serves, and a WebSocket ``/query``, answers what it
        received, so that a test sees what a proxy in front of the process passed on. HTTP: 200 with
        ``{"method", "path", "query", "content_type", "body", "authorized"}`` (the raw path and query string,
        the body as text, whether the control token came with it). WebSocket: the first message comes back (a
        text one as that JSON, its ``body`` the message; a binary one as it is), then the socket closes with
        ``?close_code=`` (1000) and ``?close_reason=``."""
        path, _, query = request.raw_path.partition("?")
        echo = {"method": request.method, "path": path, "query": query,
                "content_type": request.headers.get("Content-Type"), "authorized": self.authorized(request)}
        if request.headers.get("Upgrade", "").lower() != "websocket":
            body = await request.content.read(MAX_REQUEST_BODY)
            return web.json_response({**echo, "body": body.decode("utf-8", "replace")})
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        message = await socket_.receive()
        if message.type is WSMsgType.TEXT:
            await socket_.send_str(json.dumps({**echo, "body": message.data}))
        elif message.type is WSMsgType.BINARY:
            await socket_.send_bytes(message.data)
        code = request.query.get("close_code", "")
        await socket_.close(code=int(code) if code.isdigit() else WSCloseCode.OK,
                            message=request.query.get("close_reason", "").encode()[:100])
        return socket_

    async def handle_fail(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "panic")
        if mode == "exit":
            asyncio.get_running_loop().call_later(0.05, self.exit, 70)
            return web.json_response(None, status=202)
        if mode == "unavailable":  # /status answers 503, as a pipeline that cannot say how it is
            self.panic = {"message": "The pipeline is busy (reference pipeline told to be unavailable)",
                          "error_code": "PipelineBusy", "details": None, "http_status": 503}
            return web.json_response(None, status=202)
        if mode in ("garbage", "nested", "endless-header"):
            self.status_fault = mode
            return web.json_response(None, status=202)
        if mode == "available":
            self.panic = None
            self.status_fault = None
            self.broken = False
            return web.json_response(None, status=202)
        if mode == "broken":
            self.broken = True
            return web.json_response(None, status=202)
        if mode == "hang":
            self.hung = True  # this answer is the last one
            return web.json_response(None, status=202)
        if mode != "panic":
            return _error(400, "mode must be panic, exit, unavailable, garbage, nested, endless-header, broken, "
                               "available or hang",
                          "InvalidParameter")
        self.panic = {"message": "A worker thread panicked: reference pipeline told to fail",
                      "error_code": "WorkerPanic", "details": {"worker": 0}}
        return web.json_response(None, status=202)
