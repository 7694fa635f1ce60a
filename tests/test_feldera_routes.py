"""Every route of Feldera's API at the version the operator matches (its openapi.json, c44a2456a) answers:
passed through to the pipeline where Feldera's manager passes it (with its method, path, query and body, and
the pipeline's answer back), served by the operator where Feldera's manager serves it, a JSON 501 where
Kubernetes rules it out, and a JSON 404, never a bare one, for a path Feldera does not have.

Everything runs in this process: the API's handlers, the reference pipeline (with its echo of what it was
sent) or a scripted pipeline on loopback, and Feldera's unmodified SDK against them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import urllib.parse
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import ClientSession, WSMsgType, web
from feldera.rest.errors import FelderaAPIError

from pipeline_operator.api import interaction as interaction_module
from pipeline_operator.api.openapi import document
from pipeline_operator.api.server import ApiServer
from pipeline_operator.core.lifecycle import PipelineState
from pipeline_operator.models import ProgramStatus, ResourcesDesiredStatus, ResourcesStatus

from .test_api import feldera_client
from .test_interaction import RUNNING, api, reference, serving, through

C44_OPENAPI = Path(__file__).resolve().parents[1] / "operator" / "pipeline_operator" / "data" / "feldera-openapi.json"
STOPPED = PipelineState(deployment_resources_status=ResourcesStatus.STOPPED,
                        deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED)

# (client's method, path below /v0/pipelines/p/ with its query, body) -> (the pipeline's method, path, query),
# and the RBAC verb: as Feldera's manager forwards each (crates/pipeline-manager/src/api/endpoints/
# pipeline_interaction.rs). Reads of the pipeline's state are `get`; what acts on the pipeline or its data is
# `patch`, the verb of the lifecycle actions. A connector is the pipeline's endpoint "table.connector": the table
# as a SQL identifier (lower-cased unless quoted), percent-encoded; its action is a GET, without the query.
FORWARDED = [
    (("GET", "time_series?x=%25", None), ("GET", "/time_series", "x=%25"), "get"),
    (("GET", "time_series_stream?a=1&a=2", None), ("GET", "/time_series_stream", "a=1&a=2"), "get"),
    (("GET", "circuit_profile?x=1", None), ("GET", "/dump_profile", "x=1"), "get"),
    (("GET", "circuit_json_profile", None), ("GET", "/dump_json_profile", ""), "get"),
    (("GET", "heap_profile?x=1", None), ("GET", "/heap_profile", "x=1"), "get"),
    (("POST", "samply_profile?duration_secs=3", None), ("POST", "/samply_profile", "duration_secs=3"), "patch"),
    (("GET", "samply_profile?latest=true", None), ("GET", "/samply_profile", "latest=true"), "get"),
    (("POST", "rebalance?x=1", None), ("POST", "/rebalance", ""), "patch"),
    (("POST", "start_compaction?x=1", None), ("POST", "/start_compaction", ""), "patch"),
    (("GET", "checkpoints?x=1", None), ("GET", "/checkpoints", "x=1"), "get"),
    (("GET", "completion_status?token=a%2Bb", None), ("GET", "/completion_status", "token=a%2Bb"), "get"),
    (("POST", "start_transaction", None), ("POST", "/start_transaction", ""), "patch"),
    (("POST", "commit_transaction?x=1", None), ("POST", "/commit_transaction", "x=1"), "patch"),
    (("POST", "clock/advance?x=1", b'{"delta_ms": 1000}'), ("POST", "/clock/advance", "x=1"), "patch"),
    (("POST", "tables/Orders/connectors/c1/pause?x=1", None), ("GET", "/input_endpoints/orders.c1/pause", ""), "patch"),
    (("POST", "tables/%22Orders%22/connectors/c1/start", None),
     ("GET", "/input_endpoints/Orders.c1/start", ""), "patch"),
    (("GET", "tables/orders/connectors/my%20c%2F1/stats", None),
     ("GET", "/input_endpoints/orders.my%20c%2F1/stats", ""), "get"),
    (("GET", "tables/orders/connectors/c1/completion_token?x=1", None),
     ("GET", "/input_endpoints/orders.c1/completion_token", ""), "get"),
    (("GET", "views/Total/connectors/c2/stats", None), ("GET", "/output_endpoints/total.c2/stats", ""), "get"),
    (("POST", "views/total/connectors/c2/command?x=1", b'{"command": "flush"}'),
     ("POST", "/output_endpoints/total.c2/command", "x=1"), "patch"),
]


def _recording(server: ApiServer) -> list[str]:
    """The RBAC verbs the API asks for, in order."""
    verbs: list[str] = []
    authorize = server.gate.authorize

    async def recorded(request: web.Request, verb: str, namespace: str, name: str | None = None) -> None:
        verbs.append(verb)
        await authorize(request, verb, namespace, name)
    server.gate.authorize = recorded  # type: ignore[method-assign]
    return verbs


def test_every_forwarded_route_reaches_the_pipeline_with_its_method_path_query_and_body(tmp_path):
    """Through the API to the reference pipeline (its echo answers what it got): each route arrives as Feldera's
    manager sends it, with the pipeline's token, and the pipeline's answer comes back; each is authorised with
    the verb of its kind."""
    pipeline = reference(tmp_path)

    async def scenario() -> tuple[list[tuple[int, Any]], list[str]]:
        pipeline.start()
        async with serving(pipeline.app()) as url:
            server = api(url)
            verbs = _recording(server)
            async with through(server) as client:
                answers = []
                for (method, route, body), _, _ in FORWARDED:
                    response = await client.request(method, yarl.URL(f"/v0/pipelines/p/{route}", encoded=True),
                                                    data=body, headers={"Content-Type": "application/json",
                                                                        "Authorization": "Bearer the-clients"})
                    answers.append((response.status, json.loads(await response.read())))
        return answers, verbs

    answers, verbs = asyncio.run(scenario())
    for ((_, route, body), (p_method, p_path, p_query), _), (status, echo) in zip(FORWARDED, answers, strict=True):
        assert status == 200, (route, echo)
        assert (echo["method"], echo["path"], echo["query"]) == (p_method, p_path, p_query), route
        assert echo["body"] == (body or b"").decode(), route  # a body only where Feldera passes one
        assert echo["authorized"] is True, route  # the pipeline's token, never the client's
        assert echo["content_type"] == "application/json", route  # the client's Content-Type, as before
    assert verbs == [verb for _, _, verb in FORWARDED]


def test_an_invalid_connector_action_is_felderas_400_before_the_pipeline_is_looked_up():
    async def scenario() -> list[tuple[int, dict]]:
        async with through(api("http://127.0.0.1:9")) as client:
            answers = []
            for path in ("p/tables/t/connectors/c/stop", "nope/tables/t/connectors/c/stats"):
                response = await client.post(f"/v0/pipelines/{path}")
                answers.append((response.status, await response.json()))
            return answers

    (status, body), (status2, body2) = asyncio.run(scenario())
    assert (status, body) == (400, {"message": "Invalid connector action 'stop'; valid actions are: 'start' or "
                                               "'pause'", "error_code": "InvalidConnectorAction",
                                    "details": {"action": "stop"}})
    assert (status2, body2["error_code"]) == (400, "InvalidConnectorAction")  # before the unknown pipeline


# What Feldera's pipeline answers each route with (crates/adapters/src/server.rs): kept as it is.
CONTENT_TYPES = {
    "/time_series": "application/json", "/time_series_stream": "application/x-ndjson",
    "/dump_profile": "application/zip", "/dump_json_profile": "application/json",
    "/heap_profile": "application/protobuf", "/samply_profile": "application/gzip",
    "/checkpoints": "application/json", "/completion_status": "application/json",
    "/start_transaction": "application/json", "/clock/advance": "application/json",
    "/input_endpoints/orders.c1/completion_token": "application/json",
}


def test_each_routes_own_content_type_is_kept_and_any_other_is_opaque():
    async def typed(request: web.Request) -> web.Response:
        kind = request.query.get("as", CONTENT_TYPES[request.path])
        return web.Response(body=b"x", headers={"Content-Type": kind})

    routes = {"/time_series": "time_series", "/time_series_stream": "time_series_stream",
              "/dump_profile": "circuit_profile", "/dump_json_profile": "circuit_json_profile",
              "/heap_profile": "heap_profile", "/samply_profile": "samply_profile", "/checkpoints": "checkpoints",
              "/completion_status": "completion_status"}

    async def scenario() -> list[tuple[str, str, str]]:
        pipeline = web.Application()
        pipeline.router.add_route("*", "/{tail:.*}", typed)
        seen = []
        async with serving(pipeline) as url, through(api(url)) as client:
            for target, route in routes.items():
                for kind in (None, "text/html"):
                    response = await client.get(f"/v0/pipelines/p/{route}", params={"as": kind} if kind else {})
                    seen.append((target, kind or CONTENT_TYPES[target], response.headers["Content-Type"]))
            for method, route, target in (("POST", "start_transaction", "/start_transaction"),
                                          ("POST", "clock/advance", "/clock/advance"),
                                          ("GET", "tables/orders/connectors/c1/completion_token",
                                           "/input_endpoints/orders.c1/completion_token")):
                response = await client.request(method, f"/v0/pipelines/p/{route}")
                seen.append((target, CONTENT_TYPES[target], response.headers["Content-Type"]))
        return seen

    for target, sent, served in asyncio.run(scenario()):
        assert served == (sent if sent == CONTENT_TYPES[target] else "application/octet-stream"), (target, sent)


# -- the ad-hoc query over a WebSocket --------------------------------------------------------------------


def test_a_websocket_query_is_relayed_to_the_pipelines_websocket_both_ways(tmp_path):
    pipeline = reference(tmp_path)
    query = "sql=SELECT+%27%25%27&close_code=1011&close_reason=query+failed"

    async def scenario() -> tuple[Any, Any, list[str]]:
        pipeline.start()
        async with serving(pipeline.app()) as url:
            server = api(url)
            verbs = _recording(server)
            async with serving(server.app()) as base, ClientSession() as session:
                async with session.ws_connect(yarl.URL(f"{base}/v0/pipelines/p/query?{query}", encoded=True),
                                              headers={"Authorization": "Bearer the-clients"}) as socket_:
                    await socket_.send_str('{"sql": "SELECT 1", "format": "text"}')
                    answer = await socket_.receive()
                    closing = await socket_.receive()
        return answer, closing, verbs

    answer, closing, verbs = asyncio.run(scenario())
    assert answer.type is WSMsgType.TEXT
    echo = json.loads(answer.data)
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/query", query)
    assert echo["body"] == '{"sql": "SELECT 1", "format": "text"}' and echo["authorized"] is True
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1011, "query failed")  # relayed
    assert verbs == ["patch"]  # as /query over HTTP


def test_a_websocket_query_the_pipeline_cannot_take_is_felderas_error_and_no_upgrade():
    """Not deployed: Feldera's 503; a pipeline that answers without upgrading or redirects: Feldera's 400
    ``UnableToConnect`` (the redirect is never followed)."""
    followed: list[str] = []

    async def plain(request: web.Request) -> web.Response:
        return web.json_response({"error_code": "AdHocQueryError"}, status=400)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.json_response({})

    async def scenario() -> list[tuple[int, dict]]:
        answers = []
        for app_route in (plain, redirect):
            pipeline = web.Application()
            pipeline.router.add_get("/query", app_route)
            pipeline.router.add_get("/elsewhere", elsewhere)
            async with serving(pipeline) as url, serving(api(url).app()) as base, ClientSession() as session:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{base}/v0/pipelines/p/query")
                async with session.get(f"{base}/v0/pipelines/p/query", headers={
                        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
                    answers.append((refused.value.status, await response.json()))
        stopped = api("http://127.0.0.1:9", STOPPED)
        async with serving(stopped.app()) as base, ClientSession() as session:
            async with session.get(f"{base}/v0/pipelines/p/query", headers={
                    "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
                answers.append((response.status, await response.json()))
        return answers

    (plain_status, plain_body), (redirect_status, redirect_body), (stopped_status, stopped_body) = \
        asyncio.run(scenario())
    assert plain_status == 400 and plain_body["error_code"] == "UnableToConnect"
    assert plain_body["message"].startswith("Unable to initiate websocket connection with pipeline: ")
    assert "HTTP 400" in plain_body["message"]
    assert redirect_status == 400 and redirect_body["error_code"] == "UnableToConnect"
    assert "redirect" in redirect_body["message"] and followed == []
    assert (stopped_status, stopped_body["error_code"]) == (503, "PipelineInteractionNotDeployed")


def test_websocket_queries_take_stream_slots_and_end_when_the_api_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(interaction_module, "STREAMS_PER_CLIENT", 2)

    async def hold(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for _ in socket_:
            pass
        return socket_

    async def scenario() -> tuple[int, dict, list[Any]]:
        pipeline = web.Application()
        pipeline.router.add_get("/query", hold)
        async with serving(pipeline) as url:
            server = api(url)
            async with serving(server.app()) as base, ClientSession() as session:
                held = [await session.ws_connect(f"{base}/v0/pipelines/p/query") for _ in range(2)]
                async with session.get(f"{base}/v0/pipelines/p/query", headers={
                        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
                    status, body = response.status, await response.json()
                await server.follow.close()  # the API stops: its streams end within a second
                ends = [await asyncio.wait_for(s.receive(), 5) for s in held]
                for s in held:
                    await s.close()
        return status, body, ends

    status, body, ends = asyncio.run(scenario())
    assert (status, body["error_code"]) == (429, "TooManyStreams")
    assert [(m.type, m.data) for m in ends] == [(WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY)] * 2


# -- served by the operator, as Feldera's manager serves them ---------------------------------------------


def _program_state(status: ProgramStatus, **fields: Any) -> PipelineState:
    return STOPPED.model_copy(update={"program_status": status, **fields})


def test_the_manager_routes_answer_as_felderas_manager(tmp_path):
    pipeline = reference(tmp_path)

    async def scenario() -> dict[str, tuple[int, str, Any]]:
        pipeline.start()
        answers: dict[str, tuple[int, str, Any]] = {}
        async with serving(pipeline.app()) as url:
            for label, state in (("running", RUNNING), ("stopped", STOPPED)):
                async with through(api(url, state)) as client:
                    for method, path in (("POST", "/v0/pipelines/p/update_runtime"), ("GET", "/v0/metrics"),
                                         ("GET", "/v0/pipelines/p/dataflow_graph")):
                        response = await client.request(method, path)
                        body = await response.read()
                        answers[f"{label} {method} {path}"] = (
                            response.status, response.content_type,
                            json.loads(body) if response.content_type == "application/json" else body)
            async with through(api(url)) as client:
                for method, path in (("POST", "/v0/pipelines/p/testing?set_platform_version=v1"),
                                     ("POST", "/v0/pipelines/nope/update_runtime"),
                                     ("GET", "/v0/config/session"), ("GET", "/v0/config/demos"),
                                     ("GET", "/config/authentication"), ("GET", "/v0/api_keys"),
                                     ("POST", "/v0/api_keys"), ("DELETE", "/v0/api_keys/k1"),
                                     ("GET", "/v0/no/such/thing"), ("GET", "/api-doc/openapi.json")):
                    response = await client.request(method, path, headers={"Feldera-Tenant": "ns"})
                    answers[f"{method} {path}"] = (response.status, response.content_type, await response.json())
        return answers

    answers = asyncio.run(scenario())
    status, _, body = answers["running POST /v0/pipelines/p/update_runtime"]
    assert (status, body["error_code"]) == (400, "UpdateRestrictedToStopped")
    status, _, body = answers["stopped POST /v0/pipelines/p/update_runtime"]
    assert status == 200 and body["name"] == "p" and body["platform_version"]
    assert answers["POST /v0/pipelines/nope/update_runtime"][::2] == (404, {
        "message": "Unknown pipeline name 'nope'", "error_code": "UnknownPipelineName",
        "details": {"pipeline_name": "nope"}})
    # The tenant's metrics: each Running or Paused pipeline's page, then a new line.
    status, content_type, page = answers["running GET /v0/metrics"]
    assert (status, content_type) == (200, "text/plain") and b"process_resident_memory_bytes" in page
    assert page.endswith(b"\n")
    assert answers["stopped GET /v0/metrics"] == (200, "text/plain", b"")
    status, _, body = answers["stopped GET /v0/pipelines/p/dataflow_graph"]
    assert (status, body["error_code"]) == (404, "ProgramNotCompiled")
    assert answers["POST /v0/pipelines/p/testing?set_platform_version=v1"][::2] == (405, {
        "message": "Unsupported pipeline action '/testing': /testing endpoint is disabled. Set "
                   "FELDERA_UNSTABLE_FEATURES=\"testing\" to enable.", "error_code": "UnsupportedPipelineAction",
        "details": {"action": "/testing", "reason": "/testing endpoint is disabled. Set "
                                                    "FELDERA_UNSTABLE_FEATURES=\"testing\" to enable."}})
    status, _, session = answers["GET /v0/config/session"]
    assert status == 200 and session["tenant_name"] == "ns" and len(session["tenant_id"]) == 36
    assert answers["GET /v0/config/demos"][::2] == (200, [])
    assert answers["GET /config/authentication"][::2] == (200, {})
    for key in ("GET /v0/api_keys", "POST /v0/api_keys", "DELETE /v0/api_keys/k1"):
        status, _, body = answers[key]
        assert (status, body["error_code"]) == (501, "NotServed"), key
        assert "authentication is Kubernetes'" in body["message"] and "kubectl create token" in body["message"]
    status, _, body = answers["GET /v0/no/such/thing"]
    assert (status, body["error_code"], body["details"]) == (404, "NotFound", {"path": "/v0/no/such/thing"})
    assert answers["GET /api-doc/openapi.json"][2]["info"]["version"] == "0.306.0"


def test_the_dataflow_graph_is_felderas_missing_dataflow_once_compiled():
    server = api("http://127.0.0.1:9", _program_state(ProgramStatus.SUCCESS, program_digest="d1"))
    server.deps.artifact = lambda digest: {"program_info": {"schema": {"inputs": [], "outputs": []}}}

    async def scenario() -> tuple[int, dict]:
        async with through(server) as client:
            response = await client.get("/v0/pipelines/p/dataflow_graph")
            return response.status, await response.json()

    assert asyncio.run(scenario()) == (404, {
        "message": "Dataflow graph is missing from pipeline 'p'. The pipeline may have been compiled before dataflow "
                   "graphs were introduced.", "error_code": "ProgramInfoMissesDataflow",
        "details": {"pipeline_name": "p"}})


# -- the OpenAPI document, and every path of it -----------------------------------------------------------


def test_the_served_openapi_document_is_felderas_c44_one():
    served = document()
    c44 = json.loads(C44_OPENAPI.read_text())
    assert c44["info"]["version"] == "0.306.0"
    assert served["paths"].keys() == c44["paths"].keys()
    assert served["components"]["schemas"] == c44["components"]["schemas"]
    for path, item in c44["paths"].items():
        for method, operation in item.items():
            mine = served["paths"][path][method]
            assert mine["operationId"] == operation["operationId"]
            theirs = operation.get("parameters", [])
            assert mine.get("parameters", [])[:len(theirs)] == theirs, (path, method)
            for code, answer in operation["responses"].items():  # Feldera's answers, to which the API may add
                assert mine["responses"][code]["description"] == answer["description"], (path, method, code)
                added = mine["responses"][code].get("content", {})
                assert {k: added[k] for k in answer.get("content", {})} == answer.get("content", {}), (path, method)


@contextlib.asynccontextmanager
async def _log(key: Any, follow: bool) -> AsyncIterator[AsyncIterator[bytes]]:
    async def lines() -> AsyncIterator[bytes]:
        yield b"a line\n"
    yield lines()


FILLED = {"pipeline_name": "p", "table_name": "orders", "view_name": "total", "connector_name": "c1",
          "action": "start", "event_id": "latest", "api_key_name": "k1"}


def test_no_path_of_felderas_document_answers_a_bare_404(tmp_path):
    """Every operation of Feldera's c44 document, its path parameters filled, against the API with a running
    reference pipeline: whatever it answers, it is never a 404 without a JSON body."""
    pipeline = reference(tmp_path)
    c44 = json.loads(C44_OPENAPI.read_text())
    operations = [(method.upper(), path) for path, item in c44["paths"].items() for method in item]

    async def scenario() -> list[tuple[str, str, int, str, bytes]]:
        pipeline.start()
        answers = []
        async with serving(pipeline.app()) as url, through(api(url, logs=_log)) as client:
            for method, path in operations:
                filled = path.format(**FILLED)
                timeout = aiohttp.ClientTimeout(total=5)
                response = await client.request(method, filled, timeout=timeout,
                                                data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
                body = await response.content.read(4096)
                answers.append((method, filled, response.status, response.content_type, body))
                response.close()
        return answers

    answers = asyncio.run(scenario())
    assert len(answers) == 60  # every operation of the document
    for method, path, status, content_type, body in answers:
        if status == 404:
            assert content_type == "application/json" and json.loads(body)["error_code"], (method, path)
        assert not (status == 501 and not path.startswith("/v0/api_keys")), (method, path, body)


# -- Feldera's SDK, unmodified ----------------------------------------------------------------------------


class Scripted:
    """A pipeline answering Feldera's shapes for the routes the SDK reads, recording what it was sent."""

    ANSWERS: dict[str, Any] = {
        "/start_transaction": {"transaction_id": 7},
        "/completion_status": {"status": "complete"},
        "/input_endpoints/orders.c1/completion_token": {"token": "tok-1"},
        "/input_endpoints/orders.c1/stats": {"endpoint_name": "orders.c1"},
        "/output_endpoints/total.c2/stats": {"endpoint_name": "total.c2"},
        "/checkpoints": [{"uuid": "x"}],
        "/clock/advance": {"now_ms": 1000, "now": "1970-01-01T00:00:01Z"},
        "/samply_profile": b"\x1f\x8bprofile",
    }

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.query_string, await request.read()))
        answer = self.ANSWERS.get(request.path)
        if request.path == "/samply_profile" and request.method == "POST":
            return web.Response(status=202)
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/gzip")
        return web.json_response(answer) if answer is not None else web.Response()


