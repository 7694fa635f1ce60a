"""A pipeline's data plane through the operator's API: its logs, and the requests passed through to the
pipeline (``/stats``, ``/metrics``, ``/checkpoint``, ``/ingress``, ...) as Feldera's manager passes them.

The narrow cases (a pipeline that answers garbage, redirects, times out or cuts its answer; bodies past
the bound; the stream limits) run against the API's handlers in this process and real HTTP servers on
loopback. The users' sequences run with Feldera's unmodified SDK against real operators: one with the
local backend, one with the Kubernetes backend on the real API server, whose ``pods/log`` the API
server reads from a node's kubelet: here a stand-in serving the logs the stand-in kubelet's processes
write."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
import yarl
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from feldera import FelderaClient, Pipeline
from feldera.enums import PipelineStatus
from feldera.rest.errors import FelderaAPIError
from feldera.rest.retry import RetryConfig

from pipeline_operator.api import ApiDeps, ApiServer, Metrics
from pipeline_operator.api import interaction as interaction_module
from pipeline_operator.api.openapi import document
from pipeline_operator.backends.kubernetes import child_name
from pipeline_operator.backends.local import LocalBackend, _proc_start_time
from pipeline_operator.core.lifecycle import PipelineState
from pipeline_operator.feldera.pipeline_process import ReferencePipeline
from pipeline_operator.feldera.runtime_client import RuntimeClient
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import ResourcesDesiredStatus, ResourcesStatus, RuntimeStatus
from pipeline_operator_dev.controlplane import free_port

from .fake_kubelet import FakeKubelet
from .operator_harness import wait_for
from .test_api import feldera_client, grant, http_json
from .test_api_unit import Registry
from .test_kubernetes_backend import RBAC, k8s_operator  # noqa: F401 - k8s_operator: a fixture
from .test_models import schema_validator
from .test_operator_lifecycle import FAST_PIPELINE, SQL, debug_fail

TOKEN = "token-of-the-pipeline"
KEY = PipelineKey("ns", "p", "uid-p")
RUNNING = PipelineState(deployment_resources_status=ResourcesStatus.PROVISIONED,
                        deployment_resources_desired_status=ResourcesDesiredStatus.PROVISIONED,
                        deployment_runtime_status=RuntimeStatus.RUNNING)
PASSED_THROUGH = [("GET", "stats"), ("GET", "metrics"), ("POST", "checkpoint"), ("GET", "checkpoint_status"),
                  ("POST", "checkpoint/sync"), ("GET", "checkpoint/sync_status"), ("POST", "ingress/orders"),
                  ("POST", "egress/total"), ("GET", "query?sql=select+1&format=text")]


# -- in this process: the API's handlers, real HTTP servers on loopback --------------------------------


class Served:
    """One pipeline as the API serves it, in the state a test gives it."""

    def __init__(self, state: PipelineState | None) -> None:
        self.key = KEY
        self.obj = {"metadata": {"name": KEY.name, "uid": KEY.uid}, "status": {}}
        self.state = state
        self.pokes = 0

    def adopt(self, obj: Any) -> None:
        pass

    def poke(self) -> None:
        self.pokes += 1

    def metrics_sample(self) -> None:
        return None

    def forwarding(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def settled(self) -> None:
        pass

    async def wait_until(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        return self.state is not None


def api(endpoint: str | None, state: PipelineState | None = RUNNING, logs: Any = None) -> ApiServer:
    deps = ApiDeps(pipelines=Registry({("ns", "p"): Served(state)}), events=None, kube=None,  # type: ignore[arg-type]
                   endpoint=lambda key: endpoint, runtime=RuntimeClient(token_for=lambda e: TOKEN),
                   artifact=lambda digest: None, metrics=Metrics(), logs=logs)
    return ApiServer(deps, auth="none", default_namespace="ns")


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a loopback port: its base URL (requests still under way at the end are cancelled at once)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def through(server: ApiServer) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(server.app())) as client:
        yield client


def reference(tmp_path: Path) -> ReferencePipeline:
    return ReferencePipeline(tmp_path / "storage", {"digest": "d1", "tables": ["orders"], "views": ["total"]},
                             "Running", init_seconds=0, replay_seconds=0, control_token=TOKEN, debug_routes=True)


def test_each_route_is_passed_through_with_the_pipelines_token_its_query_and_its_answer(tmp_path):
    pipeline = reference(tmp_path)
    seen: list[tuple[str, str, str | None]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append((request.method, request.path_qs, request.headers.get("Authorization")))
        return await handler(request)

    async def scenario() -> dict[str, tuple[int, str, Any]]:
        pipeline.start()
        app = pipeline.app()
        app.middlewares.append(record)
        answers = {}
        async with serving(app) as url:
            server = api(url)
            async with through(server) as client:
                for method, route in PASSED_THROUGH:
                    response = await client.request(method, f"/v0/pipelines/p/{route}", data=b"{}" if
                                                    route.startswith("ingress") else None,
                                                    headers={"Authorization": "Bearer the-clients-own"})
                    body = await response.read()
                    answers[route] = (response.status, response.content_type,
                                      json.loads(body) if response.content_type == "application/json" else body)
            monitor = server.deps.pipelines.get("ns", "p")
            answers["pokes"] = (monitor.pokes, "", None)  # type: ignore[union-attr]
        return answers

    answers = asyncio.run(scenario())
    # Every route reached the pipeline, at the same path and query, with the pipeline's token, never the client's.
    assert [(m, p) for m, p, _ in seen] == [(m, f"/{r}") for m, r in PASSED_THROUGH]
    assert {token for _, _, token in seen} == {f"Bearer {TOKEN}"}
    status, content_type, stats = answers["stats"]
    assert status == 200 and stats["global_metrics"]["state"] == "Running" and stats["inputs"] == []
    assert answers["metrics"][:2] == (200, "text/plain") and b"process_resident_memory_bytes" in answers["metrics"][2]
    assert answers["checkpoint"][2]["checkpoint_sequence_number"] == 0
    assert answers["checkpoint_status"][2] == {"success": 0, "failure": None}
    assert (tmp_path / "storage" / "checkpoints").is_dir()
    # The pipeline's answers are Feldera c44a2456a's shapes, with no field of a later Feldera's.
    for route, schema in (("stats", "ControllerStatus"), ("checkpoint", "CheckpointResponse"),
                          ("checkpoint_status", "CheckpointStatus"), ("checkpoint/sync_status", "CheckpointSyncStatus"),
                          ("checkpoint/sync", "ErrorResponse")):
        schema_validator(schema).validate(answers[route][2])
    # The pipeline's own errors come back as it gave them.
    assert answers["checkpoint/sync"][:1] == (400,) and answers["checkpoint/sync"][2]["error_code"] == "NotSupported"
    assert answers["ingress/orders"][2]["error_code"] == "NotSupported"
    assert answers["egress/total"][2]["error_code"] == "NotSupported"
    assert answers["query?sql=select+1&format=text"][:1] == (400,)
    assert answers["query?sql=select+1&format=text"][2]["error_code"] == "AdHocQueryError"
    assert answers["pokes"][0] == 2  # /checkpoint and /checkpoint_status: the loop looks again (Feldera's notify)


# Query strings as clients send them, percent-encoded: each must reach the pipeline byte for byte.
HOSTILE_QUERIES = [
    # The ad-hoc query of the issue: %25 must not arrive as %, %23 must not end the query (and lose format=json).
    urllib.parse.urlencode({"sql": "SELECT * FROM t WHERE s LIKE '%abc%' OR s = 'x#y'", "format": "json"}),
    urllib.parse.urlencode({"sql": "SELECT * FROM t WHERE s LIKE '%abc%' OR s = 'x#y'", "format": "json"},
                           quote_via=urllib.parse.quote),
    "a=%00&b=+&c=%2B&d=%20&a=again&a=",  # NUL, a plus and an encoded plus, a space, repeated and empty keys
    "x=%FF%FE%C3&y=%e9",  # percent-escapes that are not UTF-8 (upper and lower case)
    "x=%zz&y=%&z=%2",  # malformed escapes, passed on as they are
    "flag&k=v;w&%26=%3D&?=/",  # a key without a value, a semicolon, an encoded & and =, a literal ? and /
]


def test_a_passed_through_query_string_reaches_the_pipeline_exactly_as_the_client_sent_it():
    """An echoing pipeline answers the raw path and query it received; every passed-through route, asked
    through the API with hostile query strings, must have received exactly what the client sent."""
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"received": request.raw_path})

    async def scenario() -> list[tuple[str, str, int, Any]]:
        pipeline = web.Application()
        pipeline.router.add_route("*", "/{tail:.*}", echo)
        seen = []
        async with serving(pipeline) as url, serving(api(url).app()) as base, ClientSession() as session:
            for method, route in PASSED_THROUGH:
                path = route.split("?")[0]
                for query in HOSTILE_QUERIES:
                    target = yarl.URL(f"{base}/v0/pipelines/p/{path}?{query}", encoded=True)
                    async with session.request(method, target, data=b"1" if path.startswith("ingress") else None
                                               ) as response:
                        seen.append((f"/{path}", query, response.status, await response.json()))
        return seen

    for path, query, status, body in asyncio.run(scenario()):
        assert status == 200, (path, query, body)
        assert body == {"received": f"{path}?{query}"}, (path, query)


SCRIPT = b"<html><script>fetch('/v0/pipelines', {method: 'DELETE'})</script></html>"


def test_a_hostile_pipelines_answer_cannot_script_the_apis_origin():
    """A pipeline answers whatever content type it is asked for (``?type=``), with a script as its body: only the
    types Feldera's pipeline answers on that route are kept, anything else is an opaque download, and every
    passed-through answer (forwarded actions too) tells the browser not to sniff and not to run anything."""
    async def hostile(request: web.Request) -> web.Response:
        # A forwarded action's query is the operator's own: those answer a refusal, in HTML or JSON.
        query = {"/pause": {"type": "text/html", "status": "400"},
                 "/activate": {"type": "application/json", "status": "400"}}.get(request.path, request.query)
        headers = {"Content-Type": query["type"]} if "type" in query else {}
        return web.Response(status=int(query.get("status", "200")), body=SCRIPT, headers=headers)

    cases = [  # (method, route, the pipeline's content type, its status, what the client gets)
        ("GET", "stats", "text/html", 200, "application/octet-stream"),
        ("GET", "stats", "text/html; charset=utf-8", 400, "application/octet-stream"),
        ("GET", "stats", "text/plain", 200, "application/octet-stream"),  # /stats answers JSON
        ("GET", "stats", "text/plain; charset=utf-8", 400, "text/plain; charset=utf-8"),  # an error as actix's
        ("GET", "stats", "application/json; charset=UTF-8", 200, "application/json; charset=utf-8"),
        ("GET", "stats", None, 200, "application/octet-stream"),
        ("GET", "metrics", "text/plain; version=0.0.4; charset=utf-8", 200, "text/plain; charset=utf-8"),
        ("GET", "metrics", "image/svg+xml", 200, "application/octet-stream"),
        ("GET", "metrics", "text/plain; charset=utf-7", 200, "text/plain"),
        ("POST", "checkpoint", "application/xhtml+xml", 200, "application/octet-stream"),
        ("POST", "ingress/orders", "text/javascript", 200, "application/octet-stream"),
        ("POST", "egress/total", "text/event-stream", 200, "application/octet-stream"),
        ("GET", "query", "text/html", 200, "application/octet-stream"),
        ("GET", "query", "application/octet-stream", 200, "application/octet-stream"),
        ("GET", "query", "text/plain", 200, "text/plain"),
        ("POST", "pause", "text/html", 400, "application/octet-stream"),  # a forwarded action
        ("POST", "activate", "application/json", 400, "application/json"),
    ]

    async def scenario() -> list[tuple[int, str, dict[str, str], bytes]]:
        pipeline = web.Application()
        pipeline.router.add_route("*", "/{tail:.*}", hostile)
        answers = []
        async with serving(pipeline) as url, through(api(url)) as client:
            for method, route, content_type, status, _ in cases:
                query = {"status": str(status), **({"type": content_type} if content_type else {})}
                response = await client.request(method, f"/v0/pipelines/p/{route}", params=query)
                answers.append((response.status, response.headers.get("Content-Type", ""), dict(response.headers),
                                await response.read()))
        return answers

    for case, (status, content_type, headers, body) in zip(cases, asyncio.run(scenario()), strict=True):
        assert (status, content_type) == (case[3], case[4]), case
        assert headers["X-Content-Type-Options"] == "nosniff", case
        assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox", case
        assert body == SCRIPT, case  # the body itself is passed on as it is


def test_a_pipeline_not_deployed_or_unavailable_is_refused_with_felderas_errors():
    stopping = PipelineState(deployment_resources_status=ResourcesStatus.STOPPING,
                             deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED)
    unavailable = RUNNING.model_copy(update={"deployment_runtime_status": RuntimeStatus.UNAVAILABLE})

    async def scenario(state: PipelineState) -> list[tuple[int, dict]]:
        async with through(api("http://127.0.0.1:9", state)) as client:
            answers = []
            for method, route in PASSED_THROUGH:
                response = await client.request(method, f"/v0/pipelines/p/{route}")
                answers.append((response.status, await response.json()))
            return answers

    for status, body in asyncio.run(scenario(stopping)):
        assert status == 503 and body == {
            "message": "Unable to interact with pipeline because the deployment status (stopping) indicates it is not "
                       "(yet) fully provisioned (pipeline: 'p')",
            "error_code": "PipelineInteractionNotDeployed",
            "details": {"pipeline_name": "p", "status": "Stopping", "desired_status": "Stopped"}}
    for status, body in asyncio.run(scenario(unavailable)):
        assert (status, body["error_code"]) == (503, "PipelineUnavailable")


def test_a_pipeline_that_answers_garbage_redirects_times_out_or_is_gone_gives_feldera_errors(tmp_path, monkeypatch):
    pipeline = reference(tmp_path)
    monkeypatch.setattr(interaction_module, "ROUTES", tuple(
        dataclasses.replace(r, timeout=0.5) if r.path == "stats" else r for r in interaction_module.ROUTES))

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.json_response({})

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"# TYPE half_of_an_answer gauge\n")
        assert request.transport is not None
        request.transport.abort()
        return response

    async def scenario() -> dict[str, Any]:
        pipeline.start()
        answers: dict[str, Any] = {}
        async with serving(pipeline.app()) as url:
            async with through(api(url)) as client:
                async with ClientSession() as session:
                    await session.post(f"{url}/debug/fail?mode=broken", headers={"Authorization": f"Bearer {TOKEN}"})
                response = await client.get("/v0/pipelines/p/stats")
                answers["broken"] = (response.status, await response.json())
        odd = web.Application()
        odd.router.add_get("/stats", slow)
        odd.router.add_post("/checkpoint", redirect)
        odd.router.add_get("/metrics", cut)
        async with serving(odd) as url:
            async with through(api(url)) as client:
                for route, method in (("stats", "GET"), ("checkpoint", "POST")):
                    response = await client.request(method, f"/v0/pipelines/p/{route}")
                    answers[route] = (response.status, await response.json())
                response = await client.get("/v0/pipelines/p/metrics")
                try:
                    answers["metrics"] = (response.status, await response.read())
                except Exception as exc:  # noqa: BLE001 - what the client makes of a cut body
                    answers["metrics"] = (response.status, exc)
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()  # nothing listens there
        async with through(api(f"http://127.0.0.1:{port}")) as client:
            response = await client.get("/v0/pipelines/p/stats")
            answers["gone"] = (response.status, await response.json())
        return answers

    answers = asyncio.run(scenario())
    for case in ("broken", "stats", "gone"):
        status, body = answers[case]
        assert status == 503 and body["error_code"] == "PipelineInteractionUnreachable", (case, body)
        assert set(body["details"]) == {"pipeline_name", "request", "error"} and body["details"]["request"] == \
            "GET /stats", (case, body)
        assert body["message"].startswith("Error sending HTTP request to pipeline: ") and "(pipeline: 'p')" in \
            body["message"]
    assert answers["broken"][1]["details"]["error"].startswith("the pipeline's answer is not valid HTTP")
    assert "Cannot connect" in answers["gone"][1]["details"]["error"]
    assert answers["stats"][1]["details"]["error"].startswith("timeout (0.5s) was reached")
    assert answers["checkpoint"][0] == 500
    assert answers["checkpoint"][1]["error_code"] == "PipelineInteractionInvalidResponse"
    assert "redirect (HTTP 302)" in answers["checkpoint"][1]["message"]
    assert "169.254" not in json.dumps(answers["checkpoint"][1])
    # An answer cut in the middle is cut for the client too: never taken for a complete one.
    assert answers["metrics"][0] == 200 and isinstance(answers["metrics"][1], Exception)


def test_an_ingress_body_past_the_bound_is_refused_and_never_reaches_the_pipeline_whole(monkeypatch):
    limit = 256 * 1024
    monkeypatch.setattr(interaction_module, "ROUTES", tuple(
        dataclasses.replace(r, max_body=limit) if r.path.startswith("ingress") else r
        for r in interaction_module.ROUTES))
    received: list[int] = []

    async def ingress(request: web.Request) -> web.Response:
        size = 0
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
        finally:
            received.append(size)
        return web.json_response({"token": f"{request.headers.get('Content-Type')}:{size}"})

    async def chunked(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // (64 * 1024)):
            yield b"x" * (64 * 1024)

    async def scenario() -> dict[str, Any]:
        pipeline = web.Application(client_max_size=1 << 30)
        pipeline.router.add_post("/ingress/{table}", ingress)
        answers = {}
        async with serving(pipeline) as url:
            async with through(api(url)) as client:
                fits = await client.post("/v0/pipelines/p/ingress/orders?format=csv", data=b"1,2\n" * 1000,
                                         headers={"Content-Type": "text/csv"})
                answers["fits"] = (fits.status, await fits.json())
                declared = await client.post("/v0/pipelines/p/ingress/orders", data=b"x",
                                             headers={"Content-Length": str(10 ** 12)}, skip_auto_headers=())
                answers["declared"] = (declared.status, await declared.json())
                streamed = await client.post("/v0/pipelines/p/ingress/orders", data=chunked(4 * limit))
                answers["streamed"] = (streamed.status, await streamed.json())
        return answers

    answers = asyncio.run(scenario())
    assert answers["fits"] == (200, {"token": "text/csv:4000"})
    for case in ("declared", "streamed"):
        status, body = answers[case]
        assert status == 413 and body["error_code"] == "PayloadTooLarge" and body["details"] == {"limit_bytes": limit}
        assert "/ingress" in body["message"] and "smaller requests" in body["message"]
    # The declared one never left the operator; the streamed one was cut at the bound.
    assert received[0] == 4000 and len(received) == 2 and received[1] <= limit + 64 * 1024


def test_streams_are_bounded_per_client_and_end_when_the_api_stops():
    opened: list[str] = []

    @contextlib.asynccontextmanager
    async def endless(key: PipelineKey, follow: bool) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first line\n"
            await asyncio.Event().wait()  # a pipeline that writes nothing more, for ever
            yield b""
        opened.append(key.name)
        yield chunks()

    async def scenario() -> tuple[list[int], dict, float, bytes]:
        server = api(None, logs=endless)
        async with through(server) as client:
            streams = [await client.get("/v0/pipelines/p/logs") for _ in range(interaction_module.STREAMS_PER_CLIENT)]
            for s in streams:
                assert await s.content.readline() == b"first line\n"
            refused = await client.get("/v0/pipelines/p/logs")
            body = await refused.json()
            started = time.monotonic()
            server.follow.closing = True  # what ApiServer.stop() sets first
            rest = b""
            try:
                rest = await streams[0].content.read()
            except Exception:  # noqa: BLE001 - a cut connection: the end the test expects
                pass
            return [s.status for s in streams] + [refused.status], body, time.monotonic() - started, rest

    statuses, body, took, rest = asyncio.run(scenario())
    assert statuses == [200] * interaction_module.STREAMS_PER_CLIENT + [429]
    assert body["error_code"] == "TooManyStreams" and body["details"] == {"limit": 4}
    assert took < interaction_module.CLOSING_CHECK_SECONDS + 2 and b"Logs have ended" not in rest


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


def test_the_local_backend_replays_the_tail_of_the_log_then_follows_it_across_runs_until_it_is_removed(tmp_path):
    backend = LocalBackend(tmp_path)
    key = PipelineKey("ns", "p", "uid-p")
    folder = backend.folder(key)
    folder.mkdir(parents=True)
    log = folder / "process.log"
    log.write_bytes(b"".join(b"old line %06d\n" % i for i in range(1000)))  # 16,000 bytes
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (folder / "compute.json").write_text(json.dumps({"pid": process.pid, "start_time": _proc_start_time(process.pid)}))

    async def scenario() -> tuple[bytes, bytes]:
        async with backend.logs(key, follow=True, replay=1000, poll=0.05) as chunks:
            seen = b""
            source = aiter(chunks)
            while b"old line 000999\n" not in seen:
                seen += await anext(source)
            await asyncio.to_thread(append, log, b"new line\nunfinished")  # the process writes on
            while b"unfinished" not in seen:
                seen += await anext(source)
            await asyncio.to_thread(append, log, b" line, and its last words\n")
            process.kill()
            process.wait()
            while b"last words\n" not in seen:
                seen += await anext(source)
            pending = asyncio.ensure_future(anext(source))  # a stop does not end it ...
            await asyncio.sleep(0.3)
            assert not pending.done()
            await asyncio.to_thread(append, log, b"the next run\n")  # ... the next run goes on in it
            seen += await pending
            while b"the next run\n" not in seen:
                seen += await anext(source)
            async with backend.logs(key, follow=False) as whole_chunks:
                whole = b"".join([chunk async for chunk in whole_chunks])
            await asyncio.to_thread(log.unlink)  # the pipeline is deleted: the stream ends
            rest = b"".join([chunk async for chunk in source])
        return seen + rest, whole

    try:
        followed, whole = asyncio.run(scenario())
    finally:
        process.kill()
    first, _, shown = followed.partition(b"\n")
    assert first.startswith(b"... 15008 bytes of earlier log lines are not shown")
    assert shown.startswith(b"old line 000938\n") and shown.endswith(
        b"new line\nunfinished line, and its last words\nthe next run\n")
    assert whole == b"".join(b"old line %06d\n" % i for i in range(1000)) + \
        b"new line\nunfinished line, and its last words\nthe next run\n"
    missing = PipelineKey("ns", "never-started", "uid-n")

    async def nothing() -> bytes:
        async with backend.logs(missing, follow=False) as chunks:
            return b"".join([chunk async for chunk in chunks])
    assert asyncio.run(nothing()) == b""

    async def first_run() -> bytes:  # followed, a pipeline that never ran: its first run's log
        async with backend.logs(missing, follow=True, poll=0.05) as chunks:
            source = aiter(chunks)
            pending = asyncio.ensure_future(anext(source))
            await asyncio.sleep(0.2)
            assert not pending.done()
            backend.folder(missing).mkdir(parents=True)
            await asyncio.to_thread(append, backend.folder(missing) / "process.log", b"first words\n")
            seen = await pending
            await asyncio.to_thread((backend.folder(missing) / "process.log").unlink)
            return seen + b"".join([chunk async for chunk in source])
    assert asyncio.run(first_run()) == b"first words\n"


# -- real operators, Feldera's SDK ------------------------------------------------------------------


def sdk_client(op: Any, cluster: Any, namespace: str, user: str = "alice") -> FelderaClient:
    """Feldera's SDK as ``user``, failing at once (no retries of a 503: the tests check the first answer)."""
    wait_for("the API", lambda: http_json(f"{op.api_url}/readyz")[0] == 200, 30, operator=op)
    return feldera_client(op.api_url, cluster.plane.users[user].token, namespace, timeout=60,
                         retry_config=RetryConfig(max_retries=0))


