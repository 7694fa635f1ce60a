"""The reference pipeline as a process: configured by its environment and its ``PipelineConfig`` file, run
as a Feldera pipeline binary is run (``pipeline-operator pipeline-process``), listening on its address and
writing its port file, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from .routes import DEBUG_ROUTES_ENV, TOKEN_ENV, ReferencePipeline

log = logging.getLogger("pipeline_operator.feldera.pipeline_process")


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
    from ..launch import PORT_FILE, reference_program
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
