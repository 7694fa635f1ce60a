"""Kubernetes Events for monitor events, so ``kubectl describe pipeline`` tells the story.

- Every status change is one core/v1 Event on the Pipeline, with a specific reason
  (:func:`core.reasons.describe`), type Warning when the pipeline carries an error, and a
  one-line message that says what changed and why.
- Heartbeats and details-only events are aggregated as client-go does: one Event per pipeline
  and reason (a deterministic name) whose ``count`` and ``lastTimestamp`` advance, so a week of
  heartbeats is one line in ``kubectl describe``, not a thousand objects.
- Posting is asynchronous (queues and :data:`WORKERS` workers, each pipeline's Events in order
  on one of them) and rate-limited per pipeline (a token
  bucket: a burst of 25, then one per 10 s; what is over the limit is not posted, as client-go's
  spam filter does; it stays in the store and the history). A failed post is retried a bounded
  number of times and never blocks reconciliation.
- Who asked: a change made through the HTTP API carries the annotation
  ``dataflow.dev/requested-by`` (``alice start 2026-11-28T12:00:00Z``). The Events posted for that
  pipeline in the following minutes carry it too (an annotation of the Event), and those of status
  changes end with `` (requested by alice)``, so ``kubectl describe`` shows who asked. Warnings are
  not attributed (an error is not what anybody asked for), nor is anything after the window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..core.emission import EmissionKind, Emitted
from ..core.reasons import describe
from ..identity import PipelineKey
from ..models import API_GROUP, API_VERSION, KIND
from ..retry import Backoff
from .client import KubeClient

log = logging.getLogger(__name__)

AGGREGATED = {EmissionKind.HEARTBEAT: "heartbeat", EmissionKind.DETAILS: "details"}
BURST = 25
REFILL_SECONDS = 10.0
ATTEMPTS = 4  # one try and three retries, 0.5, 1 and 2 s apart
QUEUE_LIMIT = 10_000  # Events waiting, in all
WORKERS = 4  # posts under way at once (the Events client's pool has as many threads): a thousand pipelines
# starting at once record some ten thousand Events, which one worker posted for minutes
ANNOTATION_REQUESTED_BY = "dataflow.dev/requested-by"
MAX_REQUESTER = 253  # characters of the user name kept in the annotation
# Events recorded this long after a request are attributed to it: a start provisions for up to the
# provisioning timeout, a graceful stop suspends for up to two minutes.
ATTRIBUTION_SECONDS = 600.0


def requested_by_value(username: str, action: str, at: dt.datetime) -> str:
    """``alice start 2026-11-28T12:00:00Z``: bounded (a user name has no length limit) and one word
    each (spaces in a name are replaced), so that :func:`parse_requested_by` reads it back."""
    user = "".join("_" if c.isspace() else c for c in username)[:MAX_REQUESTER] or "unknown"
    return f"{user} {action[:40]} {_ts(at)}"


def parse_requested_by(value: str | None) -> tuple[str, dt.datetime] | None:
    """(user, time) of a ``dataflow.dev/requested-by`` value, or None if it is not one (anyone with
    ``patch`` on the Pipeline can write the annotation; nothing here trusts more than its form)."""
    parts = (value or "").split(" ")
    if len(parts) != 3 or not parts[0]:
        return None
    try:
        at = dt.datetime.strptime(parts[2], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return parts[0][:MAX_REQUESTER], at


def requester_of(obj: Mapping[str, Any] | None) -> str | None:
    """The ``dataflow.dev/requested-by`` annotation of a Pipeline object (for ``KubernetesEventPoster(requester=)``)."""
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(ANNOTATION_REQUESTED_BY)
    return value if isinstance(value, str) else None


@dataclass
class _Post:
    key: PipelineKey
    reason: str
    type: str
    message: str
    aggregate: str | None  # the suffix of the aggregated Event's name, or None for a new Event
    at: dt.datetime
    requested_by: str | None = None  # the annotation value of the request this Event follows


class _Bucket:
    def __init__(self) -> None:
        self.tokens = float(BURST)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.at) / REFILL_SECONDS)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubernetesEventPoster:
    def __init__(self, kube: KubeClient, component: str,
                 requester: Callable[[PipelineKey], str | None] | None = None) -> None:
        """``requester``: the ``dataflow.dev/requested-by`` annotation of a pipeline as the operator
        last saw it (:func:`requester_of` of its object), or None."""
        self.kube = kube
        self.component = component
        self.requester = requester
        self.instance = socket.gethostname()
        # A pipeline's Events go to one queue (by its uid), so they are posted in order and its aggregated
        # Events are never written by two workers at once.
        self._queues: list[asyncio.Queue[_Post]] = [asyncio.Queue(QUEUE_LIMIT // WORKERS) for _ in range(WORKERS)]
        self._buckets: dict[str, _Bucket] = {}
        self._counts: dict[str, int] = {}  # aggregated Event name -> count we last wrote
        self._tasks: list[asyncio.Task[None]] = []
        self.posted = 0
        self.dropped = 0

    @property
    def queued(self) -> int:
        """Events waiting to be posted."""
        return sum(q.qsize() for q in self._queues)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(q), name=f"kubernetes-events-{i}")
                           for i, q in enumerate(self._queues)]

    # The timeout bounds the drain only; the task is cancelled after it either way (no TimeoutError for the caller).
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
        except TimeoutError:
            log.warning("%d Kubernetes Events not posted at shutdown", self.queued)
        for task in self._tasks:
            task.cancel()

    def submit(self, key: PipelineKey, emitted: Sequence[Emitted], reasons: Sequence[str]) -> None:
        """Queue the Events for one pass's monitor events; never waits."""
        whys = list(reasons) if len(reasons) == len(emitted) else [""] * len(emitted)
        value = self._requested_by(key)
        for item, why in zip(emitted, whys, strict=True):
            reason, event_type, message = describe(item.kind, item.previous, item.event, why)
            aggregate = AGGREGATED.get(item.kind)
            requested_by = None
            if value is not None and event_type == "Normal":
                found = parse_requested_by(value)
                recorded = item.event.recorded_at
                recorded = recorded if recorded.tzinfo is not None else recorded.replace(tzinfo=dt.UTC)
                if found is not None and -60 <= (recorded - found[1]).total_seconds() <= ATTRIBUTION_SECONDS:
                    requested_by = value
                    if aggregate is None:
                        message = f"{message} (requested by {found[0]})"
            if aggregate is None and not self._bucket(key).take():
                self.dropped += 1
                log.debug("%s: Event %s over the rate limit: not posted", key, reason)
                continue
            try:
                self._queues[hash(key.uid) % WORKERS].put_nowait(
                    _Post(key, reason, event_type, message, aggregate, item.event.recorded_at, requested_by))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("%s: the Kubernetes Event queue is full: %s not posted", key, reason)

    def _requested_by(self, key: PipelineKey) -> str | None:
        if self.requester is None:
            return None
        try:
            return self.requester(key)
        except Exception:  # noqa: BLE001 - attribution is a courtesy; it never stops an Event
            log.debug("%s: could not read the requester", key, exc_info=True)
            return None

    def forget(self, key: PipelineKey) -> None:
        self._buckets.pop(key.uid, None)
        for suffix in AGGREGATED.values():
            self._counts.pop(self._aggregate_name(key, suffix), None)

    def _bucket(self, key: PipelineKey) -> _Bucket:
        return self._buckets.setdefault(key.uid, _Bucket())

    @staticmethod
    def _aggregate_name(key: PipelineKey, suffix: str) -> str:
        return f"{key.name}.{key.uid[:8]}.{suffix}"[:253]

    async def _work(self, queue: asyncio.Queue[_Post]) -> None:
        while True:
            post = await queue.get()
            try:
                backoff = Backoff(initial=0.5, maximum=2.0, attempts=ATTEMPTS)
                while True:
                    try:
                        await self._post(post)
                        self.posted += 1
                        break
                    except (ApiException, OSError) as exc:
                        delay = backoff.failure()
                        if delay is None or getattr(exc, "status", 0) in (400, 403, 422):
                            self.dropped += 1
                            log.warning("%s: could not post Event %s: %s", post.key, post.reason,
                                        getattr(exc, "reason", exc))
                            break
                        await asyncio.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one Event stop the worker
                log.exception("%s: posting Event %s failed", post.key, post.reason)
            finally:
                queue.task_done()

    def _body(self, post: _Post, name: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"namespace": post.key.namespace}
        if name is None:
            meta["generateName"] = f"{post.key.name}."
        else:
            meta["name"] = name
        if post.requested_by is not None:
            meta["annotations"] = {ANNOTATION_REQUESTED_BY: post.requested_by}
        return {
            "metadata": meta,
            "involvedObject": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": post.key.name,
                               "namespace": post.key.namespace, "uid": post.key.uid},
            "reason": post.reason, "message": post.message, "type": post.type,
            "firstTimestamp": _ts(post.at), "lastTimestamp": _ts(post.at), "count": 1,
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.instance,
        }

    async def _post(self, post: _Post) -> None:
        core = self.kube.core
        if post.aggregate is None:
            await self.kube.call(core.create_namespaced_event, post.key.namespace, self._body(post, None))
            return
        name = self._aggregate_name(post.key, post.aggregate)
        count = self._counts.get(name)
        if count is None:
            # Created first, read only if it exists (an operator before this one posted it): after a start, a
            # thousand pipelines' first heartbeats are a thousand writes, not as many reads and writes.
            try:
                await self.kube.call(core.create_namespaced_event, post.key.namespace, self._body(post, name))
                self._counts[name] = 1
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            existing = await self.kube.call(core.read_namespaced_event, name, post.key.namespace)
            count = existing.count or 1
        patch = {"count": count + 1, "lastTimestamp": _ts(post.at), "message": post.message,
                 "type": post.type, "reason": post.reason}
        try:
            await self.kube.call(core.patch_namespaced_event, name, post.key.namespace, patch)
        except ApiException as exc:
            if exc.status != 404:  # expired (the API server's event TTL): start a new one
                raise
            await self.kube.call(core.create_namespaced_event, post.key.namespace, self._body(post, name))
            self._counts[name] = 1
            return
        self._counts[name] = count + 1
