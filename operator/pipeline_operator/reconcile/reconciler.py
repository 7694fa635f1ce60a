"""One pipeline's monitoring loop: observe, decide (the pure core), record, act.

Every pass reads the Pipeline (spec, generation, one-shot annotations), observes compute,
storage, program and runtime through the edges, asks :func:`core.lifecycle.decide` what
changed and what to do, runs the emission rules, writes the status (only when something
changed, guarded by resourceVersion) and then acts. Recording before acting means that a
pass whose status write loses a race does nothing, and the next pass decides again from the
fresh object: reconciliation is level-based and every action is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from .. import jsondepth
from ..core import resource
from ..core.emission import Emitted, emit
from ..core.lifecycle import (
    Action,
    ActionKind,
    ComputeState,
    Decision,
    Desired,
    Observation,
    PipelineState,
    StorageObservation,
    decide,
)
from ..core.resource import READY, RECONCILING, STALLED
from ..identity import PipelineKey
from ..kube.client import Conflict, Forbidden, Gone, Unavailable
from ..metrics import PipelineSample
from ..models import (
    DETAILS_FIELDS,
    BootstrapPolicy,
    Condition,
    ConditionStatus,
    HistoryEntry,
    MonitorEvent,
    PipelineSpec,
    PipelineStatus,
    ResourcesStatus,
)
from ..retry import Backoff
from .history import history_entry, history_event, history_events
from .sampling import pipeline_sample
from .services import ROUTINE_KINDS, LoopServices
from .spec import InvalidPipeline, desired_of, validation_problem
from .versions import NewestVersion
from .versions import resource_version as _rv

log = logging.getLogger(__name__)

DETAILS_KEYS = tuple(to_camel(f) for f in DETAILS_FIELDS)  # written with their event only
UNAVAILABLE_RETRY = 5.0  # seconds between passes while the API server cannot be reached
_QUICK_REPOLL = 0.3  # after forwarding an action to the pipeline, look again soon (Feldera's notify)
_WRITE_WAIT_SECONDS = 10.0  # at most this long an API answer waits for the status write in flight (``settled``)
REASON_INVALID = "InvalidPipeline"  # Event and condition reason of a Pipeline the operator cannot read
INVALID_RETRY = 60.0  # seconds between looks at an invalid Pipeline (a new generation wakes the loop at once)


async def _failure_of(work: Awaitable[None]) -> Exception | None:
    """Run ``work``; its exception is returned, not raised (cancellation still propagates)."""
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - handed to the awaiting pass, which raises it
        return exc
    return None


def _created(obj: Mapping[str, Any]) -> dt.datetime | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None


def _digest(status: Mapping[str, Any]) -> str:
    """What a reader sees of a status, the details left out (they change with every pass and are written
    with events only), as a digest to compare a new status with the one written."""
    shown = {k: v for k, v in status.items() if k not in DETAILS_KEYS}
    return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()


class PipelineMonitor:
    """The monitoring loop of one Pipeline (one per Pipeline, kept in Kopf's per-object memo)."""

    def __init__(self, ctx: LoopServices, key: PipelineKey) -> None:
        self.ctx = ctx
        self.key = key
        self.wake = asyncio.Event()
        self.state: PipelineState | None = None
        self.conditions: list[Condition] = []
        self._history: list[dict[str, Any]] = []  # see ``history``
        self.last_event: MonitorEvent | None = None
        # What the last status write (or the status loaded) holds beyond its details, as a digest: a full copy
        # of every pipeline's status would double what a thousand pipelines keep in memory.
        self.written: str | None = None
        self.versions = NewestVersion()
        self._seeded: int | None = None  # the store generation seeded from status.history
        self.trigger: tuple[Any, ...] = ()  # what wakes the loop at once (generation, one-shot annotations)
        self._last_notes: tuple[str, ...] = ()
        self._pass_done = asyncio.Event()  # set, and replaced, after every pass
        self.blocked: str | None = None  # a permission the operator lacks, as a Stalled condition says
        self.unreachable = False  # the last pass failed because the API server could not be reached
        # What an idle pass would compute again, kept from the last one (see ``_desired_of`` and ``record``).
        self._desired: tuple[str | None, Desired, PipelineSpec] | None = None
        self._invalid: tuple[str | None, str] | None = None  # the version reported invalid, and why
        self._recorded: tuple[Desired, PipelineState, str | None] | None = None
        self._forwarding = 0  # runtime actions the HTTP API is forwarding now (see ``forwarding``)
        self._writing: asyncio.Future[Exception | None] | None = None  # the status write in flight (``settled``)

    @property
    def history(self) -> list[HistoryEntry]:
        """``status.history`` as last written or loaded. Kept as its JSON, about a quarter of the models'
        size (a thousand pipelines hold twenty thousand entries); read only to write the status."""
        return [HistoryEntry.model_validate(entry) for entry in self._history]

    @history.setter
    def history(self, entries: Sequence[HistoryEntry]) -> None:
        self._history = [entry.model_dump(mode="json", by_alias=True, exclude_none=True) for entry in entries]

    # -- the newest object (:class:`NewestVersion`) -------------------------------------------

    @property
    def obj(self) -> dict[str, Any] | None:
        """The newest version of the Pipeline we know."""
        return self.versions.obj

    def see(self, body: Mapping[str, Any]) -> None:
        """A version of the Pipeline the watch delivered."""
        self.versions.see(body)

    def adopt(self, obj: Mapping[str, Any]) -> None:
        """A version we got first-hand (our write's answer, a read, the API's patch)."""
        self.versions.adopt(obj)

    def _load(self, obj: dict[str, Any]) -> None:
        """Carry on from what the status records: at the first pass (an operator restart loses
        nothing), and after a write conflict (the fresh object decides, not our memory)."""
        status = PipelineStatus.model_validate(obj.get("status") or {})
        self.state = resource.from_status(status)
        self.conditions = list(status.conditions)
        self.history = status.history
        self.written = _digest(obj.get("status") or {})
        self._recorded = None
        if status.history:
            recorded = history_event(status.history[0], self.state.deployment_error)
            if self.last_event is None or recorded.recorded_at >= self.last_event.recorded_at:
                self.last_event = recorded

    # -- one pass ----------------------------------------------------------------------------

    async def run_pass(self) -> float:
        """Observe, decide, record, act. Returns the seconds until the next pass."""
        obj = self.obj
        assert obj is not None
        problem = jsondepth.undecodable(obj)
        if problem is not None:
            raise InvalidPipeline(f"the Pipeline cannot be decoded: {problem}")
        if self.state is None:
            try:
                self._load(obj)
            except ValidationError as exc:
                raise InvalidPipeline(validation_problem("status", exc)) from None
        assert self.state is not None
        generation = self.ctx.sink.generation()
        if self._seeded != generation:
            # A fresh or lost store is seeded from the history (at the first pass, and again whenever
            # the store was started afresh or dropped events); events written to the status just
            # before a crash, and not yet to the store, are added; nothing is stored twice.
            await self.ctx.sink.seed(self.key, history_events(self.history, self.state.deployment_error),
                                     _created(obj))
            stored = await self.ctx.sink.latest(self.key)
            if stored is not None and (self.last_event is None or stored.recorded_at >= self.last_event.recorded_at):
                self.last_event = stored
            self._seeded = generation
        desired, spec = self._desired_of(obj)
        try:
            observation = await self.observe(desired, self.state)
        except Forbidden as exc:
            return await self._blocked(desired, str(exc))
        now = self.ctx.clock()
        decision = decide(desired, self.state, observation, now, self.ctx.lifecycle, self.ctx.ids)
        emitted = emit(self.last_event, [s.state.event_status() for s in decision.steps],
                       decision.state.event_status(), now, self.ctx.ids, self.ctx.rules)
        try:
            await self.record(desired, decision, emitted, now)
        except Gone as exc:
            log.info("%s: %s; waiting for its deletion", self.key, exc)
            return self.ctx.settings.monitor_interval
        except Conflict as exc:
            log.info("%s: %s; deciding again from the fresh object", self.key, exc)
            if self.ctx.metrics is not None:
                self.ctx.metrics.conflicts.inc()
            fresh = await self.ctx.kube.get_pipeline(self.key.namespace, self.key.name)
            if fresh is not None:
                self.adopt(fresh)
                self._load(fresh)
            return 0.0
        self._explain(decision, emitted)
        try:
            quick = await self.act(decision.actions, desired, spec)
        except Forbidden as exc:
            return await self._blocked(desired, str(exc))
        if self.blocked is not None:
            log.info("%s: permissions are sufficient again", self.key)
            self.blocked = None
        transitional = decision.state.deployment_resources_status in (
            ResourcesStatus.PROVISIONING, ResourcesStatus.STOPPING) or decision.state.program_status.is_compiling
        delay = self.ctx.settings.monitor_period(transitional)
        return min(delay, _QUICK_REPOLL) if quick else delay

    def _desired_of(self, obj: dict[str, Any]) -> tuple[Desired, PipelineSpec]:
        """``desired_of`` once per version of the object: validating the spec is most of an idle pass's
        own work otherwise (every version has its own resourceVersion)."""
        rv = _rv(obj)
        if self._desired is not None and rv is not None and self._desired[0] == rv:
            return self._desired[1], self._desired[2]
        try:
            desired, spec = desired_of(obj, community_edition=self.ctx.settings.compiler == "feldera")
        except ValidationError as exc:
            raise InvalidPipeline(validation_problem("spec", exc)) from None
        self._desired = (rv, desired, spec)
        self._invalid = None
        return desired, spec

    async def _report_invalid(self, problem: str) -> float:
        """Say once per version of the Pipeline why it cannot be read (a log line, a Warning Event, and the
        Ready and Stalled conditions when its status can be written), and leave the pipeline as it is."""
        obj = self.obj
        assert obj is not None
        rv = _rv(obj)
        if self._invalid == (rv, problem):
            return INVALID_RETRY
        self._invalid = (rv, problem)
        log.warning("%s: %s; left as it is until the Pipeline is corrected", self.key, problem)
        await self.ctx.sink.warn(self.key, REASON_INVALID, problem)
        raw = obj.get("status") or {}
        if (jsondepth.undecodable(obj) or "").startswith("status"):
            return INVALID_RETRY  # the status itself holds what was cut: nothing of it can be written back
        try:
            status = PipelineStatus.model_validate(raw)
        except ValidationError:
            return INVALID_RETRY  # nothing of it can be written back
        now = self.ctx.clock()
        generation = int((obj.get("metadata") or {}).get("generation") or 1)
        wanted = {READY: ConditionStatus.FALSE, RECONCILING: ConditionStatus.FALSE, STALLED: ConditionStatus.TRUE}
        before = {c.type: c for c in status.conditions}
        conditions = [Condition(type=ctype, status=value, reason=REASON_INVALID, message=problem[:1024],
                                last_transition_time=before[ctype].last_transition_time
                                if ctype in before and before[ctype].status is value else now,
                                observed_generation=generation) for ctype, value in wanted.items()]
        body = status.model_copy(update={"conditions": conditions, "observed_generation": generation}).model_dump(
            mode="json", by_alias=True, exclude_none=True)
        try:
            updated = await self.ctx.kube.write_status(self.key.namespace, self.key.name, str(rv), body)
        except (Conflict, Gone):
            # A newer version: look at it at once, as read now (the watch may not have brought it yet, and
            # the version in hand was just reported: the next pass would find nothing new until INVALID_RETRY).
            fresh = await self.ctx.kube.get_pipeline(self.key.namespace, self.key.name)
            if fresh is not None:
                self.adopt(fresh)
            return 0.0
        except Exception as exc:  # noqa: BLE001 - the log line and the Event said it already
            log.info("%s: could not write the %s condition: %s", self.key, REASON_INVALID, exc)
            return INVALID_RETRY
        self.adopt(updated)
        self._invalid = (_rv(updated), problem)
        self.state = None  # read the status again once the Pipeline is valid
        return INVALID_RETRY

    async def _blocked(self, desired: Desired, problem: str) -> float:
        """The operator lacks a permission: say so in a Stalled condition and in the log, and retry."""
        if problem != self.blocked:
            log.error("%s: %s; grant it in the operator's Role or ClusterRole (deploy/base/rbac)", self.key, problem)
        self.blocked = problem
        assert self.state is not None
        status = resource.to_status(desired, self.state, self.conditions, self.history, self.ctx.clock(),
                                    blocked=problem)
        body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.written != _digest(body):
            assert self.obj is not None
            try:
                updated = await self.ctx.kube.write_status(self.key.namespace, self.key.name,
                                                           self.obj["metadata"]["resourceVersion"], body)
                self.adopt(updated)
                self.written = _digest(body)
                self._recorded = None
                self.conditions = list(status.conditions)
            except Conflict:
                if self.ctx.metrics is not None:
                    self.ctx.metrics.conflicts.inc()
                return 0.0
            except Gone:
                return self.ctx.settings.monitor_interval
        return 10.0

    async def observe(self, desired: Desired, state: PipelineState) -> Observation:
        ctx = self.ctx
        compute = await ctx.backend.observe_compute(self.key)
        runtime = None
        if state.deployment_resources_status in (ResourcesStatus.PROVISIONING, ResourcesStatus.PROVISIONED) \
                and compute.state in (ComputeState.READY, ComputeState.PENDING):
            endpoint = ctx.backend.endpoint(self.key)
            if endpoint is not None:
                runtime = await ctx.runtime.status(endpoint)
        program = ctx.compiler.observe(desired.program_digest)
        storage = None
        if state.storage_status.value == "Clearing" or desired.clear_storage is not None:
            storage = StorageObservation(exists=await ctx.backend.storage_exists(self.key))
        return Observation(compute=compute, runtime=runtime, program=program, storage=storage)

    async def record(self, desired: Desired, decision: Decision, emitted: Sequence[Emitted],
                     now: dt.datetime) -> None:
        """Write status (with the new history entries) if anything a reader sees changed."""
        # The status is a function of these (the conditions' times move only when they flip): when a
        # pass ends where the last one did and records nothing, building and comparing it again is
        # the bulk of an idle pass's work, and cannot lead to a write.
        recorded = (desired, decision.state, self.blocked)
        if not emitted and recorded == self._recorded:
            self.state = decision.state
            return
        history = self.history
        if emitted:
            fresh = [history_entry(e.event) for e in reversed(emitted)]
            history = (fresh + history)[: self.ctx.settings.history_limit]
        status = resource.to_status(desired, decision.state, self.conditions, history, now, self.blocked)
        body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if not emitted and self.written == _digest(body):
            self.state = decision.state
            self._recorded = recorded
            return
        assert self.obj is not None
        rv = self.obj["metadata"]["resourceVersion"]
        before = self.state  # what the steps leave (the write replaces it)
        # The status write and the store append go together even if the loop is cancelled in
        # between (operator shutdown): otherwise the history could hold an event the store lacks.
        # The task never fails: it returns its failure, raised here. A task that outlives the daemon
        # (shutdown) and then fails (e.g. a conflict) would otherwise be re-raised by Kopf at exit.
        task = asyncio.ensure_future(_failure_of(self._write_and_record(rv, body, status, history, decision,
                                                                        emitted)))
        self.ctx.in_flight.add(task)
        task.add_done_callback(self.ctx.in_flight.discard)
        self._writing = task
        failure = await asyncio.shield(task)
        if failure is not None:
            raise failure
        if self.ctx.metrics is not None and before is not None:
            self.ctx.metrics.observe_steps(before, [s.state for s in decision.steps], now)

    async def _write_and_record(self, rv: str, body: dict[str, Any], status: PipelineStatus,
                                history: list[HistoryEntry], decision: Decision, emitted: Sequence[Emitted]) -> None:
        routine = bool(emitted) and not decision.steps and all(e.kind in ROUTINE_KINDS for e in emitted)
        updated = await self.ctx.write_status(self.key, rv, body, routine=routine)
        self.adopt(updated)
        self.written = _digest(body)
        self._recorded = None
        self.state = decision.state
        self.conditions = list(status.conditions)
        self.history = history
        if emitted:
            self.last_event = emitted[-1].event
            if self.ctx.metrics is not None:
                for e in emitted:
                    self.ctx.metrics.events.labels(e.kind.value).inc()
            reasons = [s.reason for s in decision.steps]
            started = time.perf_counter()
            await self.ctx.sink.record(self.key, emitted, reasons)
            if self.ctx.metrics is not None:
                self.ctx.metrics.recording_seconds.observe(time.perf_counter() - started)

    async def act(self, actions: Sequence[Action], desired: Desired, spec: PipelineSpec) -> bool:
        """Carry out the decision; returns whether the pipeline was asked to change (look again soon)."""
        ctx = self.ctx
        quick = False
        endpoint = ctx.backend.endpoint(self.key)
        for action in actions:
            kind = action.kind
            if kind is ActionKind.COMPILE:
                assert action.program_digest is not None
                ctx.compiler.ensure(action.program_digest, spec.program.sql, self.wake.set)
            elif kind is ActionKind.PROVISION:
                assert action.program_digest is not None and action.initial is not None
                policy = action.bootstrap_policy or BootstrapPolicy.AWAIT_APPROVAL
                artifact = await asyncio.to_thread(ctx.compiler.artifact, action.program_digest)
                if artifact is None:
                    log.warning("%s: compiled program %s is missing; cannot provision", self.key,
                                action.program_digest[:8])
                    continue
                await ctx.backend.provision(self.key, spec, artifact, action.initial, policy,
                                            silent_bootstrap=action.silent_bootstrap,
                                            deployment_id=None if action.deployment_id is None
                                            else str(action.deployment_id))
            elif kind is ActionKind.DEPROVISION:
                await ctx.backend.deprovision(self.key)
            elif kind is ActionKind.CLEAR_STORAGE:
                await ctx.backend.clear_storage(self.key)
                quick = True
            elif endpoint is None:
                log.info("%s: no endpoint yet for %s", self.key, kind.value)
            elif kind is ActionKind.SUSPEND:
                quick |= await ctx.runtime.suspend(endpoint)
            elif kind is ActionKind.SET_RUNTIME_DESIRED:
                assert action.target is not None
                if self._forwarding:
                    log.debug("%s: the API is forwarding a runtime action; the spec's %s waits for its write",
                              self.key, action.target.value)
                    continue
                quick |= await ctx.runtime.set_runtime_desired(endpoint, action.target, action.activate)
            elif kind is ActionKind.APPROVE:
                quick |= await ctx.runtime.approve(endpoint)
        return quick

    def _explain(self, decision: Decision, emitted: Sequence[Emitted]) -> None:
        for step in decision.steps:
            s = step.state
            runtime = f"/{s.deployment_runtime_status.value}" if s.deployment_runtime_status else ""
            error = f", error {s.deployment_error.error_code}" if s.deployment_error else ""
            log.info("%s: %s -> resources %s%s, desired %s, program %s, storage %s%s", self.key, step.reason,
                     s.deployment_resources_status.value, runtime, s.deployment_resources_desired_status.value,
                     s.program_status.value, s.storage_status.value, error)
        if decision.notes != self._last_notes:
            for note in decision.notes:
                log.info("%s: %s", self.key, note)
            self._last_notes = decision.notes
        for e in emitted:
            if e.kind.value in ("heartbeat", "details"):
                log.debug("%s: %s event recorded", self.key, e.kind.value)

    # -- waiting for the loop ------------------------------------------------------------------

    def metrics_sample(self) -> PipelineSample | None:
        """What ``/metrics`` folds into its per-namespace series of this pipeline (None before its first pass)."""
        return pipeline_sample(self.key, self.state, self.obj, self.conditions, self.ctx.clock(),
                               self.ctx.lifecycle.default_provisioning_timeout)

    def poke(self) -> None:
        """Look at the pipeline again at once (a change was made or forwarded)."""
        self.wake.set()

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[None]:
        """While the HTTP API forwards a runtime action (/pause, /resume, /activate) to the pipeline and then
        keeps its target in the spec, this loop forwards no runtime desired status of its own: the pipeline
        already answers with the new one while the spec still names the old one, and holding it there would
        undo the user's action until the spec's write arrives."""
        self._forwarding += 1
        try:
            yield
        finally:
            self._forwarding -= 1

    async def settled(self) -> None:
        """Return once the status write in flight, if any, has been taken in: a client that saw a status through
        the API server (``kubectl wait``, a watch) may ask this replica's API at once, before the loop has read
        the answer of that write, and must be answered from that status, not the one before it."""
        writing = self._writing
        if writing is not None and not writing.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WRITE_WAIT_SECONDS):  # bounded: an answer from the last state, not a hang
                    await asyncio.shield(writing)

    # The timeout is part of the contract (answer False after it, never raise): not a cancel scope for the caller.
    async def wait_until(self, predicate: Callable[[dict[str, Any], PipelineState], bool],
                         timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until a pass has recorded a state for which ``predicate(object, state)`` holds
        (what the HTTP API does after writing a change, so that its answer reflects it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        self.wake.set()
        while True:
            if self.state is not None and self.obj is not None and predicate(self.obj, self.state):
                return True
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):  # not wait_for (docs/architecture.md)
                    await self._pass_done.wait()
            except TimeoutError:
                return False

    def _passed(self) -> None:
        done, self._pass_done = self._pass_done, asyncio.Event()
        done.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stopped: Callable[[], bool]) -> None:
        """Passes until the daemon is stopped (Kopf cancels the task); a spec or annotation
        change wakes it at once."""
        backoff = Backoff(initial=1.0, maximum=60.0)
        while not stopped():
            self.wake.clear()  # a wake-up that comes during the pass shortens the wait after it
            started = time.perf_counter()
            try:
                delay = await self.run_pass()
                if self.ctx.metrics is not None:
                    self.ctx.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                backoff.success()
            except asyncio.CancelledError:
                raise
            except InvalidPipeline as exc:
                delay = await self._report_invalid(str(exc))
            except Unavailable as exc:
                # Nothing is concluded from a failed read or write: compute stays as it is, and the
                # loop tries again soon, so that it catches up quickly once the API server is back.
                delay = min(backoff.failure() or UNAVAILABLE_RETRY, UNAVAILABLE_RETRY)
                if not self.unreachable:
                    log.warning("%s: %s; leaving the pipeline's compute as it is and trying again every few "
                                "seconds", self.key, exc)
                self.unreachable = True
            except Exception:
                delay = backoff.failure() or 60.0
                log.exception("%s: monitoring pass failed; retrying in %.0fs", self.key, delay)
            else:
                if self.unreachable:
                    log.info("%s: a monitoring pass succeeded again after the API server was unreachable", self.key)
                    self.unreachable = False
            self._passed()
            if delay <= 0 or self.wake.is_set():
                continue
            # A timeout scope, not wait_for: no task per pass (thousands of loops wait here at once).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.wake.wait()
