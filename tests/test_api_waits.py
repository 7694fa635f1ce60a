"""The HTTP API's bounded waits, in virtual loop time (``looptime``, as Kopf's own tests): an answer that waits
for the monitoring loop (its first pass, a status write in flight) or, on a standby, for the leader's write to
come through the watch. Each wait's bound is part of the contract; the loop's clock shows it was kept to the
second, and no test sleeps through it."""

from __future__ import annotations

import asyncio
import datetime as dt
import types
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import looptime
import pytest

from pipeline_operator.api import writes
from pipeline_operator.api.errors import ApiError
from pipeline_operator.controller.pipeline_cache import CachedPipeline
from pipeline_operator.core.lifecycle import Decision, Desired, PipelineState
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import ResourcesDesiredStatus, ResourcesStatus
from pipeline_operator.reconcile import reconciler
from pipeline_operator.reconcile.reconciler import PipelineMonitor

T = TypeVar("T")
KEY = PipelineKey("ns", "p", "uid-p")
OBJ = {"metadata": {"name": KEY.name, "namespace": KEY.namespace, "uid": KEY.uid, "resourceVersion": "1"}}
STOPPING = PipelineState(deployment_resources_status=ResourcesStatus.STOPPING,
                         deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED)
STOPPED = STOPPING.model_copy(update={"deployment_resources_status": ResourcesStatus.STOPPED})


def in_loop_time(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario`` on an event loop whose clock starts at 0 and jumps over every wait."""
    loop = looptime.new_event_loop(start=0.0)  # enabled from the start
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def monitor_writing(answered: asyncio.Event | None, committed: asyncio.Event) -> PipelineMonitor:
    """A loop in state Stopping whose next status write reaches the API server (``committed``) and then waits
    for ``answered`` before its answer comes back (never, if None)."""
    async def write_status(key: PipelineKey, rv: str, body: dict[str, Any], routine: bool) -> dict[str, Any]:
        committed.set()
        await (answered or asyncio.Event()).wait()
        return {**OBJ, "metadata": {**OBJ["metadata"], "resourceVersion": "2"}, "status": body}

    ctx = types.SimpleNamespace(write_status=write_status, in_flight=set(), metrics=None,
                                settings=types.SimpleNamespace(history_limit=10))
    monitor = PipelineMonitor(ctx, KEY)  # type: ignore[arg-type]
    monitor.see(OBJ)
    monitor.state = STOPPING
    return monitor


def record_stopped(monitor: PipelineMonitor) -> asyncio.Task[None]:
    decision = Decision(steps=(), state=STOPPED, actions=(), notes=())
    return asyncio.create_task(monitor.record(Desired(), decision, [], dt.datetime.now(dt.UTC)))


def test_an_answer_waits_for_the_status_write_a_client_may_already_have_seen():
    """A client that saw the status ``Stopped`` through the API server (``kubectl wait``, a watch) and then asks
    for ``/start`` at once must not be refused with "still stopping": the API server has the write, but the loop
    has not read its answer yet. The API's state waits for the write in flight, then answers from it."""
    async def scenario() -> tuple[float, PipelineState]:
        committed, answered = asyncio.Event(), asyncio.Event()
        monitor = monitor_writing(answered, committed)
        recording = record_stopped(monitor)
        await committed.wait()
        loop = asyncio.get_running_loop()
        asked = loop.time()
        asking = asyncio.create_task(writes.served_state(monitor))  # the client's /start, after its watch
        loop.call_later(3.0, answered.set)  # the write's answer reaches the loop 3 s later
        state = await asking
        await recording
        return loop.time() - asked, state

    waited, state = in_loop_time(scenario)
    assert waited == pytest.approx(3.0), "the API answered from the state before the write the client saw"
    assert state.deployment_resources_status is ResourcesStatus.STOPPED


def test_an_answer_waits_for_a_status_write_that_never_answers_only_as_long_as_its_bound():
    """A status write stuck in the API server holds an answer at most ``_WRITE_WAIT_SECONDS``; then the API answers
    from the state the loop last recorded rather than hang the client."""
    async def scenario() -> tuple[float, PipelineState]:
        committed = asyncio.Event()
        monitor = monitor_writing(None, committed)
        recording = record_stopped(monitor)
        await committed.wait()
        loop = asyncio.get_running_loop()
        asked = loop.time()
        state = await writes.served_state(monitor)
        waited = loop.time() - asked
        recording.cancel()
        return waited, state

    waited, state = in_loop_time(scenario)
    assert waited == pytest.approx(reconciler._WRITE_WAIT_SECONDS)
    assert state.deployment_resources_status is ResourcesStatus.STOPPING


def test_a_pipeline_the_loop_has_not_looked_at_is_answered_503_pipeline_not_ready_after_ten_seconds():
    """Before the loop's first pass there is no state to answer from: the API waits 10 s for it, then answers
    Feldera's 503 (with Retry-After) naming the pipeline, and a pass that ends inside the wait answers at once."""
    async def never_looked_at() -> tuple[float, ApiError]:
        monitor = PipelineMonitor(types.SimpleNamespace(), KEY)  # type: ignore[arg-type]
        monitor.see(OBJ)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        with pytest.raises(ApiError) as refused:
            await writes.served_state(monitor)
        return loop.time() - asked, refused.value

    waited, error = in_loop_time(never_looked_at)
    assert waited == pytest.approx(10.0)
    assert (error.status, error.error_code, error.retry_after) == (503, "PipelineNotReady", 5)
    assert "'p'" in error.message

    async def first_pass_after_four_seconds() -> tuple[float, PipelineState]:
        monitor = PipelineMonitor(types.SimpleNamespace(), KEY)  # type: ignore[arg-type]
        monitor.see(OBJ)
        loop = asyncio.get_running_loop()

        def first_pass() -> None:
            monitor.state = STOPPED
            monitor._passed()
        loop.call_later(4.0, first_pass)
        asked = loop.time()
        state = await writes.served_state(monitor)
        return loop.time() - asked, state

    waited, state = in_loop_time(first_pass_after_four_seconds)
    assert waited == pytest.approx(4.0) and state == STOPPED


def test_a_standby_answer_waits_for_the_leaders_write_through_its_watch_within_the_timeout():
    """On a standby the answer to a change waits until the leader's status write arrives through this replica's
    watch: as soon as it arrives, or False at the timeout, never longer."""
    async def scenario(arrives_after: float | None) -> tuple[float, bool]:
        cached = CachedPipeline(KEY)
        cached.see({**OBJ, "status": {}})
        loop = asyncio.get_running_loop()
        if arrives_after is not None:
            written = {**OBJ, "metadata": {**OBJ["metadata"], "resourceVersion": "2"}, "status": {}}
            loop.call_later(arrives_after, cached.see, written)
        asked = loop.time()
        reached = await cached.wait_until(lambda obj, state: obj["metadata"]["resourceVersion"] == "2", timeout=20)
        assert cached.waiting == 0
        return loop.time() - asked, reached

    assert in_loop_time(lambda: scenario(6.0)) == (pytest.approx(6.0), True)
    assert in_loop_time(lambda: scenario(None)) == (pytest.approx(20.0), False)
    assert in_loop_time(lambda: scenario(25.0)) == (pytest.approx(20.0), False)
