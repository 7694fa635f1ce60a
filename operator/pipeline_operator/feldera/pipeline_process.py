"""The reference pipeline process: the pipeline side of Feldera's runtime HTTP contract.

It is the default workload of both backends. It does not process data; it behaves, over
HTTP and on disk, as a Feldera pipeline does through its lifecycle:

- ``GET /status`` answers Feldera's ExtendedRuntimeStatus (``runtime_status``,
  ``runtime_desired_status``, ``runtime_status_details``, ``storage_status_details``);
- it starts in Initializing, goes through Replaying when its storage holds a checkpoint, then
  to its initial status (Running, Paused or Standby);
- when its program differs from the one its newest checkpoint was written by, its views must be
  bootstrapped, and it follows ``--bootstrap-policy`` as Feldera's pipeline does: ``allow``
  bootstraps (Bootstrapping), ``await_approval`` waits in AwaitingApproval (with the
  ``approval_diff``) for ``POST /approve``, ``reject`` fails with ``BootstrapRejected``;
- ``GET /pause``, ``GET /start``, ``POST /activate``, ``POST /approve`` and ``POST /suspend``
  change its desired status as Feldera's pipeline does (``state_transition``,
  ``may_transition_to``), with Feldera's answers and errors;
- on suspend it writes a checkpoint into its storage directory, then reports Suspended;
- ``POST /checkpoint`` writes one too and answers Feldera c44's ``{"checkpoint_sequence_number": N}`` once
  it is written; ``GET /checkpoint_status`` answers Feldera's
  ``{"success": N, "failure": ...}`` (c44's takes no parameter: an ``incarnation_uuid`` is ignored);
  ``GET /checkpoint/sync_status`` says that nothing was synced, and
  ``POST /checkpoint/sync`` answers ``NotSupported`` (there is no object store to sync to);
- ``GET /stats`` answers Feldera's ``ControllerStatus`` with what the process really has: its
  state, whether it bootstraps, its uptime, start time, incarnation, time spent Running, its
  memory, CPU time and storage, and no connectors. It processes no data, so its record and step
  counters are zero, as a Feldera pipeline's are before its first input. ``GET /metrics`` answers
  the same figures in Prometheus' text format (``?format=json``: Feldera's JSON format), named as
  Feldera names them where Feldera has them, plus the checkpoints written and the runtime status.
  Both answer Feldera's ``Initializing``, ``AwaitingApproval`` or ``Suspended`` (503) while a
  Feldera pipeline would have no controller to ask, and the panic's error after a panic; in fleet
  mode the process figures (memory, CPU) are the fleet process's, shared by its pipelines;
- the data routes answer Feldera's errors: ``POST /ingress/{table}`` and ``POST /egress/{view}``
  ``ConfigError.UnknownInputStream`` and ``ConfigError.UnknownOutputStream`` (404) for a name the
  program does not declare, ``NotSupported`` (400) for one it does (the process takes no input and
  produces no output), and ``GET /query`` ``AdHocQueryError`` (400: it holds no data to query);
- the control routes (``/start``, ``/pause``, ``/activate``, ``/suspend``, ``/approve``,
  ``POST /checkpoint``, ``POST /checkpoint/sync``, ``/debug/*``) and the data routes
  (``/ingress/*``, ``/egress/*``, ``/query``) require ``Authorization: Bearer <token>`` when the
  environment variable ``PIPELINE_CONTROL_TOKEN`` is set (the backends set it; 401
  ``AuthenticationFailed`` otherwise). Without it they are open, for a process run by hand, and the
  process warns so at start. The reads (``/status``, ``/stats``, ``/metrics``, the checkpoint
  statuses) stay open (a NetworkPolicy limits who reaches the process);
- with ``--debug-routes``, a path no route serves (and a WebSocket ``/query``) echoes the request it got
  (:meth:`ReferencePipeline.handle_echo`), for tests of what a proxy passes on;
- it can be told to fail, for tests and demos, when started with ``--debug-routes`` (or
  ``PIPELINE_DEBUG_ROUTES=1``; otherwise ``/debug/*`` answers 404). ``POST /debug/fail?mode=``:

  - ``panic`` (the default): ``/status`` answers 500 with an ErrorResponse, as a panicked Feldera
    pipeline does, and so do the actions;
  - ``exit``: the process exits with code 70;
  - ``unavailable``: ``/status`` answers 503 ``PipelineBusy``;
  - ``garbage``: ``/status`` answers 200 with bytes that are not JSON (nor even UTF-8);
  - ``nested``: ``/status`` answers 200 with JSON nested 100,000 levels deep;
  - ``endless-header``: ``/status`` answers a status line and then one header field whose value never
    ends: bytes are sent, as fast as the client reads them, until it closes the connection (or the
    fault ends);
  - ``available``: ends ``panic``, ``unavailable``, ``garbage``, ``nested``, ``endless-header`` and
    ``broken``;
  - ``hang``: from the answer to this request on, the process answers nothing at all (it still
    accepts connections; requests on them, and on connections already open, wait forever) until
    it is stopped or killed;
  - ``broken``: every route but ``/debug/*`` answers bytes that are not HTTP, then closes the
    connection, as a process that lost its mind (or something else on its port) does.

Environment knobs (set them in ``spec.deployment.env``): ``PIPELINE_INIT_SECONDS``
(default 1), ``PIPELINE_REPLAY_SECONDS`` (1), ``PIPELINE_SUSPEND_SECONDS`` (0.5),
``PIPELINE_REQUIRE_APPROVAL`` (``1`` to wait in AwaitingApproval), ``PIPELINE_BIND_DELAY_SECONDS``
(0: how long the process takes before it listens, like a slow container start),
``PIPELINE_STOP_DELAY_SECONDS`` (0: how long it takes to stop after SIGTERM),
``PIPELINE_DETAILS_TICK_SECONDS`` (0: off; else a counter in the runtime details advances that
often, so details change without any status change), ``PIPELINE_DETAILS_BYTES`` (0: padding
added to the runtime details, to test the size cap), ``PIPELINE_EXIT_AFTER_SECONDS`` (off: the
process exits with code 70 that long after it starts, to show a crash-looping pod).

In fleet mode (``bench/fleet_process.py``, benchmark tooling) one process serves many such pipelines,
each at a loopback address of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import resource
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger("pipeline_operator.feldera.pipeline_process")

CHECKPOINT_DIR = "checkpoints"
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


def checkpoint_metadata(checkpoint: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A checkpoint as Feldera's pipeline reports it in its status (``CheckpointMetadata``): its uuid, no name,
    the circuit's fingerprint (a u64; here of the program the checkpoint was written by), the size of its files,
    its steps and the records processed (none: the reference pipeline processes no data)."""
    name = str(checkpoint.get("uuid") or "")
    try:
        size: int | None = (folder / f"{name}.json").stat().st_size
    except (OSError, ValueError):
        size = None
    digest = hashlib.sha256(str(checkpoint.get("program_digest") or "").encode()).digest()
    return {"uuid": name, "identifier": None, "fingerprint": int.from_bytes(digest[:8], "big"), "size": size,
            "steps": checkpoint.get("steps"), "processed_records": 0}