@contextlib.contextmanager
def api_on_a_port(pipeline: web.Application, state: PipelineState = RUNNING) -> Iterator[str]:
    """The API (and ``pipeline``) on loopback ports, served by a loop in a thread of its own: for the SDK,
    which blocks."""
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[str] = loop.create_future()
    done = asyncio.Event()

    async def run() -> None:
        async with serving(pipeline) as url:
            server = api(url, state, logs=_log)
            server.deps.events = Events()  # type: ignore[assignment]
            async with serving(server.app()) as base:
                ready.set_result(base)
                await done.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(10)
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(10)
        loop.close()


async def _wait(future: asyncio.Future[str]) -> str:
    return await future


def test_felderas_sdk_reaches_every_route_it_has_a_method_for():
    scripted = Scripted()
    pipeline = web.Application()
    pipeline.router.add_route("*", "/{tail:.*}", scripted.handle)
    with api_on_a_port(pipeline) as base:
        client = feldera_client(base, None, "ns")
        assert client.get_checkpoints("p") == [{"uuid": "x"}]
        assert client.start_transaction("p") == 7
        assert client.advance_clock("p", 1000) == {"now_ms": 1000, "now": "1970-01-01T00:00:01Z"}
        assert client.generate_completion_token("p", "Orders", "c1") == "tok-1"
        assert client.completion_token_processed("p", "tok-1") is True
        assert client.input_connector_stats("p", "orders", "c1") == {"endpoint_name": "orders.c1"}
        assert client.output_connector_stats("p", "total", "c2") == {"endpoint_name": "total.c2"}
        client.pause_connector("p", "orders", "c1")
        client.resume_connector("p", "orders", "c1")
        client.rebalance_pipeline("p")
        client.start_compaction_pipeline("p")
        client.start_samply_profile("p", 3)
        assert client.get_samply_profile("p") == b"\x1f\x8bprofile"
        with pytest.raises(FelderaAPIError) as refused:
            client.create_api_key("k1")
        assert (refused.value.status_code, refused.value.error_code) == (501, "NotServed")
        with pytest.raises(FelderaAPIError) as testing:
            client.testing_force_update_platform_version("p", "v1")
        assert (testing.value.status_code, testing.value.error_code) == (405, "UnsupportedPipelineAction")
        with pytest.raises(FelderaAPIError) as running:
            client.update_pipeline_runtime("p")
        assert running.value.error_code == "UpdateRestrictedToStopped"
    assert [(m, p) for m, p, _, _ in scripted.seen] == [
        ("GET", "/checkpoints"), ("POST", "/start_transaction"), ("POST", "/clock/advance"),
        ("GET", "/input_endpoints/orders.c1/completion_token"), ("GET", "/completion_status"),
        ("GET", "/input_endpoints/orders.c1/stats"), ("GET", "/output_endpoints/total.c2/stats"),
        ("GET", "/input_endpoints/orders.c1/pause"), ("GET", "/input_endpoints/orders.c1/start"),
        ("POST", "/rebalance"), ("POST", "/start_compaction"), ("POST", "/samply_profile"),
        ("GET", "/samply_profile")]
    by_path = {p: (q, b) for _, p, q, b in scripted.seen}
    assert urllib.parse.parse_qs(by_path["/completion_status"][0]) == {"token": ["tok-1"]}
    assert json.loads(by_path["/clock/advance"][1]) == {"delta_ms": 1000}
    assert by_path["/samply_profile"][0] == "" and ("POST", "/samply_profile", "duration_secs=3", b"") in \
        scripted.seen


