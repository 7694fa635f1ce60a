"""``/ui``: the pipelines page and one pipeline's status timeline, rendered by headless Chromium
against a real operator, and the page's escaping and policy without a cluster."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import types
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline_operator.api import ApiServer
from pipeline_operator.api.ui import LAST_EVENTS, segments
from pipeline_operator.core.lifecycle import PipelineState
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import ErrorResponse, ResourcesStatus, RuntimeStatus

from .operator_harness import wait_for
from .test_api_unit import deps
from .test_operator_lifecycle import debug_fail, spec

CHROMIUM_TIMEOUT = 60.0
# Waiting for another apt-get or dpkg (the suite runs in several processes; as image/build_image.py does).
APT_GET = ("apt-get", "-o", "DPkg::Lock::Timeout=600")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's ``chromium``: installed with apt-get when missing and running as root (as
    image/build_image.py installs its tools). Where it cannot be had the browser tests are skipped,
    except in CI (``CI=true``): there that is a failure, not a silent skip."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*APT_GET, "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run([*APT_GET, "update", "-q"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        why = "Debian's chromium is not installed (as root: apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    return found


def browse(chromium: str, profile: Path, url: str, *args: str) -> str:
    """One headless Chromium run (its own profile: runs of other tests do not share a lock); its stdout."""
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={profile}", *args, url],
                            capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class Page(HTMLParser):
    """What a test reads of a rendered page: links, the timeline's segments (band, status, title),
    the latched error's text and the rows of the events table."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.segments: list[tuple[str, str, str]] = []
        self.error = ""
        self.events = 0
        self.scripts = 0
        self.pipelines: dict[str, list[str]] = {}  # the list page: name -> the row's cells
        self._row: list[str] | None = None
        self._segment: tuple[str, str] | None = None
        self._in_title = self._in_error = False
        self._title = ""
        self._error_depth = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag == "script":
            self.scripts += 1
        if tag == "g" and a.get("class") == "segment":
            self._segment = (a.get("data-band") or "", a.get("data-status") or "")
        if tag == "title" and self._segment is not None:
            self._in_title, self._title = True, ""
        if tag == "tr" and a.get("class") == "event":
            self.events += 1
        if tag == "tr" and a.get("class") == "pipeline":
            self._row = self.pipelines.setdefault(a.get("data-name") or "", [])
        if tag == "td" and self._row is not None:
            self._row.append("")
        if a.get("id") == "error":
            self._in_error = True
        if self._in_error:
            self._error_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "title" and self._in_title and self._segment is not None:
            self.segments.append((*self._segment, self._title))
            self._in_title, self._segment = False, None
        if self._in_error:
            self._error_depth -= 1
            self._in_error = self._error_depth > 0

    def handle_data(self, data: str) -> None:
        if self._row:
            self._row[-1] += data
        if self._in_title:
            self._title += data
        if self._in_error:
            self.error += data

    def statuses(self, band: str) -> list[str]:
        return [status for b, status, _ in self.segments if b == band]


def stored_events(op, namespace: str, name: str) -> list[dict]:
    request = urllib.request.Request(f"{op.api_url}/v0/pipelines/{name}/events?selector=all",
                                     headers={"Feldera-Tenant": namespace})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


@pytest.mark.apiserver
def test_the_page_shows_the_states_a_pipeline_went_through(operators, pipelines, namespace, kstatus, chromium,
                                                          tmp_path):
    op = operators(namespace, "--api-auth", "none")
    pipelines.create("orders", spec())
    uid = pipelines.create("fragile", spec())["metadata"]["uid"]
    kstatus.track(namespace, "orders")
    kstatus.track(namespace, "fragile")
    pipelines.wait_status("orders", op, deploymentStatus="Running")
    pipelines.wait_status("fragile", op, deploymentStatus="Running")
    debug_fail(op, namespace, "fragile", uid, "exit")
    pipelines.patch_spec("orders", {"runtimeDesiredStatus": "Paused"})
    pipelines.wait_status("orders", op, deploymentStatus="Paused")
    pipelines.patch_spec("orders", {"desiredStatus": "Stopped"})
    pipelines.wait_status("orders", op, deploymentStatus="Stopped", deploymentResourcesDesiredStatus="Stopped")
    pipelines.wait_status("fragile", op, deploymentStatus="Stopped")
    # The page reads the event store, which is written behind the status: wait until it holds the end.
    wait_for("the stored events", lambda: stored_events(op, namespace, "orders")[0]
             ["deployment_resources_status"] == "Stopped"
             and stored_events(op, namespace, "fragile")[0]["deployment_has_error"], 30, operator=op)

    listing = Page(browse(chromium, tmp_path / "profile", f"{op.api_url}/ui?namespace={namespace}", "--dump-dom"))
    assert f"/ui/pipelines/orders?namespace={namespace}" in listing.links
    assert f"/ui/pipelines/fragile?namespace={namespace}" in listing.links
    # pipeline, status, resources, runtime, storage, program, error
    assert listing.pipelines == {"orders": ["orders", "Stopped", "Stopped", "—", "InUse", "Success", ""],
                                 "fragile": ["fragile", "Stopped", "Stopped", "—", "InUse", "Success",
                                             "RunnerCheckError"]}

    orders = Page(browse(chromium, tmp_path / "profile", f"{op.api_url}/ui/pipelines/orders?namespace={namespace}",
                         "--dump-dom"))
    resources = orders.statuses("resources")
    assert resources[0] == "Stopped" and resources[-1] == "Stopped", orders.segments
    assert {"Provisioning", "Provisioned", "Stopping"} <= set(resources), orders.segments
    runtime = orders.statuses("runtime")
    assert runtime.index("Running") < runtime.index("Paused"), orders.segments
    titles = [title for band, status, title in orders.segments if (band, status) == ("runtime", "Paused")]
    assert titles and titles[0].startswith("runtime: Paused from "), titles
    assert not orders.statuses("error") and not orders.error and orders.scripts == 0
    assert orders.events == min(LAST_EVENTS, len(stored_events(op, namespace, "orders")))

    fragile = Page(browse(chromium, tmp_path / "profile",
                          f"{op.api_url}/ui/pipelines/fragile?namespace={namespace}", "--dump-dom"))
    assert "Latched error" in fragile.error and "RunnerCheckError" in fragile.error, fragile.error
    assert fragile.statuses("error") == ["RunnerCheckError"], fragile.segments
    assert "Running" in fragile.statuses("runtime")

    screenshot = tmp_path / "orders-timeline.png"
    browse(chromium, tmp_path / "profile", f"{op.api_url}/ui/pipelines/orders?namespace={namespace}",
           f"--screenshot={screenshot}", "--window-size=1200,900", "--hide-scrollbars")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    print(f"screenshot of the timeline: {screenshot}")
    op.assert_alive()


