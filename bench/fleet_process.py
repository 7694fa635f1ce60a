"""Fleet mode of the reference pipeline process: many pipelines in one process, for benchmarks.

One process serves many reference pipelines (:mod:`pipeline_operator.feldera.pipeline_process`), each at a
loopback address of its own, registered and killed through a small HTTP API: what the fleet benchmark
(bench/fleet_bench.py) runs a thousand pipelines with on one small machine. A pipeline of a fleet behaves as
a process of its own does, except that its ``exit`` ends that pipeline only.

Run ``python bench/fleet_process.py PORT_FILE [--log-info]``: it listens on 127.0.0.1 at a free port, written
to PORT_FILE, until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline_operator.feldera.pipeline_process import ReferencePipeline, pipeline_from_env
from pipeline_operator.feldera.pipeline_process.main import _bound_socket, _listen
from pipeline_operator.feldera.pipeline_process.routes import _drop_connection, _error

log = logging.getLogger("pipeline_operator.feldera.pipeline_process")


FLEET_PIPELINE_PORT = 8080  # each pipeline's port, on its own address (a pipeline container's port)
FLEET_API_PATTERN = re.compile(r"/fleet/pipelines/([^/]+)/([^/]+)")


class Fleet:
    """Many reference pipelines in one process, each with the routes, token, storage, faults and knobs
    it would have as a process of its own, and an address of its own: ``http://127.a.b.c:8080``, one
    loopback address per pipeline (as each pod has its own IP; Linux routes all of 127.0.0.0/8 to the
    loopback interface), on the port of a pipeline's container. The addresses are drawn at random among
    those where nothing on this machine listens on that port (other fleets may run beside this one).

    It exists so that a benchmark can run a thousand pipelines on a small machine: a stand-in kubelet
    "starts a pod" by registering its pipeline and "kills" it by unregistering. Giving each pipeline
    its own address keeps what a client does per host (connection pools, limits per host) as it is
    with one process per pipeline. The registration API, served on the fleet's own address only, is for
    tests and benchmarks (it takes anyone's word for a pipeline's token and storage):

    - ``PUT /fleet/pipelines/<namespace>/<name>`` with the JSON ``{"storage": "<dir>", "program": {...},
      "initial": "running|paused|standby", "bootstrap_policy": "allow|await_approval|reject",
      "debug_routes": false, "env": {"PIPELINE_CONTROL_TOKEN": "...", ...}}``: the pod's arguments and
      environment. A pipeline registered again is replaced (its old instance ends as if killed) and
      keeps its address. 201 with ``{"address": "http://127.a.b.c:8080"}``.
    - ``DELETE /fleet/pipelines/<namespace>/<name>``: the pod is killed. 204, or 404 when unknown.
    - ``GET /fleet/pipelines``: ``{"<namespace>/<name>": {"address": ..., "listening": bool,
      "exit_code": int|null}}`` for every pipeline registered, including those that exited (the
      ``exit`` fault, ``PIPELINE_EXIT_AFTER_SECONDS``) until registered again or unregistered.

    A pipeline listens once its ``PIPELINE_BIND_DELAY_SECONDS`` have passed; killed or exited, its
    address refuses connections again and the connections it had are closed without an answer.
    """

    def __init__(self, host: str = "127.0.0.1", pipeline_port: int = FLEET_PIPELINE_PORT) -> None:
        self.host = host
        self.port = 0
        self.pipeline_port = pipeline_port
        self.runner: web.AppRunner | None = None
        self.pipelines: dict[str, ReferencePipeline] = {}  # "namespace/name" -> the running instance
        self.apps: dict[str, web.Application] = {}  # its routes, resolved per request
        self.addresses: dict[str, str] = {}  # "namespace/name" -> its IP, kept across registrations
        self.keys: dict[str, str] = {}  # IP -> "namespace/name"
        self.sites: dict[str, web.SockSite] = {}  # "namespace/name" -> its listening socket, while listening
        self.exit_codes: dict[str, int] = {}  # pipelines that exited, until registered again or removed
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._exiting: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0, port_file: Path | None = None) -> int:
        """Serve the registration API on ``host:port``; the bound port (also written to ``port_file``)."""
        app = web.Application(client_max_size=16 * 1024 * 1024)  # registrations carry a program
        app.router.add_route("*", "/{path:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = await _listen(self.runner, self.host, port, port_file)
        return self.port

    async def close(self) -> None:
        for key in list(self.pipelines):
            await self.unregister(key)
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, key: str) -> str:
        return f"http://{self.addresses[key]}:{self.pipeline_port}"

    def _free_address(self) -> str:
        """A loopback address (never 127.0.x.x) that no pipeline of this fleet has and where nothing listens
        on the pipelines' port."""
        while True:
            address = f"127.{random.randint(2, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            if address in self.keys:
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind((address, self.pipeline_port))  # without SO_REUSEADDR: fails if anything has it
            except OSError:
                continue
            finally:
                probe.close()
            return address

    async def register(self, key: str, config: dict[str, Any]) -> None:
        """Start the pipeline ``key`` ("namespace/name") as its pod's command line and environment say."""
        await self.unregister(key)
        env: dict[str, str] = {str(k): str(v) for k, v in (config.get("env") or {}).items()}
        storage = Path(config["storage"])
        await asyncio.to_thread(storage.mkdir, parents=True, exist_ok=True)
        pipeline = pipeline_from_env(
            storage, config.get("program") or {}, str(config.get("initial", "running")).capitalize(),
            str(config.get("bootstrap_policy", "allow")), bool(config.get("debug_routes", False)), env,
            exit=lambda code: self._exited(key, pipeline, code))
        if key not in self.addresses:
            self.addresses[key] = self._free_address()
            self.keys[self.addresses[key]] = key
        self.pipelines[key] = pipeline
        self.apps[key] = pipeline.app()
        self._starting[key] = asyncio.create_task(self._listen(key, pipeline, env))

    async def _listen(self, key: str, pipeline: ReferencePipeline, env: Mapping[str, str]) -> None:
        await asyncio.sleep(float(env.get("PIPELINE_BIND_DELAY_SECONDS", "0")))
        assert self.runner is not None
        site = web.SockSite(self.runner, _bound_socket(self.addresses[key], self.pipeline_port))
        await site.start()
        self.sites[key] = site
        pipeline.start()
        if env.get("PIPELINE_EXIT_AFTER_SECONDS"):
            await asyncio.sleep(float(env["PIPELINE_EXIT_AFTER_SECONDS"]))
            pipeline.exit(70)

    def _exited(self, key: str, pipeline: ReferencePipeline, code: int) -> None:
        async def exit_() -> None:
            if self.pipelines.get(key) is pipeline:
                await self.unregister(key)
                self.exit_codes[key] = code
        task = asyncio.get_running_loop().create_task(exit_())
        self._exiting.add(task)
        task.add_done_callback(self._exiting.discard)

    async def unregister(self, key: str) -> bool:
        """Kill the pipeline ``key``; whether it was registered."""
        self.exit_codes.pop(key, None)
        starting = self._starting.pop(key, None)
        if starting is not None and starting is not asyncio.current_task():
            starting.cancel()
        site = self.sites.pop(key, None)
        if site is not None:
            await site.stop()
        self.apps.pop(key, None)
        pipeline = self.pipelines.pop(key, None)
        if pipeline is None:
            return False
        pipeline.stop()
        return True

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """A pipeline's request (by the address it came to), or one of the registration API."""
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        local = sockname[0] if sockname else self.host
        if local == self.host:
            return await self.api(request)
        key = self.keys.get(local)
        pipeline, app = self.pipelines.get(key or ""), self.apps.get(key or "")
        if key is None or pipeline is None or app is None or key not in self.sites:
            return _drop_connection(request)  # a connection it had while it was alive
        match = await app.router.resolve(request)
        return await pipeline.guarded(request, request.path, match.http_exception is None, match.handler)

    async def api(self, request: web.Request) -> web.Response:
        if request.path == "/fleet/pipelines" and request.method == "GET":
            known: dict[str, dict[str, Any]] = {
                key: {"address": self.url(key), "listening": key in self.sites, "exit_code": None}
                for key in self.pipelines}
            known.update({key: {"address": self.url(key), "listening": False, "exit_code": code}
                          for key, code in self.exit_codes.items()})
            return web.json_response(known)
        found = FLEET_API_PATTERN.fullmatch(request.path)
        if found is None or request.method not in ("PUT", "DELETE"):
            return _error(404, f"{request.method} {request.path} is not part of the fleet's registration API",
                          "NotFound")
        key = f"{found[1]}/{found[2]}"
        if request.method == "DELETE":
            if not await self.unregister(key):
                return _error(404, f"no pipeline {key} is registered", "UnknownPipeline")
            return web.Response(status=204)
        try:
            await self.register(key, await request.json())
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return _error(400, f"cannot register {key}: {exc!r}; expected the JSON object of the fleet's "
                          "registration API (see bench/fleet_process.py)", "InvalidRegistration")
        return web.json_response({"address": self.url(key)}, status=201)


async def serve_fleet(host: str, port: int, port_file: Path | None = None) -> None:
    """Run a fleet (see :class:`Fleet`) until SIGTERM or SIGINT."""
    fleet = Fleet(host)
    bound = await fleet.start(port, port_file)
    log.info("reference pipeline fleet listening on %s:%s (pipelines on 127.a.b.c:%s)", host, bound,
             fleet.pipeline_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fleet.close()


if __name__ == "__main__":
    given = [a for a in sys.argv[1:] if a != "--log-info"]
    if len(given) != 1:
        sys.exit("usage: python bench/fleet_process.py PORT_FILE [--log-info]")
    if "--log-info" in sys.argv[1:]:
        logging.basicConfig(level=logging.INFO)
    asyncio.run(serve_fleet("127.0.0.1", 0, Path(given[0])))
