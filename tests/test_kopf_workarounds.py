"""What the operator changes in Kopf's private modules (pipeline_operator/controller/kopf_workarounds.py), checked
against the Kopf installed: the private functions it wraps or replaces are there with the signatures recorded for
Kopf 1.45.2, each workaround takes effect (a watched Pipeline reaches a handler, and the followers of Kopf's
watch, without managedFields; an answer nested too deep comes through marked, not as a RecursionError), and no
other module of the operator imports Kopf's private modules. A Kopf release that changes any of this fails here."""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import threading
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import watching as kopf_watching
from kopf.testing import KopfRunner

from pipeline_operator import jsondepth
from pipeline_operator.controller import kopf_workarounds
from pipeline_operator.models import API_GROUP, API_VERSION, PLURAL

from .hostile_specs import pipeline_json
from .test_operator_lifecycle import spec

OPERATOR = Path(__file__).resolve().parents[1] / "operator" / "pipeline_operator"
WORKAROUNDS = OPERATOR / "controller" / "kopf_workarounds.py"
log = logging.getLogger(__name__)


@pytest.fixture
def pristine_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf's module attributes the workarounds replace, put back after the test."""
    for module, name in ((kopf_watching, "continuous_watch"), (kopf_api, "request"), (kopf_api, "json")):
        monkeypatch.setattr(module, name, getattr(module, name))


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(inspect.unwrap(function)).parameters)


def test_kopf_has_the_private_functions_the_workarounds_rely_on():
    # Wrapped: the watch stream that lists then watches, called by its module-level name, with its bookmark
    # (Kopf's own functions, also once the workarounds are applied in this process: inspect.unwrap).
    listing = inspect.unwrap(kopf_watching.continuous_watch)
    assert inspect.isasyncgenfunction(listing)
    assert _parameters(listing) == ["settings", "resource", "namespace", "operator_pause_waiter"]
    watcher = inspect.getsource(kopf_watching.infinite_watch)
    assert "stream = continuous_watch(" in watcher
    assert kopf_watching.Bookmark.LISTED in kopf_watching.Bookmark
    source = inspect.getsource(listing)
    assert "yield {'type': None, 'object': obj}" in source and "yield Bookmark.LISTED" in source
    # Replaced: every call of Kopf's client goes through `request` by its module-level name; lists are
    # `response.json()`, watch streams `json.loads` of the module's own `json`.
    assert _parameters(kopf_api.request) == ["method", "url", "settings", "payload", "headers", "timeout",
                                             "backoffs", "context", "logger"]
    assert "await request(" in inspect.getsource(kopf_api.get)
    assert "await response.json()" in inspect.getsource(kopf_api.get)
    assert "await request(" in inspect.getsource(kopf_api.stream)
    assert "json.loads(line" in inspect.getsource(kopf_api.stream)


def _private_kopf_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found += [f"{path.relative_to(OPERATOR)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] == "kopf" and any(part.startswith("_") for part in name.split(".")[1:])]
    return found


def test_only_the_workarounds_module_imports_kopfs_private_modules():
    assert _private_kopf_imports(WORKAROUNDS)  # the walk finds what it looks for
    others = [hit for path in sorted(OPERATOR.rglob("*.py")) if path != WORKAROUNDS
              for hit in _private_kopf_imports(path)]
    assert not others, "Kopf's private modules are imported only by controller/kopf_workarounds.py:\n" + \
        "\n".join(others)


def test_an_answer_nested_too_deep_comes_through_kopfs_client_marked(pristine_kopf):
    deep = pipeline_json("deep", "ns", {}, deep_at=("spec2",))

    async def main() -> tuple[BaseException | None, Any, Any]:
        async def answer(request: web.Request) -> web.Response:
            body = deep if request.path == "/list" else '{"type":"ADDED","object":' + deep + "}\n"
            return web.Response(text=body, content_type="application/json")
        app = web.Application()
        app.router.add_get("/{what}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async def request(method: str, url: str, **_: Any) -> aiohttp.ClientResponse:
                return await session.request(method, f"http://127.0.0.1:{port}{url}")
            kopf_api.request = request  # Kopf's authenticated request, stood in for
            settings = kopf.OperatorSettings()
            try:
                await kopf_api.get("/list", settings=settings, logger=log)
                failure = None
            except RecursionError as exc:  # what Kopf does without the workaround
                failure = exc
            kopf_workarounds.bound_json_depth_in_kopf()
            kopf_workarounds.bound_json_depth_in_kopf()  # once is enough
            listed = await kopf_api.get("/list", settings=settings, logger=log)
            watched = [event async for event in kopf_api.stream("/watch", settings=settings, logger=log)]
        await runner.cleanup()
        return failure, listed, watched

    failure, listed, watched = asyncio.run(main())
    assert isinstance(failure, RecursionError)
    assert jsondepth.undecodable(listed) and listed["metadata"]["name"] == "deep"
    assert len(watched) == 1 and jsondepth.undecodable(watched[0]["object"])
    assert kopf_api.json.dumps({"a": 1}) == '{"a": 1}'  # the rest of the module is json's


class Follower:
    """What a follower of Kopf's watch heard, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    def listing(self, group: str, plural: str, namespace: str | None) -> None:
        self.heard.append(("listing", plural, namespace))

    def event(self, group: str, plural: str, namespace: str | None, kind: str | None, obj: dict[str, Any]) -> None:
        self.heard.append(("event", kind, obj["metadata"]["name"], "managedFields" in obj["metadata"]))

    def listed(self, group: str, plural: str, namespace: str | None) -> None:
        self.heard.append(("listed", plural, namespace))


@pytest.mark.apiserver
def test_kopfs_handlers_and_followers_get_pipelines_without_managed_fields(
        pristine_kopf, pipelines, namespace, cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    pipelines.create("listed", spec())
    registry = kopf.OperatorRegistry()
    handled: dict[str, dict[str, Any]] = {}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True
        settings.posting.enabled = False

    arrived = {"listed": threading.Event(), "watched": threading.Event()}

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    async def seen(body: kopf.Body, **_: Any) -> None:
        handled[body["metadata"]["name"]] = dict(body["metadata"])
        arrived[body["metadata"]["name"]].set()

    follower = Follower()
    kopf_workarounds.apply()
    # Kopf's own test runner: `kopf run` on a thread of its own, with this registry, stopped on leaving.
    with kopf_workarounds.following_kopf_watches(follower), \
            KopfRunner(["run", "--standalone", "--namespace", namespace], registry=registry, timeout=60) as runner:
        assert arrived["listed"].wait(30), runner.output
        pipelines.create("watched", spec())
        assert arrived["watched"].wait(30), runner.output
    assert runner.exit_code == 0 and runner.exception is None, runner.output
    assert set(handled) == {"listed", "watched"}
    assert not [name for name, meta in handled.items() if "managedFields" in meta]
    assert follower.heard[:3] == [("listing", PLURAL, namespace), ("event", None, "listed", False),
                                  ("listed", PLURAL, namespace)]
    assert ("event", "ADDED", "watched", False) in follower.heard[3:]