def feldera_error(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
    with pytest.raises(FelderaAPIError) as err:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)  # a generator asks when it is first read
    return err.value.status_code, err.value.error_code, err.value.message


def raw(op: Any, cluster: Any, namespace: str, method: str, route: str, user: str = "alice") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {cluster.plane.users[user].token}", "Feldera-Tenant": namespace}
    return http_json(f"{op.api_url}/v0/pipelines/orders/{route}", method, headers, b"" if method == "POST" else None)


def read_until(lines: Iterator[str], needle: str, seen: list[str]) -> None:
    for line in lines:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"the log ended before a line with {needle!r}: {seen[-5:]}")


@pytest.mark.apiserver
def test_feldera_sdk_reads_logs_stats_metrics_and_checkpoints_through_the_operator(
        operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace)
    grant(cluster, namespace, "alice", "get,list,watch,create,update,patch,delete")
    grant(cluster, namespace, "bob", "get,list")
    uid = pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                      "deployment": {"env": FAST_PIPELINE}})["metadata"]["uid"]
    kstatus.track(namespace, "orders")
    pipelines.wait_status("orders", op, deploymentStatus="Running")
    client = sdk_client(op, cluster, namespace)
    pipeline = Pipeline.get("orders", client)

    # The log as the SDK reads it: the process's output so far, then what it writes while it is followed.
    logs = client.get_pipeline_logs("orders")
    seen: list[str] = []
    read_until(logs, "reference pipeline listening", seen)

    stats = pipeline.stats()
    assert stats.global_metrics.state is PipelineStatus.RUNNING and stats.inputs == [] and stats.outputs == []
    raw_stats = client.get_pipeline_stats("orders")
    schema_validator("ControllerStatus", document()).validate(raw_stats)
    assert raw_stats["global_metrics"]["total_input_records"] == 0 and raw_stats["global_metrics"]["rss_bytes"] > 0
    # The SDK of this line reads no /metrics (fda's `metrics` does): read as fda reads it.
    request = urllib.request.Request(f"{op.api_url}/v0/pipelines/orders/metrics", headers={
        "Authorization": f"Bearer {cluster.plane.users['alice'].token}", "Feldera-Tenant": namespace})
    with urllib.request.urlopen(request, timeout=10) as answer:
        metrics = answer.read().decode()
    assert "process_resident_memory_bytes" in metrics and \
        'reference_pipeline_runtime_status{status="Running"} 1' in metrics
    code, json_metrics = raw(op, cluster, namespace, "GET", "metrics?format=json")
    assert code == 200 and {m["key"] for m in json_metrics} >= {"storage_usage_bytes"}

    sequence = pipeline.checkpoint(wait=True, timeout_s=30)
    assert client.checkpoint_pipeline_status("orders") == {"success": sequence, "failure": None}
    incarnation = client.get_pipeline_stats("orders")["global_metrics"]["incarnation_uuid"]
    assert raw(op, cluster, namespace, "GET", f"checkpoint_status?incarnation_uuid={incarnation}") == \
        (200, {"success": sequence, "failure": None})
    # Feldera c44's /checkpoint_status takes no parameter: another incarnation's id is not looked at.
    assert raw(op, cluster, namespace, "GET", f"checkpoint_status?incarnation_uuid={uuid.uuid4()}") == \
        (200, {"success": sequence, "failure": None})
    folder = LocalBackend(op.state_dir).folder(PipelineKey(namespace, "orders", uid))
    assert len(list((folder / "storage" / "checkpoints").glob("*.json"))) == 1
    read_until(logs, f"checkpoint {sequence} written", seen)  # written after the log was asked for

    # The pipeline's own errors, as it gave them.
    assert feldera_error(client.push_to_pipeline, "orders", "orders", "json", [{"id": 1, "amount": 2}])[:2] == \
        (400, "NotSupported")
    assert feldera_error(client.push_to_pipeline, "orders", "nope", "json", [{"id": 1}])[:2] == \
        (404, "ConfigError.UnknownInputStream")
    assert feldera_error(client.query_as_text, "orders", "SELECT * FROM total")[:2] == (400, "AdHocQueryError")

    # Reads are Feldera's Role::Read (get), everything else an action (patch).
    assert raw(op, cluster, namespace, "GET", "stats", "bob")[0] == 200
    assert raw(op, cluster, namespace, "GET", "checkpoint_status", "bob")[0] == 200
    for method, route in (("POST", "checkpoint"), ("POST", "ingress/orders"), ("GET", "query?sql=1")):
        assert raw(op, cluster, namespace, method, route, "bob")[0] == 403, route

    # A client that announces a body past the bound is refused before anything reaches the pipeline.
    with socket.create_connection(("127.0.0.1", op.api_port), timeout=10) as s:
        s.sendall(f"POST /v0/pipelines/orders/ingress/orders?format=json HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {cluster.plane.users['alice'].token}\r\nFeldera-Tenant: {namespace}\r\n"
                  f"Content-Length: {10 ** 12}\r\n\r\n".encode())
        answer = s.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413") and "PayloadTooLarge" in answer and "Connection: close" in answer

    # A process that answers bytes that are not HTTP: Feldera's error, not a failure of the operator.
    debug_fail(op, namespace, "orders", uid, "broken")
    code, error_code, message = feldera_error(client.get_pipeline_stats, "orders")
    debug_fail(op, namespace, "orders", uid, "available")
    assert (code, error_code) == (503, "PipelineInteractionUnreachable") and "not valid HTTP" in message

    # The log the SDK follows goes on across a stop and the next start, as Feldera's runner's does.
    client.stop_pipeline("orders", force=True, timeout_s=60)
    time.sleep(1.5)  # stopped for a while (the log is looked at every half second)
    client.start_pipeline("orders", timeout_s=60)
    again: list[str] = []
    read_until(logs, "reference pipeline listening", again)  # the next run's first words, in the same stream
    assert "Logs have ended" not in again
    client.stop_pipeline("orders", force=True, timeout_s=60)

    for method, route in PASSED_THROUGH:
        status, body = raw(op, cluster, namespace, method, route.replace("total", "orders"))
        assert (status, body["error_code"]) == (503, "PipelineInteractionNotDeployed"), route
        assert body["details"] == {"pipeline_name": "orders", "status": "Stopped", "desired_status": "Stopped"}
    assert feldera_error(pipeline.stats)[:2] == (503, "PipelineInteractionNotDeployed")
    # A stopped pipeline's log is what its runs wrote, followed too; both streams end when it is deleted.
    stopped = client.get_pipeline_logs("orders")
    read_until(stopped, f"checkpoint {sequence} written", [])
    assert feldera_error(client.get_pipeline_logs, "nope")[:2] == (404, "UnknownPipelineName")
    client.clear_storage("orders")
    kstatus.verify()  # as it was, before it goes
    kstatus.tracked.pop((namespace, "orders"))
    client.delete_pipeline("orders")
    started = time.monotonic()
    assert list(stopped)[-1] == "Logs have ended" and list(logs)[-1] == "Logs have ended"
    assert time.monotonic() - started < 10
    op.assert_alive()
    assert "Traceback" not in op.log()


