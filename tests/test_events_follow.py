"""Live monitor events: ``GET /v0/pipelines/{name}/events?follow=true`` against real operator processes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from .operator_harness import wait_for
from .test_api import call, grant
from .test_operator_lifecycle import FAST_PIPELINE, SQL

pytestmark = pytest.mark.apiserver


class Stream:
    """One follow request, read line by line (NDJSON) or event by event (server-sent events)."""

    def __init__(self, url: str, query: str, namespace: str, sse: bool = False, token: str | None = None) -> None:
        headers = {"Feldera-Tenant": namespace, "Accept": "text/event-stream" if sse else "application/x-ndjson"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.sse = sse
        self.response = urllib.request.urlopen(urllib.request.Request(
            f"{url}/v0/pipelines/orders/events?follow=true{query}", headers=headers), timeout=30)

    def next(self) -> tuple[str, Any]:
        """The next ("event" | "error", JSON) the stream sends, skipping keep-alives."""
        if not self.sse:
            while True:
                line = self.response.readline()
                assert line, "the stream ended"
                if line.strip():
                    body = json.loads(line)
                    return ("error" if "error_code" in body else "event"), body
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline().decode()
            assert line, "the stream ended"
            if line in ("\n", "\r\n"):
                if "data" in fields:
                    body = json.loads(fields["data"])
                    if fields.get("event") != "error":
                        assert fields["id"] == body["event_id"]
                    return fields.get("event", "event"), body
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.rstrip("\n").partition(": ")
                fields[name] = value

    def events(self, count: int) -> list[dict[str, Any]]:
        got = []
        while len(got) < count:
            kind, body = self.next()
            assert kind == "event", body
            got.append(body)
        return got

    def until(self, predicate: Any) -> list[dict[str, Any]]:
        got = []
        while not got or not predicate(got[-1]):
            kind, body = self.next()
            assert kind == "event", body
            got.append(body)
        return got


def ready(url: str) -> bool:
    try:
        return call(f"{url}/readyz")[0] == 200
    except urllib.error.URLError:  # not listening yet
        return False


def listed(url: str, namespace: str, selector: str = "status") -> list[dict[str, Any]]:
    """The list endpoint's events, oldest first."""
    status, body = call(f"{url}/v0/pipelines/orders/events?selector={selector}", tenant=namespace)
    assert status == 200, body
    return list(reversed(body))


def post(url: str, namespace: str, action: str) -> None:
    request = urllib.request.Request(f"{url}/v0/pipelines/orders/{action}", method="POST", data=b"",
                                     headers={"Feldera-Tenant": namespace})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status in (200, 202)


@pytest.fixture
def running_open(operators, pipelines, namespace, kstatus):
    """Starts an operator with an unauthenticated API and the given flags, and a Running pipeline 'orders'."""
    def start(*flags: str):
        op = operators(namespace, "--api-auth", "none", "--api-default-namespace", namespace, *flags)
        pipelines.create("orders", {"desiredStatus": "Provisioned", "program": {"sql": SQL},
                                    "deployment": {"env": FAST_PIPELINE}})
        kstatus.track(namespace, "orders")
        pipelines.wait_status("orders", op, deploymentStatus="Running")
        wait_for("the API", lambda: call(f"{op.api_url}/readyz")[0] == 200, 10, operator=op)
        return op
    return start


def test_follow_replays_then_streams_new_events_as_ndjson_and_sse(running_open, namespace, pipelines):
    op = running_open()
    url = op.api_url
    before = listed(url, namespace)
    ndjson = Stream(url, "", namespace)
    sse = Stream(url, "&selector=all", namespace, sse=True)
    assert ndjson.response.headers["Content-Type"].startswith("application/x-ndjson")
    assert sse.response.headers["Content-Type"].startswith("text/event-stream")
    assert ndjson.events(len(before)) == before  # the replay: oldest first, the list's items
    assert [e["event_id"] for e in sse.events(len(before))] == [e["event_id"] for e in before]

    post(url, namespace, "pause")
    paused = ndjson.until(lambda e: e["deployment_runtime_status"] == "Paused")
    full = sse.until(lambda e: e["deployment_runtime_status"] == "Paused")
    assert "deployment_error" in full[-1] and "deployment_error" not in paused[-1]  # the selector applies
    seen = before + paused
    # The stream gives an event as it is recorded; the list reads the store, whose writes are queued: it may
    # be a moment behind.
    after = wait_for("the list to hold the streamed events",
                     lambda: (events if len(events := listed(url, namespace)) >= len(seen) else None), 10)
    assert seen == after[:len(seen)]  # no duplicates, no gaps: the list endpoint's events in order
    assert [e["event_id"] for e in full] == [e["event_id"] for e in paused]

    # after= resumes right after that event (and an unknown one is refused).
    middle = len(seen) // 2
    resumed = Stream(url, f"&after={seen[middle]['event_id']}", namespace)
    assert resumed.events(len(seen) - middle - 1) == seen[middle + 1:]
    status, body = call(f"{url}/v0/pipelines/orders/events?follow=true&after={uuid.uuid4()}", tenant=namespace)
    assert status == 404 and body["error_code"] == "UnknownPipelineMonitorEvent"

    # The list endpoint is unchanged without follow.
    status, plain = call(f"{url}/v0/pipelines/orders/events", tenant=namespace)
    assert status == 200 and isinstance(plain, list)


def test_follow_is_authorised_as_the_list(operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace)
    grant(cluster, namespace, "alice", "get,list")
    pipelines.create("orders", {"program": {"sql": SQL}})
    kstatus.track(namespace, "orders")
    wait_for("the API", lambda: ready(op.api_url), 30, operator=op)
    wait_for("the first event", lambda: call(f"{op.api_url}/v0/pipelines/orders/events",
                                             cluster.plane.users["alice"].token, namespace)[1], 30, operator=op)
    status, body = call(f"{op.api_url}/v0/pipelines/orders/events?follow=true",
                        cluster.plane.users["bob"].token, namespace)
    assert status == 403 and body["error_code"] == "Forbidden"
    status, body = call(f"{op.api_url}/v0/pipelines/orders/events?follow=true", None, namespace)
    assert status == 401
    stream = Stream(op.api_url, "", namespace, token=cluster.plane.users["alice"].token)
    assert stream.events(1)[0]["program_status"]


def test_follow_limits_and_shutdown_with_open_streams(running_open, namespace):
    op = running_open("--api-follow-streams-per-client", "2")
    url = op.api_url
    resumed = Stream(url, "", namespace)
    # Two streams per client address, then 429.
    second = Stream(url, "", namespace)
    status, body = call(f"{url}/v0/pipelines/orders/events?follow=true", tenant=namespace)
    assert status == 429 and body["error_code"] == "TooManyStreams"

    # The operator stops promptly with streams open, which end.
    started = time.monotonic()
    assert op.stop(timeout=15) == 0
    stopped = time.monotonic() - started
    assert stopped < 10, f"the operator took {stopped:.1f}s to stop with open streams"
    for stream in (resumed, second):
        with pytest.raises(AssertionError, match="the stream ended"):
            while True:
                stream.next()