# -- without a cluster ------------------------------------------------------------------------------


def _event(at: float, resources: str, runtime: str | None, error: dict | None = None) -> dict:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return {"event_id": f"00000000-0000-0000-0000-{int(at * 1000):012d}",
            "recorded_at": (start + dt.timedelta(seconds=at)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "deployment_resources_status": resources, "deployment_resources_desired_status": "Provisioned",
            "deployment_runtime_status": runtime, "deployment_runtime_desired_status": runtime,
            "deployment_error": error, "deployment_has_error": error is not None,
            "program_status": "Success", "storage_status": "InUse"}


def test_segments_merge_runs_of_a_status_and_leave_gaps_where_there_is_none():
    events = [_event(0, "Stopped", None), _event(1, "Provisioning", None), _event(2, "Provisioned", "Running"),
              _event(3, "Provisioned", "Running"), _event(5, "Provisioned", "Paused"), _event(6, "Stopping", None),
              _event(7, "Stopped", None, {"error_code": "RunnerCheckError", "message": "exited"})]
    now = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.UTC)
    found = segments(list(reversed(events)), now)  # the store's order, newest first
    by_band = {band: [(s.label, s.start.second, s.end.second) for s in found if s.band == band]
               for band in ("resources", "runtime", "error")}
    assert by_band["resources"] == [("Stopped", 0, 1), ("Provisioning", 1, 2), ("Provisioned", 2, 6),
                                    ("Stopping", 6, 7), ("Stopped", 7, 10)]
    assert by_band["runtime"] == [("Running", 2, 5), ("Paused", 5, 6)]
    assert by_band["error"] == [("RunnerCheckError", 7, 10)]
    assert next(s for s in found if s.band == "error").detail == "exited"


class Events:
    def __init__(self, events: list[dict]) -> None:
        self.body = json.dumps(events)

    def list_json(self, uid: str, selector: str = "status") -> str:
        assert selector == "all"
        return self.body


def _serve(ui_enabled: bool, paths: list[str], auth: str = "none") -> list[tuple[int, dict[str, str], str]]:
    hostile = "<script>alert(1)</script>"
    key = PipelineKey("ns", "orders", "uid-orders")
    state = PipelineState(deployment_resources_status=ResourcesStatus.STOPPED,
                          deployment_error=ErrorResponse(message=f"failed: {hostile}", error_code="RunnerCheckError",
                                                         details={"why": hostile}))
    monitor = types.SimpleNamespace(key=key, obj={"metadata": {"name": "orders", "uid": key.uid}, "status": {}},
                                    state=state)
    events = [_event(0, "Provisioned", RuntimeStatus.RUNNING.value),
              _event(1, "Stopped", None, {"error_code": hostile, "message": hostile})]
    server = ApiServer(deps({("ns", "orders"): monitor}, Events(events)), auth=auth, default_namespace="ns",
                       ui_enabled=ui_enabled)

    async def scenario():
        async with TestClient(TestServer(server.app())) as client:
            answers = []
            for path in paths:
                response = await client.get(path)
                answers.append((response.status, dict(response.headers), await response.text()))
            return answers
    return asyncio.run(scenario())


def test_the_page_escapes_what_users_wrote_and_forbids_scripts():
    answers = _serve(True, ["/ui", "/ui/pipelines/orders", "/ui/pipelines/missing", "/ui?namespace=Not_A_Namespace"])
    (listed, _, listing), (status, headers, page), missing, invalid = answers
    assert listed == 200 and 'href="/ui/pipelines/orders?namespace=ns"' in listing
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert "script-src 'none'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    assert base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode() in policy
    assert "<script" not in page and page.count("&lt;script&gt;") >= 4  # message, details, error band, table
    assert Page(page).statuses("error") == ["<script>alert(1)</script>"]  # the attribute, unescaped by the parser
    assert missing[0] == 404 and json.loads(missing[2])["error_code"] == "UnknownPipelineName"
    assert invalid[0] == 400 and json.loads(invalid[2])["error_code"] == "InvalidTenant"


def test_no_api_ui_serves_no_page():
    (status, _, body), = _serve(False, ["/ui"])
    assert status == 404 and json.loads(body)["error_code"] == "NotFound"


def test_the_page_needs_the_apis_bearer_token():
    answers = _serve(True, ["/ui", "/ui/pipelines/orders"], auth="kubernetes")
    assert [(status, json.loads(body)["error_code"]) for status, _, body in answers] == [(401, "Unauthorized")] * 2