class NodeKubelet:
    """A node's kubelet, as far as logs go: the API server's ``pods/log`` asks the pod's node at its
    ``kubeletEndpoint`` for ``GET /containerLogs/{namespace}/{pod}/{container}`` over TLS (this API server
    has no kubelet CA, so it does not verify the certificate). It serves the output the stand-in kubelet
    writes for each pod's process, following it (``follow=true``) until the process is gone."""

    def __init__(self, kubelet: FakeKubelet, certificate: Path, key: Path) -> None:
        self.kubelet = kubelet
        self.requests: list[str] = []
        self.closing = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                _, _, namespace, pod, _container = url.path.split("/")
                sts = pod.rsplit("-", 1)[0]
                log = outer.kubelet.workdir / "pods" / sts / "log"
                follow = urllib.parse.parse_qs(url.query).get("follow") == ["true"]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with open(log, "rb") as f:
                    while True:
                        chunk = f.read(65536)
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                            continue
                        process = outer.kubelet.processes.get(sts)
                        if not follow or process is None or process.poll() is not None or outer.closing.is_set():
                            break
                        time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.apiserver
def test_the_kubernetes_backend_streams_the_pods_log_through_the_api_server(
        k8s_operator, pipelines, namespace, cluster, kubelet, kstatus):  # noqa: F811
    role = yaml.safe_load((RBAC / "role.yaml").read_text())
    assert {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]} in role["rules"]  # deploy/ grants it
    # The API's own authentication needs TokenReviews (the Role has none to give): not what is tested here.
    op = k8s_operator(yaml.safe_dump(role), "--api-auth", "none", "--api-default-namespace", namespace)
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
    pki = cluster.plane.workdir / "pki"
    node_kubelet = NodeKubelet(kubelet, pki / "apiserver.crt", pki / "apiserver.key")
    node = f"node-{namespace}"[:63]
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})

    def kubelet_at(port: int) -> None:
        core.patch_node_status(node, {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                                 "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
    kubelet_at(node_kubelet.port)
    try:
        uid = pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                          "deployment": {"env": FAST_PIPELINE}})["metadata"]["uid"]
        kstatus.track(namespace, "orders", expect="Current")
        pod = f"{child_name(PipelineKey(namespace, 'orders', uid))}-0"
        wait_for("the pod", lambda: pod in [p.metadata.name for p in core.list_namespaced_pod(namespace).items], 30,
                 operator=op)

        def bind() -> None:  # what the scheduler does: the pod goes to the node (whose kubelet serves its logs)
            core.create_namespaced_pod_binding(pod, namespace, {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, _preload_content=False)
        bind()
        first_pod = core.read_namespaced_pod(pod, namespace).metadata.uid
        pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=40)
        client = sdk_client(op, cluster, namespace)

        logs = client.get_pipeline_logs("orders")
        seen: list[str] = []
        read_until(logs, "reference pipeline listening", seen)
        sequence = client.checkpoint_pipeline("orders")
        read_until(logs, f"checkpoint {sequence} written", seen)  # followed: written after the log was asked for
        assert node_kubelet.requests == [f"/containerLogs/{namespace}/{pod}/pipeline?follow=true&tailLines=50000"]

        # The API server cannot reach the node's kubelet: a clear error, and the operator goes on.
        kubelet_at(free_port())
        code, error_code, message = feldera_error(client.get_pipeline_logs, "orders")
        assert (code, error_code) == (503, "RunnerInteractionUnreachable") and \
            f"could not read the logs of pod {namespace}/{pod}" in message, message

        # The operator may not read pods/log: as clear.
        cluster.apply({**role, "metadata": {**role["metadata"], "namespace": namespace},
                       "rules": [r for r in role["rules"] if "pods/log" not in r["resources"]]})

        def refused() -> Any:
            answer = raw(op, cluster, namespace, "GET", "logs")
            return answer if answer[0] == 503 and "may not get pods/log" in answer[1]["message"] else None
        status, body = wait_for("RBAC to refuse pods/log", refused, 10, operator=op)
        assert body["error_code"] == "RunnerInteractionUnreachable"
        cluster.apply({**role, "metadata": {**role["metadata"], "namespace": namespace}})

        # The container ends, the pipeline stops and starts again: the log the SDK follows goes on with the next
        # pod's, as Feldera's runner's goes on across a stop; it ends when the pipeline is deleted.
        kubelet_at(node_kubelet.port)
        client.stop_pipeline("orders", force=True, timeout_s=60)
        client.start_pipeline("orders", wait=False)

        def next_pod() -> bool:
            try:
                return core.read_namespaced_pod(pod, namespace).metadata.uid != first_pod
            except kubernetes.client.ApiException:  # not made yet
                return False
        wait_for("the next pod", next_pod, 30, interval=0.05, operator=op)
        bind()
        pipelines.wait_status("orders", op, deploymentStatus="Running", timeout=40)
        again: list[str] = []
        read_until(logs, "reference pipeline listening", again)
        assert "Logs have ended" not in again and len(node_kubelet.requests) == 2, node_kubelet.requests
        client.stop_pipeline("orders", force=True, timeout_s=60)
        client.clear_storage("orders")
        kstatus.verify()  # as it was, before it goes
        kstatus.tracked.pop((namespace, "orders"))
        client.delete_pipeline("orders")
        assert list(logs)[-1] == "Logs have ended"
        op.assert_alive()
        assert "Traceback" not in op.log()
    finally:
        node_kubelet.close()
        core.delete_node(node)


