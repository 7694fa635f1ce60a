"""One tenant cannot starve the HTTP API: fair shares of the request slots per user and per namespace, a
share for the requests that wait for a pipeline, a bounded wait (503 ``ApiBusy`` with ``Retry-After``), and
streams and uploads outside the request slots with bounds of their own.

The API's handlers run in this process, on a real HTTP server on loopback, with tokens and permissions
answered by a stand-in for the API server's TokenReview and SubjectAccessReview (tests/test_api_hardening.py
checks the real ones), and pipelines that never answer until the test lets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import ClientSession, web

from pipeline_operator.api import ApiDeps, ApiServer, Metrics
from pipeline_operator.api import interaction as interaction_module
from pipeline_operator.api.errors import ApiError
from pipeline_operator.api.slots import FairSlots, StreamSlots
from pipeline_operator.feldera.runtime_client import RuntimeClient
from pipeline_operator.identity import PipelineKey

from .test_api_unit import Registry
from .test_interaction import RUNNING

# token -> (user, the namespace the user may act in)
TENANTS = {"t-alice": ("alice", "a"), "t-alice2": ("alice2", "a"), "t-carol": ("carol", "c"),
           "t-eve": ("eve", "e"), "t-bob": ("bob", "b")}


class Reviews:
    """The API server as the API's checks see it: each token names a user, who may do anything in their own
    namespace (``allow`` decides otherwise, e.g. for non-resource URLs); ``reviews`` counts the calls."""

    def __init__(self, tenants: dict[str, tuple[str, str]] = TENANTS,
                 allow: Callable[[str, dict[str, Any]], bool] | None = None) -> None:
        self.tenants = tenants
        self.allow = allow or (lambda user, attributes: any(
            u == user and ns == attributes.get("namespace") for u, ns in tenants.values()))
        self.auth = types.SimpleNamespace(create_token_review=self.token_review)
        self.authz = types.SimpleNamespace(create_subject_access_review=self.access_review)
        self.reviews: list[dict[str, Any]] = []

    async def call(self, fn: Callable[[dict[str, Any]], Any], body: dict[str, Any], **kwargs: Any) -> Any:
        self.reviews.append(body)
        return fn(body)

    def token_review(self, body: dict[str, Any]) -> Any:
        found = self.tenants.get(body["spec"]["token"])
        user = types.SimpleNamespace(username=found[0], groups=["dev"], uid="", extra={}) if found else None
        return types.SimpleNamespace(status=types.SimpleNamespace(
            authenticated=found is not None, user=user, error=None,
            audiences=body["spec"].get("audiences") or ["https://kubernetes.default.svc"]))

    def access_review(self, body: dict[str, Any]) -> Any:
        spec = body["spec"]
        attributes = spec.get("resourceAttributes") or spec.get("nonResourceAttributes") or {}
        return types.SimpleNamespace(status=types.SimpleNamespace(allowed=self.allow(spec["user"], attributes)))


class Served:
    def __init__(self, namespace: str, name: str) -> None:
        self.key = PipelineKey(namespace, name, f"uid-{namespace}-{name}")
        self.obj = {"metadata": {"name": name, "uid": self.key.uid}, "status": {}}
        self.state = RUNNING

    def adopt(self, obj: Any) -> None:
        pass

    def poke(self) -> None:
        pass

    def metrics_sample(self) -> None:
        return None

    def forwarding(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def settled(self) -> None:
        pass

    async def wait_until(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        return True


class Events:
    def list_json(self, uid: str, selector: str = "status") -> str:
        return "[]"

    def count(self, uid: str | None = None) -> int:
        return 0


PIPELINES = sorted({(ns, "p") for _, ns in TENANTS.values()} | {("a", "q")})


def fair_api(endpoints: dict[tuple[str, str], str], kube: Any = None, **kwargs: Any) -> ApiServer:
    """An API serving :data:`PIPELINES`, each at its own address (the operator asks at most 4 requests of one
    pipeline at once)."""
    deps = ApiDeps(pipelines=Registry({(ns, name): Served(ns, name) for ns, name in PIPELINES}),  # type: ignore[arg-type]
                   events=Events(), kube=kube or Reviews(), endpoint=lambda key: endpoints[(key.namespace, key.name)],
                   runtime=RuntimeClient(token_for=lambda e: "pipeline-token"), artifact=lambda digest: None,
                   metrics=Metrics())
    return ApiServer(deps, default_namespace="a", **kwargs)


@contextlib.asynccontextmanager
async def listening(app: web.Application, ports: int = 1) -> AsyncIterator[list[str]]:
    """``app`` on ``ports`` loopback ports, cancelling its handlers when their clients go, as the operator serves
    it: their URLs."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    for _ in range(ports):
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield [f"http://127.0.0.1:{address[1]}" for address in runner.addresses]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def held_pipelines() -> AsyncIterator[tuple[dict[tuple[str, str], str], asyncio.Event, list[str]]]:
    """:data:`PIPELINES`, answering nothing (reading no body) until the event is set: their URLs, the event, and
    the paths asked of them so far."""
    release = asyncio.Event()
    asked: list[str] = []

    async def hold(request: web.Request) -> web.Response:
        asked.append(request.path)
        await release.wait()
        return web.json_response({"answered": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hold)
    async with listening(app, len(PIPELINES)) as urls:
        try:
            yield dict(zip(PIPELINES, urls, strict=True)), release, asked
        finally:
            release.set()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Client:
    """Requests to the API as one tenant, each timed."""

    def __init__(self, session: ClientSession, base: str, token: str) -> None:
        self.session, self.base = session, base
        self.user, self.namespace = TENANTS[token]
        self.headers = {"Authorization": f"Bearer {token}", "Feldera-Tenant": self.namespace}

    async def __call__(self, method: str, path: str, data: Any = None) -> tuple[int, Any, dict[str, str], float]:
        started = time.monotonic()
        async with self.session.request(method, f"{self.base}{path}", headers=self.headers, data=data) as r:
            body = await r.json(content_type=None)
            return r.status, body, dict(r.headers), time.monotonic() - started

    def later(self, method: str, path: str, data: Any = None) -> asyncio.Task[tuple[int, Any, dict[str, str], float]]:
        return asyncio.ensure_future(self(method, path, data))


WAIT = 0.5  # the API's bound on waiting for a slot, in these tests


def busy(answer: tuple[int, Any, dict[str, str], float], scope: str) -> None:
    """A 503 ApiBusy for ``scope``, answered once the wait bound passed, with Retry-After."""
    status, body, headers, took = answer
    assert (status, body["error_code"], body["details"]["scope"]) == (503, "ApiBusy", scope), body
    assert int(headers["Retry-After"]) >= 1 and set(body) == {"message", "error_code", "details"}
    assert WAIT * 0.9 <= took < WAIT + 3, took


def test_one_tenant_cannot_take_the_slots_another_needs(monkeypatch):
    """8 slots: 2 per user, 2 per namespace, 4 for requests that wait for a pipeline; 8 upload slots, 2 per user.
    alice's requests to a pipeline that never answers, and her uploads that never end, leave bob's calls
    answered at once."""
    monkeypatch.setattr(interaction_module, "UPLOADS", 8)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with held_pipelines() as (pipelines, release, asked), contextlib.AsyncExitStack() as stack:
            server = fair_api(pipelines, max_concurrency=8, queue_timeout=WAIT)
            (base,) = await stack.enter_async_context(listening(server.app()))
            session = await stack.enter_async_context(ClientSession())
            alice, alice2, carol, eve, bob = (Client(session, base, t) for t in TENANTS)
            held = [alice.later("GET", "/v0/pipelines/p/stats") for _ in range(2)]
            await until(lambda: len(asked) == 2, "alice's two requests to reach the pipeline")
            # alice has her two: a third waits for one of hers, then 503 (a read of her own, too).
            out["alice"] = await alice("GET", "/v0/pipelines/p/events")
            # Another user of her namespace: the namespace has its two.
            out["alice2"] = await alice2("GET", "/v0/pipelines/p/stats")
            held += [carol.later("GET", "/v0/pipelines/p/stats") for _ in range(2)]
            await until(lambda: len(asked) == 4, "carol's two requests to reach the pipeline")
            # Half of the slots wait for pipelines: eve's checkpoint would be the fifth; her read is served.
            out["eve"] = await eve("POST", "/v0/pipelines/p/checkpoint")
            out["eve read"] = await eve("GET", "/v0/pipelines/p/events")
            # Uploads that never end hold no request slot (and no slot of alice's): bob is served at once.
            uploads = [alice.later("POST", "/v0/pipelines/q/ingress/t", data=endless()) for _ in range(2)]
            await until(lambda: len(asked) == 6, "alice's uploads to reach the pipeline")
            out["upload"] = await alice("POST", "/v0/pipelines/q/ingress/t", data=b"x")  # her third
            out["bob"] = await bob("GET", "/v0/pipelines/p/events")
            out["in flight"] = server.metrics.in_flight._value.get()
            out["healthz"] = (await session.get(f"{base}/healthz")).status
            # A request that waits gets the slot that frees within the bound.
            waiting = alice.later("GET", "/v0/pipelines/p/events")
            await until(lambda: server.gate._identities.waiting, "alice's request to wait")
            release.set()
            out["served after waiting"] = await waiting
            out["held"] = [(await task)[0] for task in held + uploads]
            out["busy"] = {(pool, scope): server.metrics.registry.get_sample_value(
                "pipeline_operator_api_busy_total", {"pool": pool, "scope": scope}) or 0
                for pool in ("requests", "uploads") for scope in ("identity", "namespace", "long", "all")}
        return out

    out = asyncio.run(asyncio.wait_for(scenario(), 60))
    busy(out["alice"], "identity")
    assert "alice" in out["alice"][1]["message"] and out["alice"][1]["details"]["limit"] == 2
    busy(out["alice2"], "namespace")
    busy(out["eve"], "long")
    busy(out["upload"], "identity")
    assert "uploads" in out["upload"][1]["message"]
    for read in ("eve read", "bob"):
        status, body, _, took = out[read]
        assert (status, body) == (200, []) and took < WAIT, (read, out[read])
    assert out["in flight"] == 4 and out["healthz"] == 200  # alice's 2 and carol's 2; no upload
    status, _, _, took = out["served after waiting"]
    assert status == 200 and took < WAIT + 3
    assert out["held"] == [200] * 6
    assert {k: v for k, v in out["busy"].items() if v} == {
        ("requests", "identity"): 1, ("requests", "namespace"): 1, ("requests", "long"): 1, ("uploads", "identity"): 1}


async def endless() -> AsyncIterator[bytes]:
    yield b"1,2\n"
    await asyncio.Event().wait()


def test_a_queue_of_waiting_requests_is_bounded_too():
    """Behind a tenant's full share wait at most as many of its requests as the share: the next is refused at
    once (it would wait only to be refused), and a client that goes away while waiting leaves no trace."""
    async def scenario() -> tuple[list[int], float, dict[Any, int], int]:
        slots = FairSlots(10, {"identity": 1}, 5.0, "requests")
        async with slots.slot({"identity": "alice"}):
            waiting = asyncio.ensure_future(_hold(slots, "alice"))
            await until(lambda: slots.waiting, "the first to wait")
            started = time.monotonic()
            with pytest.raises(ApiError) as refused:
                async with slots.slot({"identity": "alice"}):
                    pass
            took = time.monotonic() - started
            assert refused.value.details["scope"] == "identity" and refused.value.details["waited_seconds"] == 0
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            async with slots.slot({"identity": "bob"}):  # another user: at once
                pass
        return [refused.value.status], took, dict(slots.waiting), slots.held
    statuses, took, waiting, held = asyncio.run(scenario())
    assert statuses == [503] and took < 0.1 and waiting == {} and held == 0


def test_a_freed_slot_goes_to_the_longest_waiter_allowed_to_have_it():
    """2 slots, 1 per user: alice (at her cap) waits first, carol second; bob's slot, freed, goes to carol, not
    to alice; alice's, freed, goes to her own next request."""
    async def scenario() -> list[str]:
        slots = FairSlots(2, {"identity": 1}, 5.0, "requests")
        got: list[str] = []
        ends = {name: asyncio.Event() for name in ("alice", "bob", "alice-again", "carol")}

        async def use(name: str, identity: str) -> None:
            async with slots.slot({"identity": identity}):
                got.append(name)
                await ends[name].wait()
        tasks = [asyncio.ensure_future(use("alice", "alice")), asyncio.ensure_future(use("bob", "bob"))]
        await until(lambda: len(got) == 2, "both slots to be taken")
        tasks.append(asyncio.ensure_future(use("alice-again", "alice")))
        await until(lambda: len(slots.waiting) == 1, "alice's second request to wait")
        tasks.append(asyncio.ensure_future(use("carol", "carol")))
        await until(lambda: slots.waiting.get(("identity", "carol")), "carol to wait")
        ends["bob"].set()
        await until(lambda: len(got) == 3, "bob's slot to be given")
        ends["alice"].set()
        await until(lambda: len(got) == 4, "alice's slot to be given")
        for end in ends.values():
            end.set()
        await asyncio.gather(*tasks)
        assert slots.held == 0 and slots.counts == {} and slots.waiting == {}
        return got
    assert asyncio.run(scenario()) == ["alice", "bob", "carol", "alice-again"]


async def _hold(slots: FairSlots, identity: str) -> None:
    async with slots.slot({"identity": identity}):
        await asyncio.Event().wait()


def test_streams_are_bounded_per_user_and_per_namespace_not_only_per_address():
    slots = StreamSlots(32, 4, "log, egress and query streams", "close one and try again")
    with contextlib.ExitStack() as stack:
        for i in range(8):  # a quarter of 32: from eight addresses
            stack.enter_context(slots.slot(f"10.0.0.{i}", "alice", "a"))
        with pytest.raises(ApiError) as by_user:
            stack.enter_context(slots.slot("10.0.0.9", "alice", "z"))
        with pytest.raises(ApiError) as by_namespace:
            stack.enter_context(slots.slot("10.0.0.9", "alice2", "a"))
        stack.enter_context(slots.slot("10.0.0.9", "bob", "b"))  # another tenant still gets one
    assert (by_user.value.status, by_user.value.error_code) == (429, "TooManyStreams")
    assert "for user 'alice'" in by_user.value.message and by_user.value.details == {"limit": 8}
    assert "in namespace 'a'" in by_namespace.value.message
    assert slots.open == 0 and slots.counts == {}
