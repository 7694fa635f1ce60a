"""The channel between the operator and its pipeline processes: the control token, debug routes that
exist only when asked for, redirects never followed, and every answer of a pipeline bounded (size,
nesting, each string) before it reaches a status, an event or the store. Real pipeline processes
and real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pipeline_operator.backends.local import LocalBackend
from pipeline_operator.core.lifecycle import (
    DETAILS_LIMIT,
    MAX_TEXT,
    ComputeObservation,
    ComputeState,
    RuntimeObservation,
    RuntimeProbe,
    parse_status_response,
)
from pipeline_operator.feldera.launch import config_files, launch_args, new_deployment_id, pipeline_config
from pipeline_operator.feldera.runtime_client import MAX_JSON_DEPTH, MAX_STATUS_BODY, RuntimeClient
from pipeline_operator.identity import MAX_SLUG, PipelineKey
from pipeline_operator.models import (
    BootstrapPolicy,
    PipelineSpec,
    RuntimeDesiredStatus,
    RuntimeStatus,
    SpecRuntimeDesiredStatus,
)

from .conftest import _kill_pipeline_processes_under
from .operator_harness import wait_for
from .test_api import http_json

TOKEN = "s3cret-token-of-this-test"
BIG = 900 * 1024  # bytes of the oversized strings a pipeline sends
SMALL = 20 * 1024  # what any observation of one answer may take as JSON
DEEP = 100_000


# -- helpers -----------------------------------------------------------------------------------------


def request(url: str, method: str = "GET", token: str | None = None, scheme: str = "Bearer",
            data: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    return http_json(url, method, headers, data, timeout=30)


class Process:
    """One real ``pipeline-operator pipeline-process``, started by hand as an administrator would."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "process.log"
        port_file = folder / "port"
        # Feldera's launch contract: the PipelineConfig in the working directory, Feldera's arguments.
        config = pipeline_config("0", "by-hand", None, str(folder / "storage"), {"digest": "by-hand"})
        for name, text in config_files(config).items():
            (folder / name).write_text(text)
        cmd = [sys.executable, "-m", "pipeline_operator.cli", "pipeline-process",
               *launch_args(str(folder / "config.yaml"), "127.0.0.1", RuntimeDesiredStatus.RUNNING,
                            new_deployment_id(), BootstrapPolicy.ALLOW, False)]
        full_env = {**os.environ, "PIPELINE_INIT_SECONDS": "0", "PIPELINE_REPLAY_SECONDS": "0", **env}
        for name in ("PIPELINE_CONTROL_TOKEN", "PIPELINE_DEBUG_ROUTES"):
            if name not in env:
                full_env.pop(name, None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                         start_new_session=True, cwd=folder)
        port = wait_for("the process to listen", lambda: port_file.exists() and port_file.read_text(), 60)
        self.url = f"http://127.0.0.1:{int(port)}"
        wait_for("Running", lambda: request(f"{self.url}/status")[1]["runtime_status"] == "Running", 60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def process(tmp_path: Path) -> Iterator[Any]:
    started: list[Process] = []

    def start(**env: str) -> Process:
        started.append(Process(tmp_path / f"p{len(started)}", env))
        return started[-1]

    yield start
    for p in started:
        p.stop()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a loopback port: its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def pipeline_like(answers: dict[str, web.Response]) -> web.Application:
    """A server that answers ``GET /NAME/status`` with ``answers[NAME]`` (one endpoint per case)."""
    app = web.Application()

    async def status(request: web.Request) -> web.Response:
        return answers[request.match_info["case"]]
    app.router.add_get("/{case}/status", status)
    return app


async def statuses(answers: dict[str, web.Response]) -> dict[str, RuntimeObservation]:
    """What the runtime client makes of each answer."""
    async with serving(pipeline_like(answers)) as url:
        client = RuntimeClient()
        try:
            return {case: await client.status(f"{url}/{case}") for case in answers}
        finally:
            await client.close()


def size(observation: RuntimeObservation) -> int:
    """Bytes of the observation as the event store writes JSON (escaped: an emoji takes 12 bytes)."""
    return len(json.dumps(observation.model_dump(mode="json"), separators=(",", ":")))


# -- 1. the control token and the debug routes --------------------------------------------------------


def test_control_routes_require_the_token_and_status_stays_open(process):
    p = process(PIPELINE_CONTROL_TOKEN=TOKEN, PIPELINE_DEBUG_ROUTES="1")
    for method, path in (("GET", "/pause"), ("GET", "/start"), ("POST", "/activate"), ("POST", "/suspend"),
                         ("POST", "/approve"), ("POST", "/debug/fail?mode=panic")):
        for token, scheme in ((None, "Bearer"), ("wrong", "Bearer"), (TOKEN, "Basic"), (TOKEN + "x", "Bearer")):
            code, body = request(f"{p.url}{path}", method, token, scheme)
            assert code == 401, (path, token, scheme, body)
            assert set(body) == {"message", "error_code", "details"} and body["error_code"] == "AuthenticationFailed"
            assert "PIPELINE_CONTROL_TOKEN" in body["message"] and "Authorization: Bearer" in body["message"]
    assert request(f"{p.url}/status")[0] == 200
    assert request(f"{p.url}/pause", "GET", TOKEN)[0] == 202
    assert request(f"{p.url}/start", "GET", TOKEN)[0] == 202
    assert request(f"{p.url}/debug/fail?mode=unavailable", "POST", TOKEN)[0] == 202
    assert request(f"{p.url}/status")[0] == 503
    # Not a control route, not a route at all: 404 whatever the token.
    assert request(f"{p.url}/debug/other", "POST")[0] == 404


def test_debug_routes_exist_only_when_asked_for(process):
    p = process(PIPELINE_CONTROL_TOKEN=TOKEN)
    assert request(f"{p.url}/debug/fail?mode=exit", "POST", TOKEN)[0] == 404
    assert request(f"{p.url}/debug/fail?mode=exit", "POST")[0] == 404
    assert p.proc.poll() is None and request(f"{p.url}/status")[1]["runtime_status"] == "Running"


def test_without_a_token_the_control_routes_are_open_and_the_process_says_so(process):
    p = process()
    assert request(f"{p.url}/pause", "GET")[0] == 202
    assert request(f"{p.url}/debug/fail?mode=panic", "POST")[0] == 404  # still no debug routes
    assert "PIPELINE_CONTROL_TOKEN is not set" in p.log.read_text()


def test_the_runtime_client_sends_the_token_of_the_endpoint(process):
    p = process(PIPELINE_CONTROL_TOKEN=TOKEN)
    target = SpecRuntimeDesiredStatus.PAUSED

    async def scenario() -> tuple[bool, bool, bool, Any, Any]:
        anonymous = RuntimeClient()
        other = RuntimeClient(token_for=lambda endpoint: TOKEN if endpoint == "http://elsewhere:1" else None)
        client = RuntimeClient(token_for=lambda endpoint: TOKEN if endpoint == p.url else None)
        try:
            return (await anonymous.set_runtime_desired(p.url, target, False),
                    await other.set_runtime_desired(p.url, target, False),
                    await client.set_runtime_desired(p.url, target, False),
                    await client.forward(p.url, "GET", "/start"),
                    await client.status(p.url))
        finally:
            for c in (anonymous, other, client):
                await c.close()

    refused, refused_elsewhere, paused, forwarded, status = asyncio.run(scenario())
    assert (refused, refused_elsewhere, paused) == (False, False, True)
    assert forwarded is not None and forwarded[0] == 202
    assert status.probe is RuntimeProbe.OK and status.runtime_desired_status is RuntimeDesiredStatus.RUNNING


def test_forward_passes_the_body_as_bytes_and_only_the_operators_authorization():
    nested = b"[" * DEEP + b"]" * DEEP
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=nested, content_type="application/json")

    async def scenario() -> tuple[int, bytes, str] | None:
        app = web.Application()
        app.router.add_post("/approve", answer)
        async with serving(app) as url:
            client = RuntimeClient(token_for=lambda endpoint: TOKEN)
            try:
                return await client.forward(url, "POST", "/approve", "silent_bootstrap=true")
            finally:
                await client.close()

    assert asyncio.run(scenario()) == (200, nested, "application/json")
    assert seen == [f"Bearer {TOKEN}"]