def test_a_forwarded_runtime_action_holds_the_loop_until_the_spec_names_it():
    """/pause and /resume are forwarded to the pipeline, then kept in the spec (runtimeDesiredStatus) so that the
    loop holds the pipeline there. Between the two the pipeline already reports the new status while the spec
    still names the old one: the loop, woken by the forward, must not put it back. The API holds the loop's own
    forwarding (``forwarding()``) from before the forward until the spec's write is adopted."""
    served = Served(RUNNING)
    held = 0
    seen: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def forwarding() -> Iterator[None]:
        nonlocal held
        held += 1
        try:
            yield
        finally:
            held -= 1
    served.forwarding = forwarding  # type: ignore[method-assign]

    class KubeClient:
        async def merge_patch_pipeline(self, namespace: str, name: str, body: dict, manager: str) -> dict:
            seen.append((f"spec {body['spec']['runtimeDesiredStatus']}", held))
            return served.obj

    async def pause(request: web.Request) -> web.Response:
        seen.append((request.path, held))
        return web.json_response({"message": "pausing"}, status=202)

    async def scenario() -> int:
        pipeline = web.Application()
        pipeline.router.add_get("/pause", pause)
        async with serving(pipeline) as url:
            server = api(url)
            server.deps.pipelines = Registry({("ns", "p"): served})  # type: ignore[assignment]
            server.deps.kube = KubeClient()  # type: ignore[assignment]
            async with through(server) as client:
                return (await client.post("/v0/pipelines/p/pause")).status

    assert asyncio.run(scenario()) == 202
    assert seen == [("/pause", 1), ("spec Paused", 1)] and held == 0