def test_felderas_sdk_updates_the_runtime_of_a_stopped_pipeline():
    with api_on_a_port(web.Application(), STOPPED) as base:
        client = feldera_client(base, None, "ns")
        client.update_pipeline_runtime("p")  # a no-op: the pipeline has the operator's platform version already
        metadata, _, files = _bundle(bytes(client.get_pipeline_support_bundle("p", {"logs": "false"})))
        assert metadata["pipeline"]["name"] == "p" and metadata["collections"][0]["skipped"] == ["logs.txt"]
        assert any(name.endswith("/pipeline_config.json") for name in files)


# -- the support bundle, assembled by the operator ------------------------------------------------------


class Events:
    """The event store, as the bundle reads it."""

    @staticmethod
    def list_json(uid: str, selector: str = "status") -> str:
        return json.dumps([{"event_id": "e1", "selector": selector}])


def _bundle(body: bytes) -> tuple[dict[str, Any], str, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(files.pop("metadata.json")), files.pop("metadata.txt").decode(), files


def test_the_support_bundle_holds_what_felderas_collector_collects(tmp_path):
    pipeline = reference(tmp_path)

    async def scenario() -> dict[str, tuple[int, dict[str, str], bytes]]:
        pipeline.start()
        answers = {}
        async with serving(pipeline.app()) as url:
            for label, state, query in (("running", RUNNING, ""), ("stopped", STOPPED, ""),
                                        ("some", RUNNING, "?heap_profile=false&logs=false&circuit_profile=false"),
                                        ("none", RUNNING, "?collect=false"), ("zero", RUNNING, "?limit=0")):
                server = api(url, state, logs=_log)
                server.deps.events = Events()  # type: ignore[assignment]
                async with through(server) as client:
                    response = await client.get(f"/v0/pipelines/p/support_bundle{query}")
                    answers[label] = (response.status, dict(response.headers), await response.read())
        return answers

    answers = asyncio.run(scenario())
    status, headers, body = answers["running"]
    assert (status, headers["Content-Type"]) == (200, "application/zip")
    assert headers["Content-Disposition"] == 'attachment; filename="p-support-bundle.zip"'
    metadata, text, files = _bundle(body)
    assert metadata["metadata_version"] == 1 and metadata["pipeline"]["name"] == "p"
    assert metadata["pipeline"]["status"] == "Running"
    [collection] = metadata["collections"]
    directory = collection["directory"]
    assert collection["data_version"] == 5 and collection["skipped"] == []
    assert set(collection["collected"]) == {"circuit_profile.zip", "circuit_profile.json", "heap_profile.pb.gz",
                                            "metrics.txt", "logs.txt", "stats.json", "pipeline_config.json",
                                            "system_config.json", "pipeline_events.json"}
    assert collection["failed"] == [{"file": "dataflow_graph.json", "reason": "Pipeline 'p' has not been compiled "
                                     "yet. Please compile the pipeline first."}]
    assert set(files) == {f"{directory}/{name}" for name in collection["collected"]}
    # Asked of the pipeline as Feldera's collector asks (its echo answers the profiles it does not have).
    assert json.loads(files[f"{directory}/circuit_profile.zip"])["path"] == "/dump_profile"
    assert json.loads(files[f"{directory}/heap_profile.pb.gz"])["path"] == "/heap_profile"
    assert b"process_resident_memory_bytes" in files[f"{directory}/metrics.txt"]
    assert json.loads(files[f"{directory}/stats.json"])["global_metrics"]["state"] == "Running"
    assert files[f"{directory}/stats.json"].startswith(b"{\n")  # prettified, as Feldera's
    assert files[f"{directory}/logs.txt"] == b"a line\n"
    assert json.loads(files[f"{directory}/pipeline_config.json"])["name"] == "p"
    assert json.loads(files[f"{directory}/system_config.json"])["version"] == "0.306.0"
    assert json.loads(files[f"{directory}/pipeline_events.json"]) == [{"event_id": "e1", "selector": "all"}]
    assert "# Support Bundle Table of Contents" in text and "  ✓ metrics.txt" in text
    assert "  ✗ dataflow_graph.json: Pipeline 'p' has not been compiled yet." in text

    # Not deployed: what the pipeline would give fails, with the manager's reason; the rest is there.
    metadata, _, _ = _bundle(answers["stopped"][2])
    [collection] = metadata["collections"]
    failed = {f["file"]: f["reason"] for f in collection["failed"]}
    assert set(failed) == {"circuit_profile.zip", "circuit_profile.json", "heap_profile.pb.gz", "metrics.txt",
                           "stats.json", "dataflow_graph.json"}
    assert failed["stats.json"].startswith("Unable to interact with pipeline because the deployment status (stopped)")
    assert metadata["pipeline"]["status"] == "Stopped" and "desired_status" not in metadata["pipeline"]
    # What was not asked for is skipped; collect=false has no collection; limit=0 is Feldera's 400.
    [collection] = _bundle(answers["some"][2])[0]["collections"]
    assert collection["skipped"] == ["circuit_profile.zip", "circuit_profile.json", "heap_profile.pb.gz", "logs.txt"]
    assert _bundle(answers["none"][2])[0]["collections"] == []
    status, _, body = answers["zero"]
    assert (status, json.loads(body)["error_code"]) == (400, "InvalidSupportBundleParameter")


def test_support_bundles_are_assembled_two_at_a_time():
    """A bundle holds its files in memory: beyond two at once, 429 at once (not a queue of them). The two
    bundles under way wait for the pipeline's log, which comes once the third has been refused."""
    release, both = asyncio.Event(), asyncio.Event()
    reading: list[int] = []

    @contextlib.asynccontextmanager
    async def slow_log(key: Any, follow: bool) -> AsyncIterator[AsyncIterator[bytes]]:
        reading.append(1)
        if len(reading) == 2:
            both.set()

        async def lines() -> AsyncIterator[bytes]:
            await release.wait()
            yield b"a line\n"
        yield lines()

    async def scenario() -> tuple[list[int], int, dict]:
        async with serving(web.Application()) as url:
            server = api(url, logs=slow_log)
            server.deps.events = Events()  # type: ignore[assignment]
            async with through(server) as client:
                held = [asyncio.ensure_future(client.get("/v0/pipelines/p/support_bundle")) for _ in range(2)]
                await asyncio.wait_for(both.wait(), 10)  # both bundles are under way
                try:  # at once, not once the others are done
                    refused = await client.get("/v0/pipelines/p/support_bundle", timeout=aiohttp.ClientTimeout(5))
                    status, body = refused.status, await refused.json()
                finally:
                    release.set()
                return [(await h).status for h in held], status, body

    statuses, status, body = asyncio.run(scenario())
    assert statuses == [200, 200]
    assert (status, body["error_code"]) == (429, "TooManySupportBundles")


def test_what_a_pipeline_answers_the_operators_own_routes_is_bounded(monkeypatch):
    """A hostile pipeline's endless answers: its /metrics past the bound is left out of the tenant's page, and a
    bundle's file past the bound is listed as failed; neither is held whole."""
    from pipeline_operator.api import manager, support_bundle
    monkeypatch.setattr(manager, "MAX_PIPELINE_METRICS", 1024)
    monkeypatch.setattr(support_bundle, "MAX_FILE", 1024)

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 1024)
        return response

    async def scenario() -> tuple[bytes, dict]:
        pipeline = web.Application()
        pipeline.router.add_route("*", "/{tail:.*}", huge)
        async with serving(pipeline) as url:
            server = api(url, logs=_log)
            server.deps.events = Events()  # type: ignore[assignment]
            async with through(server) as client:
                page = await (await client.get("/v0/metrics")).read()
                bundle = await (await client.get("/v0/pipelines/p/support_bundle")).read()
                return page, _bundle(bundle)[0]

    page, metadata = asyncio.run(scenario())
    assert page == b""
    failed = {f["file"]: f["reason"] for f in metadata["collections"][0]["failed"]}
    assert failed["metrics.txt"] == "the answer is larger than 1024 bytes, the most a file of a bundle holds"
    assert set(failed) >= {"circuit_profile.zip", "heap_profile.pb.gz", "stats.json"}