def _spec(**env: str) -> PipelineSpec:
    return PipelineSpec.model_validate({"deployment": {"env": [{"name": k, "value": v} for k, v in env.items()]},
                                        "program": {"sql": "CREATE TABLE t (x INT);"}})


async def _provision(backend: LocalBackend, key: PipelineKey, spec: PipelineSpec) -> str:
    """Provision and wait until the process answers: its endpoint."""
    await backend.provision(key, spec, {"digest": "d1"}, RuntimeDesiredStatus.RUNNING, BootstrapPolicy.ALLOW)
    for _ in range(600):
        if (await backend.observe_compute(key)).state is ComputeState.READY:
            endpoint = backend.endpoint(key)
            assert endpoint is not None
            return endpoint
        await asyncio.sleep(0.1)
    raise AssertionError(f"not ready: {(backend.folder(key) / 'process.log').read_text(errors='replace')}")


async def _deprovision(backend: LocalBackend, key: PipelineKey) -> None:
    for _ in range(600):
        if (await backend.observe_compute(key)).state is ComputeState.ABSENT:
            return
        await backend.deprovision(key)
        await asyncio.sleep(0.1)
    raise AssertionError("the process did not stop")


def test_the_local_backend_gives_each_process_a_token_a_restarted_operator_knows(tmp_path):
    key = PipelineKey("ns", "tokened", "0f0e0d0c-0000-4000-8000-000000000001")
    spec = _spec(PIPELINE_CONTROL_TOKEN="chosen-by-the-author", PIPELINE_DEBUG_ROUTES="1", PIPELINE_INIT_SECONDS="0")

    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "state", debug_routes=True)
        client = RuntimeClient(token_for=backend.control_token)
        try:
            endpoint = await _provision(backend, key, spec)
            token_file = backend.folder(key) / "token"
            token = token_file.read_text()
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 40
            assert backend.control_token(endpoint) == token
            assert backend.control_token("http://127.0.0.1:1") is None
            # The spec cannot choose the token: the process wants the backend's.
            assert (await asyncio.to_thread(request, f"{endpoint}/pause", "GET", "chosen-by-the-author"))[0] == 401
            assert await client.set_runtime_desired(endpoint, SpecRuntimeDesiredStatus.PAUSED, False)
            # Debug routes, as the backend was told (they need the token too).
            assert (await asyncio.to_thread(request, f"{endpoint}/debug/fail?mode=garbage", "POST"))[0] == 401
            assert (await asyncio.to_thread(request, f"{endpoint}/debug/fail?mode=available", "POST", token))[0] \
                == 202

            # A restarted operator: it knows the token from its first observation, before any status call.
            restarted = LocalBackend(tmp_path / "state", debug_routes=True)
            assert restarted.control_token(endpoint) is None
            assert (await restarted.observe_compute(key)).state is ComputeState.READY
            assert restarted.endpoint(key) == endpoint and restarted.control_token(endpoint) == token
            again = RuntimeClient(token_for=restarted.control_token)
            try:
                assert await again.set_runtime_desired(endpoint, SpecRuntimeDesiredStatus.RUNNING, False)
            finally:
                await again.close()

            # Stopped and started again: the same token (the folder keeps it).
            await _deprovision(restarted, key)
            endpoint = await _provision(restarted, key, spec)
            assert token_file.read_text() == token and restarted.control_token(endpoint) == token
            await _deprovision(restarted, key)
        finally:
            await client.close()
            _kill_pipeline_processes_under(tmp_path)

    asyncio.run(scenario())