class ReferencePipeline:
    def __init__(self, storage: Path, program: dict[str, Any], initial: str,
                 init_seconds: float = 1.0, replay_seconds: float = 1.0, suspend_seconds: float = 0.5,
                 require_approval: bool = False, details_tick: float = 0.0, details_bytes: int = 0,
                 bootstrap_policy: str = "allow", control_token: str | None = None,
                 debug_routes: bool = False, exit: Callable[[int], Any] = os._exit) -> None:
        self.storage = storage
        self.program = program
        self.initial = initial
        self.init_seconds = init_seconds
        self.replay_seconds = replay_seconds
        self.suspend_seconds = suspend_seconds
        self.require_approval = require_approval
        self.details_tick = details_tick
        self.details_bytes = details_bytes
        self.bootstrap_policy = bootstrap_policy
        self.control_token = control_token.encode() if control_token else None
        self.debug_routes = debug_routes
        self.status_fault: str | None = None  # "garbage", "nested" or "endless-header": what /status answers instead
        self.hung = False  # the "hang" fault: no request is answered any more
        self.broken = False  # the "broken" fault: every route but /debug answers bytes that are not HTTP
        self.exit = exit  # how the process "exits" with a code (in a fleet: only this pipeline ends)
        self.gone = asyncio.Event()  # set when a fleet stops serving this pipeline: hung requests end
        self._status = "Initializing"
        self._status_since = time.monotonic()
        self._running_seconds = 0.0  # time spent Running before the current status
        self.details_extra: dict[str, Any] = {}
        self.desired = initial
        self.panic: dict[str, Any] | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self.incarnation_uuid = uuid.uuid4()  # this process (Feldera's: it tells a restart apart)
        self.resumed_from: dict[str, Any] | None = None  # the checkpoint it replayed, if any
        self.checkpoint_sequence = 0  # of the next POST /checkpoint (Feldera numbers them from 0)
        self.checkpoint_success: int | None = None
        self.checkpoint_failure: dict[str, Any] | None = None
        self.checkpoints_written = 0  # by this process: suspends and POST /checkpoint
        self.workers = 8  # Feldera's runtime_config.workers, as the operator gave it (no worker threads run)
        self._storage_sample: tuple[float, int] | None = None  # (monotonic time, bytes) of the last read
        self._storage_mb_secs = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        """Every change of the runtime status goes through here, so the time spent Running is known."""
        now = time.monotonic()
        if self._status == "Running":
            self._running_seconds += now - self._status_since
        self._status, self._status_since = value, now

    def running_seconds(self) -> float:
        """Time spent Running since the process started (Feldera's ``runtime_elapsed_msecs``)."""
        current = time.monotonic() - self._status_since if self._status == "Running" else 0.0
        return self._running_seconds + current

    # -- storage -----------------------------------------------------------------------

    def checkpoints(self) -> list[dict[str, Any]]:
        folder = self.storage / CHECKPOINT_DIR
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda c: c.get("created_at", ""))

    def write_checkpoint(self) -> dict[str, Any]:
        folder = self.storage / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = {"uuid": str(uuid.uuid4()), "created_at": dt.datetime.now(dt.UTC).isoformat(),
                      "program_digest": self.program.get("digest"), "steps": len(self.checkpoints()) + 1,
                      # Feldera's initial_start_time: a process resumed from this checkpoint started then.
                      "initial_start_time": self.initial_start_time()}
        tmp = folder / f".{checkpoint['uuid']}.tmp"
        tmp.write_text(json.dumps(checkpoint))
        tmp.replace(folder / f"{checkpoint['uuid']}.json")
        self.checkpoints_written += 1
        return checkpoint

    def initial_start_time(self) -> int:
        """When the process this one resumed from started (its own start when it resumed from nothing)."""
        resumed = (self.resumed_from or {}).get("initial_start_time")
        return resumed if isinstance(resumed, int) else int(self.started_at.timestamp())

    def storage_bytes(self) -> int:
        """Bytes of the files under the storage directory (blocking: run it in a thread)."""
        total = 0
        for folder, _, files in os.walk(self.storage):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue  # removed meanwhile
        return total

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._boot())

    def stop(self) -> None:
        """End it at once, as SIGKILL ends its process: no task of it runs on, hung requests end."""
        for task in self._tasks:
            task.cancel()
        self.gone.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def program_diff(self) -> dict[str, Any] | None:
        """What changed since the newest checkpoint (None: nothing to bootstrap)."""
        checkpoints = self.checkpoints()
        digest = self.program.get("digest")
        if self.require_approval:
            return {"program_diff": {"reason": "PIPELINE_REQUIRE_APPROVAL is set"}}
        if checkpoints and checkpoints[-1].get("program_digest") not in (None, digest):
            return {"program_diff": {"previous_program": checkpoints[-1].get("program_digest"),
                                     "program": digest, "views_to_bootstrap": self.program.get("views", [])}}
        return None

    async def _boot(self) -> None:
        await asyncio.sleep(self.init_seconds)
        checkpoints = self.checkpoints()
        if checkpoints:
            self.resumed_from = checkpoints[-1]
            self.status = "Replaying"
            await asyncio.sleep(self.replay_seconds)
        diff = self.program_diff()
        if diff is not None:
            if self.bootstrap_policy == "reject":
                self.panic = {"message": "Bootstrapping of the modified pipeline was rejected by the user.",
                              "error_code": "BootstrapRejected", "details": None, "http_status": 409}
                return
            if self.bootstrap_policy == "await_approval":
                self.status = "AwaitingApproval"
                self.details_extra = {"approval_diff": diff}
                # The reference pipeline polls its own plain attributes, set by the HTTP handlers (a test double).
                while self.bootstrap_policy == "await_approval":  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                self.details_extra = {}
            self.status = "Bootstrapping"
            await asyncio.sleep(self.replay_seconds)
        self._settle()

    def _settle(self) -> None:
        if self.desired == "Suspended":
            return
        self.status = {"Running": "Running", "Paused": "Paused", "Standby": "Standby"}[self.desired]

    async def _suspend(self) -> None:
        await asyncio.sleep(self.suspend_seconds)
        self.write_checkpoint()
        self.status = "Suspended"

    def status_body(self) -> dict[str, Any]:
        details: dict[str, Any] = {"reason": None, "connector_stats": {"num_errors": 0}, **self.details_extra}
        if self.details_tick > 0:
            elapsed = (dt.datetime.now(dt.UTC) - self.started_at).total_seconds()
            details["tick"] = int(elapsed / self.details_tick)
        if self.details_bytes > 0:
            details["padding"] = "x" * self.details_bytes
        return {
            "runtime_status": self.status,
            "runtime_status_details": details,
            "runtime_desired_status": self.desired,
            "storage_status_details": {"checkpoints": [checkpoint_metadata(c, self.storage / CHECKPOINT_DIR)
                                                       for c in self.checkpoints()]},
        }

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

    def _may_transition_to(self, target: str) -> bool:
        """Feldera's ``may_transition_to``: same -> same, Standby -> Paused|Running,
        Paused|Running -> each other or Suspended."""
        current = self.desired
        return current == target or (current == "Standby" and target in ("Paused", "Running")) or (
            current in ("Paused", "Running") and target in ("Paused", "Running", "Suspended"))

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

    def _sample_storage(self, size: int) -> None:
        """Fold the storage's size into Feldera's ``storage_mb_secs`` (integrated between reads)."""
        now = time.monotonic()
        if self._storage_sample is not None:
            then, before = self._storage_sample
            self._storage_mb_secs += (before + size) / 2 / 1e6 * (now - then)
        self._storage_sample = (now, size)

    async def figures(self) -> dict[str, Any]:
        """What the process really knows of itself, as Feldera's ``GlobalControllerMetrics``."""
        storage = await asyncio.to_thread(self.storage_bytes)
        self._sample_storage(storage)
        cpu = os.times()
        return {
            "state": "Running" if self.desired == "Running" else "Paused",
            "bootstrap_in_progress": self.status == "Bootstrapping",
            "transaction_status": "NoTransaction", "transaction_id": 0,
            "transaction_initiators": {"transaction_id": None, "initiated_by_api": None,
                                       "initiated_by_connectors": {}},
            "rss_bytes": _rss_bytes(), "memory_pressure": "low", "memory_pressure_epoch": 0,
            "cpu_msecs": int((cpu.user + cpu.system) * 1000),
            "uptime_msecs": int((dt.datetime.now(dt.UTC) - self.started_at).total_seconds() * 1000),
            "start_time": int(self.started_at.timestamp()), "incarnation_uuid": str(self.incarnation_uuid),
            "initial_start_time": self.initial_start_time(),
            "storage_bytes": storage, "storage_mb_secs": int(self._storage_mb_secs),
            "runtime_elapsed_msecs": int(self.running_seconds() * 1000),
            # It takes no input and runs no steps: every data counter is zero, and it is complete
            # (Feldera's pipeline_complete: every input at its end, every record processed).
            "buffered_input_records": 0, "buffered_input_bytes": 0, "total_input_records": 0,
            "total_input_bytes": 0, "total_processed_records": 0, "total_processed_bytes": 0,
            "total_completed_records": 0, "output_stall_msecs": 0, "total_initiated_steps": 0,
            "total_completed_steps": 0, "pipeline_complete": True,
        }

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