def test_the_loop_forwards_no_runtime_desired_status_while_the_api_forwards_one():
    from pipeline_operator.core.lifecycle import Action, ActionKind
    from pipeline_operator.models import SpecRuntimeDesiredStatus
    from pipeline_operator.reconcile.reconciler import PipelineMonitor

    sent: list[str] = []

    class Runtime:
        async def set_runtime_desired(self, endpoint: str, target: Any, activate: bool) -> bool:
            sent.append(target.value)
            return True

    ctx = types.SimpleNamespace(backend=types.SimpleNamespace(endpoint=lambda key: "http://127.0.0.1:1"),
                                runtime=Runtime())
    monitor = PipelineMonitor(ctx, KEY)  # type: ignore[arg-type]
    pause = [Action(kind=ActionKind.SET_RUNTIME_DESIRED, target=SpecRuntimeDesiredStatus.PAUSED)]

    async def scenario() -> None:
        with monitor.forwarding():
            await monitor.act(pause, None, None)  # type: ignore[arg-type]
        assert sent == []
        await monitor.act(pause, None, None)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert sent == ["Paused"]


def test_a_pipeline_the_operator_cannot_read_is_refused_with_invalid_pipeline_not_a_server_error():
    """A Pipeline nested deeper than the operator decodes (marked by jsondepth), or whose stored spec its schema
    now refuses (stored before the CRD bounded it), is reported by its loop and left alone: the API shows and
    does nothing with it but says why (409 InvalidPipeline), never a 500."""
    from pipeline_operator import jsondepth

    deep, legacy = Served(RUNNING), Served(RUNNING)
    deep.obj = {"metadata": {"name": "p", "uid": KEY.uid, jsondepth.UNDECODABLE: "spec.runtimeConfig.a.a: too deep"},
                "spec": {}, "status": {}}
    legacy.obj = {"metadata": {"name": "p", "uid": KEY.uid}, "spec": {"runtimeConfig": {"workers": "many"}},
                  "status": {}}

    async def scenario(served: Served) -> list[tuple[int, str]]:
        server = api("http://127.0.0.1:1")
        server.deps.pipelines = Registry({("ns", "p"): served})  # type: ignore[assignment]
        answers = []
        async with through(server) as client:
            for method, path in (("GET", "/v0/pipelines/p"), ("POST", "/v0/pipelines/p/start"),
                                 ("POST", "/v0/pipelines/p/pause")):
                response = await client.request(method, path)
                answers.append((response.status, (await response.json())["error_code"]))
        return answers

    for served, shown in ((deep, "spec.runtimeConfig.a.a"), (legacy, "spec.runtimeConfig.workers")):
        assert asyncio.run(scenario(served)) == [(409, "InvalidPipeline")] * 3, shown


