"""Monitor-event emission rules and retention, as pure functions.

On each monitoring pass an event is recorded when

(a) any status field differs from the last event (every committed status change is one
    event, in order, even when several happen in one pass); or
(b) only details differ, and at least ``details_min_interval`` (10 s) passed since the last
    event; or
(c) nothing changed for more than ``heartbeat_interval`` (10 minutes), in every resources
    status but Provisioning, where Feldera's runner writes only changes of the details (as
    here); Feldera writes none while Stopped either; we do, see feldera#6361.

Events of one pass share one ``recorded_at`` (as Feldera's share a transaction time) and
are ordered by ``event_id``, a UUIDv7 that increases within the process.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..models import EventStatus, MonitorEvent, ResourcesStatus

DEFAULT_DETAILS_MIN_INTERVAL = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 600.0
DEFAULT_RETENTION = 720


@dataclass(frozen=True)
class EmissionRules:
    details_min_interval: float = DEFAULT_DETAILS_MIN_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL


class EmissionKind(str, enum.Enum):
    STATUS = "status"        # (a) a status field changed
    DETAILS = "details"      # (b) only details changed, throttled
    HEARTBEAT = "heartbeat"  # (c) nothing changed for too long
    FIRST = "first"          # no event yet for this pipeline


@dataclass(frozen=True)
class Emitted:
    event: MonitorEvent
    kind: EmissionKind
    previous: EventStatus | None  # what the event changed from, for messages


def make_event(status: EventStatus, event_id: uuid.UUID, recorded_at: dt.datetime) -> MonitorEvent:
    return MonitorEvent(event_id=event_id, recorded_at=recorded_at, **dict(status))


def emit(last: MonitorEvent | None, steps: Sequence[EventStatus], current: EventStatus,
         now: dt.datetime, new_id: Callable[[dt.datetime], uuid.UUID],
         rules: EmissionRules = EmissionRules()) -> list[Emitted]:
    """The events one monitoring pass records.

    ``last`` is the newest recorded event of the pipeline (None if there is none), ``steps``
    the status snapshots the pass committed in order, ``current`` the snapshot at the end of
    the pass (with the newest details).
    """
    out: list[Emitted] = []
    prev: EventStatus | None = last
    # Every status change of the pass created a step, so ``current`` has the status of the
    # last step, with the newest details: record it in the last step's place.
    snapshots = [*steps[:-1], current]
    for snap in snapshots:
        if prev is None or snap.status_key() != prev.status_key():
            kind = EmissionKind.FIRST if prev is None else EmissionKind.STATUS
            out.append(Emitted(make_event(snap, new_id(now), now), kind, prev))
            prev = snap
    if out:
        return out
    assert last is not None
    since = (now - last.recorded_at).total_seconds()
    if current.details_key() != last.details_key() and since >= rules.details_min_interval:
        return [Emitted(make_event(current, new_id(now), now), EmissionKind.DETAILS, last)]
    if since > rules.heartbeat_interval and current.deployment_resources_status is not ResourcesStatus.PROVISIONING:
        return [Emitted(make_event(current, new_id(now), now), EmissionKind.HEARTBEAT, last)]
    return []


def newest_first(events: Iterable[MonitorEvent]) -> list[MonitorEvent]:
    """Feldera's order: ``recorded_at`` then ``event_id``, newest first."""
    return sorted(events, key=lambda e: (e.recorded_at, e.event_id.int), reverse=True)


def retain(events: Iterable[MonitorEvent], limit: int = DEFAULT_RETENTION) -> list[MonitorEvent]:
    """The newest ``limit`` events of one pipeline, newest first."""
    if limit < 0:
        raise ValueError("retention must not be negative")
    return newest_first(events)[:limit]


class UuidV7:
    """UUIDv7 (RFC 9562) from a given time, strictly increasing within one generator.

    The timestamp comes from the caller (the pass's ``now``), not the wall clock, so an
    event's id carries its ``recorded_at`` to the millisecond and tests can inject time.
    Within one millisecond (or if time steps back) the 12-bit ``rand_a`` field is used as a
    counter, as RFC 9562 section 6.2 (method 1) describes; random bits fill the rest.
    """

    def __init__(self, random_bits: Callable[[int], int] | None = None) -> None:
        import secrets
        self._rand = random_bits or secrets.randbits
        self._last_ms = -1
        self._counter = 0

    def __call__(self, at: dt.datetime) -> uuid.UUID:
        ms = int(at.timestamp() * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms
            self._counter += 1
            if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                self._counter = 0
        else:
            self._counter = self._rand(8)  # leave room to count up within the millisecond
        self._last_ms = ms
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= (self._counter & 0xFFF) << 64
        value |= 0b10 << 62
        value |= self._rand(62)
        return uuid.UUID(int=value)
