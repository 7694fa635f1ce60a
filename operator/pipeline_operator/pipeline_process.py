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
- it can be told to fail, for tests and demos: ``POST /debug/fail?mode=panic`` makes
  ``/status`` answer 500 with an ErrorResponse (as a panicked Feldera pipeline does),
  ``mode=exit`` makes the process exit with code 70, ``mode=unavailable`` makes ``/status`` answer
  503 (``mode=available`` ends that).

Environment knobs (set them in ``spec.deployment.env``): ``PIPELINE_INIT_SECONDS``
(default 1), ``PIPELINE_REPLAY_SECONDS`` (1), ``PIPELINE_SUSPEND_SECONDS`` (0.5),
``PIPELINE_REQUIRE_APPROVAL`` (``1`` to wait in AwaitingApproval), ``PIPELINE_BIND_DELAY_SECONDS``
(0: how long the process takes before it listens, like a slow container start),
``PIPELINE_STOP_DELAY_SECONDS`` (0: how long it takes to stop after SIGTERM),
``PIPELINE_DETAILS_TICK_SECONDS`` (0: off; else a counter in the runtime details advances that
often, so details change without any status change), ``PIPELINE_DETAILS_BYTES`` (0: padding
added to the runtime details, to test the size cap), ``PIPELINE_EXIT_AFTER_SECONDS`` (off: the
process exits with code 70 that long after it starts, to show a crash-looping pod).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("pipeline_operator.pipeline_process")

CHECKPOINT_DIR = "checkpoints"


def _error(status: int, message: str, code: str, details: Any = None) -> web.Response:
    return web.json_response({"message": message, "error_code": code, "details": details}, status=status)


class ReferencePipeline:
    def __init__(self, storage: Path, program: dict[str, Any], initial: str,
                 init_seconds: float = 1.0, replay_seconds: float = 1.0, suspend_seconds: float = 0.5,
                 require_approval: bool = False, details_tick: float = 0.0, details_bytes: int = 0,
                 bootstrap_policy: str = "allow") -> None:
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
        self.status = "Initializing"
        self.details_extra: dict[str, Any] = {}
        self.desired = initial
        self.panic: dict[str, Any] | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self._task: asyncio.Task[None] | None = None

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
                      "program_digest": self.program.get("digest"), "steps": len(self.checkpoints()) + 1}
        tmp = folder / f".{checkpoint['uuid']}.tmp"
        tmp.write_text(json.dumps(checkpoint))
        tmp.replace(folder / f"{checkpoint['uuid']}.json")
        return checkpoint

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._boot())

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
        if self.checkpoints():
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
            "storage_status_details": {"checkpoints": self.checkpoints()},
        }

    # -- HTTP --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/status", self.handle_status)
        app.router.add_get("/pause", self.handle_pause)
        app.router.add_get("/start", self.handle_start)
        app.router.add_post("/suspend", self.handle_suspend)
        app.router.add_post("/activate", self.handle_activate)
        app.router.add_post("/approve", self.handle_approve)
        app.router.add_post("/debug/fail", self.handle_fail)
        return app

    async def handle_status(self, request: web.Request) -> web.Response:
        if self.panic is not None:
            body = {k: v for k, v in self.panic.items() if k != "http_status"}
            return web.json_response(body, status=self.panic.get("http_status", 500))
        return web.json_response(self.status_body())

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
            asyncio.create_task(self._suspend())
        return response

    async def handle_activate(self, request: web.Request) -> web.Response:
        raw = request.query.get("initial", "running")
        target = {"running": "Running", "paused": "Paused"}.get(raw)
        if target is None:
            return _error(400, f"Invalid activation status {raw} (only running and paused are valid)",
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

    async def handle_fail(self, request: web.Request) -> web.Response:
        mode = request.query.get("mode", "panic")
        if mode == "exit":
            asyncio.get_running_loop().call_later(0.05, os._exit, 70)
            return web.json_response(None, status=202)
        if mode == "unavailable":  # /status answers 503, as a pipeline that cannot say how it is
            self.panic = {"message": "The pipeline is busy (reference pipeline told to be unavailable)",
                          "error_code": "PipelineBusy", "details": None, "http_status": 503}
            return web.json_response(None, status=202)
        if mode == "available":
            self.panic = None
            return web.json_response(None, status=202)
        if mode != "panic":
            return _error(400, "mode must be panic, exit, unavailable or available", "InvalidParameter")
        self.panic = {"message": "A worker thread panicked: reference pipeline told to fail",
                      "error_code": "WorkerPanic", "details": {"worker": 0}}
        return web.json_response(None, status=202)


async def serve(host: str, port: int, storage: Path, program_file: Path | None, initial: str,
                port_file: Path | None = None, bootstrap_policy: str = "allow") -> None:
    # Start-up, before the server accepts a request: nothing else runs on the loop yet.
    storage.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    program = json.loads(program_file.read_text()) if program_file else {}  # noqa: ASYNC240
    env = os.environ
    pipeline = ReferencePipeline(
        storage, program, initial,
        init_seconds=float(env.get("PIPELINE_INIT_SECONDS", "1")),
        replay_seconds=float(env.get("PIPELINE_REPLAY_SECONDS", "1")),
        suspend_seconds=float(env.get("PIPELINE_SUSPEND_SECONDS", "0.5")),
        require_approval=env.get("PIPELINE_REQUIRE_APPROVAL", "") == "1",
        details_tick=float(env.get("PIPELINE_DETAILS_TICK_SECONDS", "0")),
        details_bytes=int(env.get("PIPELINE_DETAILS_BYTES", "0")),
        bootstrap_policy=bootstrap_policy)
    await asyncio.sleep(float(env.get("PIPELINE_BIND_DELAY_SECONDS", "0")))
    runner = web.AppRunner(pipeline.app(), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    bound = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        tmp.replace(port_file)
    log.info("reference pipeline listening on %s:%s (initial %s, storage %s)", host, bound, initial, storage)
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
    await runner.cleanup()