def test_a_refusal_of_the_kubernetes_api_server_is_a_502_naming_it_not_a_silence():
    """The API server answered (here a 500 to a server-side apply of an object it stored before its CRD was
    typed): the client learns what it said, as a 502 KubernetesError, not 503 'did not answer'."""
    from kubernetes.client.exceptions import ApiException

    class KubeClient:
        async def merge_patch_pipeline(self, namespace: str, name: str, body: dict, manager: str) -> dict:
            refusal = ApiException(status=500, reason="Internal Server Error")
            refusal.body = json.dumps({"kind": "Status", "message": "failed to create typed patch object"})
            raise refusal

    async def pause(request: web.Request) -> web.Response:
        return web.json_response({}, status=202)

    async def scenario() -> tuple[int, dict]:
        pipeline = web.Application()
        pipeline.router.add_get("/pause", pause)
        async with serving(pipeline) as url:
            server = api(url)
            server.deps.kube = KubeClient()  # type: ignore[assignment]
            async with through(server) as client:
                response = await client.post("/v0/pipelines/p/pause")
                return response.status, await response.json()

    status, body = asyncio.run(scenario())
    assert (status, body["error_code"], body["details"]) == (502, "KubernetesError", {"status": 500})
    assert "failed to create typed patch object" in body["message"]