# -- 2. redirects ---------------------------------------------------------------------------------------


def test_redirects_are_never_followed():
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"runtime_status": "Running", "runtime_desired_status": "Running",
                                  "secret": "the target's body"})

    async def scenario() -> tuple[RuntimeObservation, bool, bool, bool, Any]:
        target_app = web.Application()
        target_app.router.add_route("*", "/{tail:.*}", elsewhere)
        async with serving(target_app) as target:
            async def redirect(request: web.Request) -> web.Response:
                raise web.HTTPTemporaryRedirect(f"{target}{request.path_qs}")
            redirecting = web.Application()
            redirecting.router.add_route("*", "/{tail:.*}", redirect)
            async with serving(redirecting) as url:
                client = RuntimeClient(token_for=lambda endpoint: TOKEN)
                try:
                    return (await client.status(url), await client.suspend(url), await client.approve(url),
                            await client.set_runtime_desired(url, SpecRuntimeDesiredStatus.RUNNING, True),
                            await client.forward(url, "GET", "/pause"))
                finally:
                    await client.close()

    status, suspended, approved, activated, forwarded = asyncio.run(scenario())
    assert hits == []
    assert status.probe is RuntimeProbe.FATAL and status.error is not None
    assert status.error.error_code == "PipelineInteractionInvalidResponse"
    assert "307" in status.error.message and "the target's body" not in status.model_dump_json()
    assert (suspended, approved, activated) == (False, False, False)
    assert forwarded is not None and forwarded[0] == 307