def _identifier(name: str) -> str:
    """A SQL name as Feldera compares it: a quoted name as written, any other in lower case."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1]
    return name.lower()


def _rss_bytes() -> int:
    """The process's resident memory (Linux: /proc; elsewhere its peak, all the standard library knows)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pipeline_from_env(storage: Path, program: dict[str, Any], initial: str, bootstrap_policy: str,
                      debug_routes: bool, env: Mapping[str, str],
                      exit: Callable[[int], Any] = os._exit) -> ReferencePipeline:
    """A reference pipeline configured by its environment (the knobs of the module docstring, the
    control token, ``PIPELINE_DEBUG_ROUTES``), as both a process of its own and a fleet build one."""
    return ReferencePipeline(
        storage, program, initial,
        init_seconds=float(env.get("PIPELINE_INIT_SECONDS", "1")),
        replay_seconds=float(env.get("PIPELINE_REPLAY_SECONDS", "1")),
        suspend_seconds=float(env.get("PIPELINE_SUSPEND_SECONDS", "0.5")),
        require_approval=env.get("PIPELINE_REQUIRE_APPROVAL", "") == "1",
        details_tick=float(env.get("PIPELINE_DETAILS_TICK_SECONDS", "0")),
        details_bytes=int(env.get("PIPELINE_DETAILS_BYTES", "0")),
        bootstrap_policy=bootstrap_policy, control_token=env.get(TOKEN_ENV) or None,
        debug_routes=debug_routes or env.get(DEBUG_ROUTES_ENV, "") == "1", exit=exit)