# -- 3. and 4. every answer bounded ----------------------------------------------------------------


def test_every_string_a_pipeline_sends_is_capped():
    big = "x" * BIG
    emoji = "\U0001F600" * (BIG // 13)  # 12 bytes each as JSON: just under the 1 MiB a body may take
    third = "x" * (BIG // 3)
    answers = {
        "503": web.json_response({"message": big, "error_code": "PipelineBusy"}, status=503),
        "503-code": web.json_response({"message": "busy", "error_code": emoji}, status=503),
        "503-legacy": web.json_response({"message": emoji, "error_code": "Suspended"}, status=503),
        "503-control": web.json_response({"message": "\u0000" * (BIG // 7), "error_code": "PipelineBusy"}, status=503),
        "200-invalid": web.json_response({"runtime_status": big, "runtime_desired_status": "Running"}),
        "200-string": web.json_response(big),
        "200-details": web.json_response({"runtime_status": "Running", "runtime_desired_status": "Running",
                                          "runtime_status_details": {"k": big}}),
        "500": web.json_response({"message": third, "error_code": third, "details": {"k": third}}, status=500),
        "500-emoji": web.json_response({"message": emoji, "error_code": "E"}, status=500),
        "500-invalid": web.json_response([big], status=500),
    }

    observations = asyncio.run(statuses(answers))
    assert {case: size(o) for case, o in observations.items() if size(o) >= SMALL} == {}
    for case, observation in observations.items():
        assert len(json.dumps(observation.reason)) <= MAX_TEXT + 2, case
        if observation.error is not None:
            assert len(json.dumps(observation.error.model_dump(mode="json"))) < SMALL, case
            assert len(json.dumps(observation.error.details)) <= DETAILS_LIMIT, case
    assert observations["503"].probe is RuntimeProbe.UNAVAILABLE and "PipelineBusy" in observations["503"].reason
    assert observations["503"].reason.endswith("characters in all)")
    for case in observations:
        assert "larger than" not in observations[case].reason, case  # every answer was read and parsed
    assert observations["503-legacy"].runtime_status is not None
    assert observations["200-invalid"].probe is RuntimeProbe.UNAVAILABLE
    assert observations["200-details"].runtime_status_details["truncated"] is True
    assert observations["500"].probe is RuntimeProbe.FATAL and observations["500"].error.details["truncated"]
    # The same caps hold for observations made without HTTP (the backends' messages, other callers).
    assert size(parse_status_response(None, None, big)) < SMALL
    assert len(json.dumps(ComputeObservation(state=ComputeState.FAILED, message=emoji).message)) <= MAX_TEXT + 2


def test_an_answer_larger_than_the_bound_is_not_read_however_it_is_sent():
    """Over MAX_STATUS_BODY bytes of body: announced with a Content-Length, chunked, or compressed (a small
    gzip body whose content is larger is measured as it is decompressed)."""
    big = b'"' + b"x" * (MAX_STATUS_BODY + 10) + b'"'

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(big), 64 * 1024):
            await response.write(big[start:start + 64 * 1024])
        await response.write_eof()
        return response

    async def announced(_: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    async def compressed(_: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(big), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    async def scenario() -> dict[str, RuntimeObservation]:
        app = web.Application()
        app.router.add_get("/announced/status", announced)
        app.router.add_get("/chunked/status", chunked)
        app.router.add_get("/gzip/status", compressed)
        async with serving(app) as url:
            client = RuntimeClient()
            try:
                return {case: await client.status(f"{url}/{case}") for case in ("announced", "chunked", "gzip")}
            finally:
                await client.close()

    for case, observation in asyncio.run(scenario()).items():
        assert observation.probe is RuntimeProbe.UNREACHABLE, case
        assert f"larger than {MAX_STATUS_BODY} bytes" in observation.reason, case


def test_a_repeated_answer_is_the_same_observation_and_any_change_is_read_again():
    answers = [(200, {"runtime_status": "Running", "runtime_desired_status": "Running"}),
               (200, {"runtime_status": "Running", "runtime_desired_status": "Running"}),
               (503, {"runtime_status": "Running", "runtime_desired_status": "Running"}),  # same bytes
               (200, {"runtime_status": "Paused", "runtime_desired_status": "Paused"}),
               (200, {"runtime_status": "Paused", "runtime_desired_status": "Paused"})]
    served = iter(answers)

    async def status(_: web.Request) -> web.Response:
        code, body = next(served)
        return web.json_response(body, status=code)

    async def scenario() -> list[RuntimeObservation]:
        app = web.Application()
        app.router.add_get("/status", status)
        async with serving(app) as url:
            client = RuntimeClient()
            try:
                return [await client.status(url) for _ in answers]
            finally:
                await client.close()

    first, again, unavailable, paused, paused_again = asyncio.run(scenario())
    assert again is first and first.runtime_status is RuntimeStatus.RUNNING
    assert unavailable.probe is RuntimeProbe.UNAVAILABLE  # same body, another HTTP status: read again
    assert paused.runtime_status is RuntimeStatus.PAUSED and paused_again is paused


def test_deeply_nested_answers_are_invalid_answers_not_exceptions():
    def nested(depth: int, inner: bytes = b"1") -> bytes:
        return b"[" * depth + inner + b"]" * depth

    fine = {"runtime_status": "Running", "runtime_desired_status": "Running",
            "runtime_status_details": json.loads(nested(MAX_JSON_DEPTH - 1))}
    answers = {
        "deep": web.Response(body=nested(DEEP), content_type="application/json"),
        "deep-object": web.Response(body=b'{"runtime_status": "Running", "runtime_desired_status": "Running", '
                                         b'"runtime_status_details": ' + nested(MAX_JSON_DEPTH) + b"}",
                                    content_type="application/json"),
        "deep-error": web.Response(body=b'{"message": "m", "error_code": "E", "details": ' + nested(5000) + b"}",
                                   status=500, content_type="application/json"),
        "brackets-in-strings": web.json_response({**fine, "runtime_status_details": {"s": "[" * 5000}}),
        "fine": web.json_response(fine),
    }

    observations = asyncio.run(statuses(answers))
    for case in ("deep", "deep-object", "deep-error"):
        observation = observations[case]
        assert observation.probe is RuntimeProbe.UNREACHABLE, case
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in observation.reason, case
    assert observations["brackets-in-strings"].probe is RuntimeProbe.OK
    assert observations["fine"].probe is RuntimeProbe.OK


def test_the_reference_process_can_answer_garbage_nested_json_and_then_normally(process):
    p = process(PIPELINE_CONTROL_TOKEN=TOKEN, PIPELINE_DEBUG_ROUTES="1")

    async def status() -> RuntimeObservation:
        client = RuntimeClient()
        try:
            return await client.status(p.url)
        finally:
            await client.close()

    assert request(f"{p.url}/debug/fail?mode=garbage", "POST", TOKEN)[0] == 202
    raw = urllib.request.urlopen(f"{p.url}/status", timeout=30).read()
    with pytest.raises(UnicodeDecodeError):
        raw.decode()
    garbage = asyncio.run(status())
    assert garbage.probe is RuntimeProbe.UNREACHABLE and "not JSON" in garbage.reason
    assert request(f"{p.url}/debug/fail?mode=nested", "POST", TOKEN)[0] == 202
    nested = asyncio.run(status())
    assert nested.probe is RuntimeProbe.UNREACHABLE and "nested deeper" in nested.reason
    assert request(f"{p.url}/debug/fail?mode=available", "POST", TOKEN)[0] == 202
    assert asyncio.run(status()).probe is RuntimeProbe.OK


def test_a_hung_process_accepts_connections_and_answers_nothing(process):
    p = process(PIPELINE_CONTROL_TOKEN=TOKEN, PIPELINE_DEBUG_ROUTES="1")

    async def scenario() -> tuple[RuntimeObservation, RuntimeObservation, RuntimeObservation]:
        # A short timeout: the answer is expected never to come.
        client = RuntimeClient(status_timeout=1.0, action_timeout=1.0)
        try:
            before = await client.status(p.url)  # leaves a kept-alive connection in the pool
            status, _ = await asyncio.to_thread(request, f"{p.url}/debug/fail?mode=hang", "POST", TOKEN)
            assert status == 202
            on_kept_connection = await client.status(p.url)
            fresh = RuntimeClient(status_timeout=1.0)
            try:
                on_new_connection = await fresh.status(p.url)
            finally:
                await fresh.close()
            return before, on_kept_connection, on_new_connection
        finally:
            await client.close()

    before, kept, new = asyncio.run(scenario())
    assert before.probe is RuntimeProbe.OK
    for observation in (kept, new):
        assert observation.probe is RuntimeProbe.UNREACHABLE and "timed out" in observation.reason
    port = int(p.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        pass  # still accepted
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(60) == 0


def test_the_process_bounds_what_a_client_sends(process):
    p = process(PIPELINE_CONTROL_TOKEN=TOKEN)
    code, body = request(f"{p.url}/activate?initial={'z' * 6000}", "POST", TOKEN)
    assert code == 400 and body["error_code"] == "InvalidActivateStatus" and len(body["message"]) < 200
    assert request(f"{p.url}/suspend", "POST", TOKEN, data=b"x" * (128 * 1024))[0] == 413


# -- 5. folder names ----------------------------------------------------------------------------------


def test_slugs_are_short_stable_and_distinct():
    uid = "0f0e0d0c-0000-4000-8000-000000000002"
    short = PipelineKey("default", "orders", uid)
    assert short.slug == f"default__orders__{uid}"  # existing folders keep their names
    long = PipelineKey("n" * 63, "p" * 253, uid)
    assert len(long.slug.encode()) <= MAX_SLUG and long.slug == PipelineKey("n" * 63, "p" * 253, uid).slug
    assert long.slug.endswith(f"__{uid}")
    others = {PipelineKey("n" * 63, "p" * 253, uid.replace("2", "3")), PipelineKey("n" * 63, "p" * 252 + "q", uid),
              PipelineKey("n" * 62, "p" * 254, uid), PipelineKey("n" * 63, "p" * 253, "u" * 300)}
    slugs = {long.slug} | {k.slug for k in others}
    assert len(slugs) == 5 and all(len(s.encode()) <= MAX_SLUG for s in slugs)


def test_the_local_backend_runs_and_clears_a_pipeline_with_the_longest_names(tmp_path):
    key = PipelineKey("n" * 63, "p" * 253, "0f0e0d0c-0000-4000-8000-000000000004")

    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "state")  # no debug routes
        try:
            endpoint = await _provision(backend, key, _spec(PIPELINE_INIT_SECONDS="0"))
            token = backend.control_token(endpoint)
            assert token is not None
            code, _ = await asyncio.to_thread(request, f"{endpoint}/debug/fail?mode=panic", "POST", token)
            assert code == 404
            assert await backend.storage_exists(key)
            await _deprovision(backend, key)
            await backend.clear_storage(key)
            assert not await backend.storage_exists(key)
            await backend.forget(key)
            assert not backend.folder(key).exists()
        finally:
            _kill_pipeline_processes_under(tmp_path)

    asyncio.run(scenario())


def test_name_lookups_that_hang_do_not_hold_up_the_operators_other_threaded_work(monkeypatch):
    """DNS that does not answer (the pipelines' ``.svc`` names) costs the status polls their timeout,
    never the event loop's default executor, which reading programs and the event store share."""
    release = __import__("threading").Event()
    real = socket.getaddrinfo

    def hanging(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".svc"):
            release.wait(30)  # a resolver waiting for a name server that does not answer
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)

    async def scenario() -> None:
        client = RuntimeClient(status_timeout=1.0)
        try:
            polls = [asyncio.create_task(client.status(f"http://p{i}.ns.svc:8080")) for i in range(40)]
            await asyncio.sleep(0.2)  # every lookup has started (or queued)
            # With the lookups in the default executor, these would wait for the name server (30 s).
            assert await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(lambda: 1) for _ in range(10))),
                                          5) == [1] * 10
            for observed in await asyncio.gather(*polls):
                assert observed.probe is RuntimeProbe.UNREACHABLE, observed
        finally:
            release.set()
            await client.close()
    asyncio.run(scenario())