def _bound_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def _listen(runner: web.AppRunner, host: str, port: int, port_file: Path | None) -> int:
    """Serve ``runner`` on ``host:port`` (0: any free port); the bound port, also written to ``port_file``
    (followed by a newline, as a Feldera pipeline writes it), through a temporary file."""
    await runner.setup()
    sock = _bound_socket(host, port)
    site = web.SockSite(runner, sock)
    await site.start()
    bound: int = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{bound}\n")  # noqa: ASYNC240 - a few bytes, before any request is served
        tmp.replace(port_file)
    return bound


def read_pipeline_config(config_file: Path) -> dict[str, Any]:
    """The ``PipelineConfig`` of ``--config-file``, read as a Feldera pipeline reads it: a ``.yaml`` file's
    ``.json`` sibling when there is one (this process reads YAML only in its JSON-compatible form)."""
    json_file = config_file.with_suffix(".json")
    path = json_file if config_file.suffix != ".json" and json_file.exists() else config_file
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a PipelineConfig is a JSON object")
    return config


async def serve(config_file: Path, bind_address: str, initial: str, deployment_id: str,
                bootstrap_policy: str = "allow", silent_bootstrap: bool = False, default_port: int | None = None,
                debug_routes: bool = False) -> None:
    """Run the process until SIGTERM or SIGINT, as a Feldera pipeline binary is run: its ``PipelineConfig``
    from ``config_file`` (storage directory, workers, program), listening on ``bind_address``
    (``default_port``, else any free port), the port written into ``port`` in the working directory.
    ``debug_routes`` (or ``PIPELINE_DEBUG_ROUTES=1``) serves ``/debug/*``; ``PIPELINE_CONTROL_TOKEN`` is the
    token of the control routes."""
    from .launch import PORT_FILE, reference_program
    # Start-up, before the server accepts a request: nothing else runs on the loop yet.
    config = read_pipeline_config(config_file)
    storage_config = config.get("storage_config") or {}
    storage = Path(str(storage_config.get("path") or Path.cwd() / "storage"))
    storage.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    program = reference_program(config)
    workers = int(config.get("workers", 8))
    env = os.environ
    token = env.get(TOKEN_ENV) or None
    if token is None:
        log.warning("%s is not set: /start, /pause, /activate, /suspend, /approve, /checkpoint, /ingress, /egress, "
                    "/query and /debug answer anyone who reaches this process (set it to require "
                    "'Authorization: Bearer <token>')", TOKEN_ENV)
    pipeline = pipeline_from_env(storage, program, initial, bootstrap_policy, debug_routes, env)
    pipeline.workers = workers
    await asyncio.sleep(float(env.get("PIPELINE_BIND_DELAY_SECONDS", "0")))
    runner = web.AppRunner(pipeline.app(), access_log=None)
    bound = await _listen(runner, bind_address, default_port or 0, Path(PORT_FILE))
    log.info("reference pipeline listening on %s:%s (pipeline %s, initial %s, %s workers, bootstrap policy %s%s, "
             "storage %s, deployment %s)", bind_address, bound, config.get("given_name"), initial, workers,
             bootstrap_policy, ", silent bootstrap" if silent_bootstrap else "", storage, deployment_id)
    if env.get("PIPELINE_EXIT_AFTER_SECONDS"):
        asyncio.get_running_loop().call_later(float(env["PIPELINE_EXIT_AFTER_SECONDS"]), os._exit, 70)
    pipeline.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # PIPELINE_STOP_DELAY_SECONDS: how long it takes to stop (a slow shutdown, to observe Stopping).
    await asyncio.sleep(float(env.get("PIPELINE_STOP_DELAY_SECONDS", "0")))
    if pipeline.hung:
        return  # no graceful shutdown: it would wait for the hung requests (they end with the loop)
    await runner.cleanup()
