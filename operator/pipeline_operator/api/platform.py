"""Feldera's platform routes: ``GET /v0/config`` and the cluster's health (``GET /v0/cluster_healthz``,
``GET /v0/cluster/events``, ``GET /v0/cluster/events/{event_id}``), as Feldera's pipeline-manager answers them
(``api/endpoints/config.rs`` and ``api/endpoints/cluster.rs`` at the Feldera version this API matches).

Feldera's cluster monitor checks its three services every 10 seconds (the API server, the compiler and the
runner) and records a cluster monitor event when the overall health changes, every 10 minutes while it stays
healthy, and with a backoff (doubling up to 10 minutes) while it stays unhealthy; at most 1000 events are
kept, none older than 72 hours but the latest. Here the three services are the operator's:

- ``api``: the operator's HTTP API, healthy once the operator is ready to serve (``/readyz``);
- ``compiler``: the SQL compilation, which runs in the operator (sqlglot): healthy once the operator is ready;
- ``runner``: what runs the pipelines, the operator's loops through the Kubernetes API server: healthy once
  the operator is ready and the API server answers its ``/readyz`` within 5 seconds.

The events are kept in memory, per replica (a replica that starts has its own history, as a Feldera
pipeline-manager with a new database would).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from .errors import ApiError

log = logging.getLogger(__name__)

# The Feldera version whose API this one matches (docs/api.md, "Feldera version"): its SDK compares its own
# version with ``version`` and warns of a mismatch when they differ.
FELDERA_VERSION = "0.306.0"
FELDERA_REVISION = "c44a2456a60e8581a392504fe0edffb1f77d1ba8"
# The operator's own version. Read once: a lookup reads the installed distribution's metadata from disk.
VERSION = package_version("pipeline-operator")
# What the operator is built of, named in ``build_info`` (read once: each lookup reads metadata from disk).
_DEPENDENCIES = ("kopf", "kubernetes", "aiohttp", "sqlglot", "pydantic")

MONITOR_INTERVAL = 10.0  # seconds between two checks (Feldera's MONITOR_INTERVAL)
STORE_EVERY = 60  # checks between two recorded events while the health stays good (10 minutes)
RETENTION = dt.timedelta(hours=72)
RETENTION_NUM = 1000
INFO_MAXIMUM_CHARS = 8192
CHECK_TIMEOUT = 5.0  # Feldera's DEFAULT_REQUEST_TIMEOUT for a service's health endpoint
RESOURCES_INFO = "Resources information is not collected by pipeline-operator."

HEALTHY, UNHEALTHY, INITIAL_UNHEALTHY = "Healthy", "Unhealthy", "InitialUnhealthy"


def _installed(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "unknown"


def configuration(operator_version: str) -> dict[str, Any]:
    """Feldera's ``Configuration``, every key of its schema, saying what answers: the operator, its version
    and the Feldera version it matches. ``edition`` is one of the two values Feldera's SDK accepts (it fails
    on any other); ``version`` is the Feldera version, which Feldera's SDK compares with its own."""
    python = ".".join(str(part) for part in sys.version_info[:3])
    built_of = ", ".join([f"pipeline-operator {operator_version} (Feldera {FELDERA_VERSION} API, revision "
                          f"{FELDERA_REVISION[:9]})", f"Python {python}",
                          *(f"{name} {_installed(name)}" for name in _DEPENDENCIES)])
    return {
        "telemetry": "",  # no telemetry
        "edition": "Open source",
        "version": FELDERA_VERSION,
        "revision": FELDERA_REVISION,
        "runtime_revision": FELDERA_REVISION,
        "unstable_features": None,
        "changelog_url": f"https://github.com/feldera/feldera/releases/tag/v{FELDERA_VERSION}",
        "license_validity": None,
        "update_info": None,
        # A Python package: what a Rust build records (machine, cargo, rustc) does not apply and is empty.
        "build_info": {"build_timestamp": "", "build_cpu": "", "build_os": "", "cargo_dependencies": built_of,
                       "cargo_features": "", "cargo_debug": "", "cargo_opt_level": "", "cargo_target_triple": "",
                       "rustc_version": ""},
        "build_source": f"pipeline-operator {operator_version}",
    }


def readyz_status(api_client: Any, _request_timeout: Any = None) -> int:
    """The HTTP status of the Kubernetes API server's ``GET /readyz``, within CHECK_TIMEOUT (blocking: run it in
    a worker thread, such as :meth:`Kube.call`'s, whose own ``_request_timeout`` it leaves aside)."""
    method, url, headers, _, _ = api_client.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, header_params=headers, _request_timeout=CHECK_TIMEOUT)
    response.read()
    return int(response.status)


@dataclass(frozen=True)
class Check:
    """One look at the three services: whether each is healthy, and what it says of itself."""
    api: tuple[bool, str]
    compiler: tuple[bool, str]
    runner: tuple[bool, str]

    @property
    def healthy(self) -> bool:
        return self.api[0] and self.compiler[0] and self.runner[0]


@dataclass(frozen=True)
class ClusterEvent:
    """Feldera's cluster monitor event."""
    id: uuid.UUID
    recorded_at: dt.datetime
    api_status: str
    api_self_info: str
    compiler_status: str
    compiler_self_info: str
    runner_status: str
    runner_self_info: str

    @property
    def all_healthy(self) -> bool:
        return self.api_status == self.compiler_status == self.runner_status == HEALTHY

    def selected(self, everything: bool) -> dict[str, Any]:
        """Feldera's ``ClusterMonitorEventSelectedInfo``: with ``everything`` (``selector=all``) the
        information fields too."""
        out: dict[str, Any] = {"id": str(self.id), "recorded_at": _timestamp(self.recorded_at),
                               "all_healthy": self.all_healthy}
        for service in ("api", "compiler", "runner"):
            out[f"{service}_status"] = getattr(self, f"{service}_status")
            if everything:
                out[f"{service}_self_info"] = getattr(self, f"{service}_self_info")
                out[f"{service}_resources_info"] = RESOURCES_INFO
        return out


def _timestamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _status(previous: str | None, ok: bool) -> str:
    """Feldera's ``poll_success_to_status``: a service that never was healthy is InitialUnhealthy."""
    if ok:
        return HEALTHY
    return INITIAL_UNHEALTHY if previous in (None, INITIAL_UNHEALTHY) else UNHEALTHY


class ClusterMonitor:
    """Checks the operator's services every ``interval`` seconds (and at once when :meth:`poke` is called) and
    keeps Feldera's cluster monitor events, recorded by Feldera's rules."""

    def __init__(self, check: Callable[[], Awaitable[Check]], interval: float = MONITOR_INTERVAL,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._check = check
        self.interval = interval
        self.clock = clock
        self.events: deque[ClusterEvent] = deque(maxlen=RETENTION_NUM)  # newest last
        self.checked_at: dt.datetime | None = None
        self._without_record = 0
        self._backoff = 1
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """Check again now (the operator's readiness changed)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.check_now()
            except Exception:  # noqa: BLE001 - the next check tries again
                log.exception("cluster health: the check failed")
            self._wake.clear()
            # A timeout around the wait, not wait_for: wait_for would make a task of the wait each time,
            # and Kopf, as it stops, waits 5 s for every task made after it started (docs/architecture.md).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def latest(self) -> ClusterEvent:
        """The latest event; the first check runs now when none was made yet."""
        if not self.events:
            await self.check_now()
        return self.events[-1]

    async def check_now(self) -> None:
        async with self._lock:  # one check at a time: the first request and the loop may both ask
            check = await self._check()
            now = self.clock()
            self.checked_at = now
            latest = self.events[-1] if self.events else None
            if self._should_record(latest, check.healthy):
                self._record(latest, check, now)

    def _should_record(self, latest: ClusterEvent | None, healthy: bool) -> bool:
        """Feldera's rules: a change is always recorded; an unchanged good health every STORE_EVERY checks;
        an unchanged bad one with a backoff that doubles up to STORE_EVERY checks."""
        if latest is None:
            return True
        if latest.all_healthy and healthy:
            self._backoff = 1
            record = self._without_record >= STORE_EVERY - 1
        elif not latest.all_healthy and not healthy:
            record = self._without_record >= self._backoff - 1
            if record:
                self._backoff = min(self._backoff * 2, STORE_EVERY)
        else:
            self._backoff = 1
            record = True
        if not record:
            self._without_record += 1
        return record

    def _record(self, latest: ClusterEvent | None, check: Check, now: dt.datetime) -> None:
        self._without_record = 0

        def status(service: str, ok: bool) -> str:
            return _status(getattr(latest, f"{service}_status") if latest is not None else None, ok)
        self.events.append(ClusterEvent(
            id=uuid.uuid4(), recorded_at=now,
            api_status=status("api", check.api[0]), api_self_info=check.api[1][:INFO_MAXIMUM_CHARS],
            compiler_status=status("compiler", check.compiler[0]),
            compiler_self_info=check.compiler[1][:INFO_MAXIMUM_CHARS],
            runner_status=status("runner", check.runner[0]), runner_self_info=check.runner[1][:INFO_MAXIMUM_CHARS]))
        # The latest is always kept; older ones go after 72 hours (and beyond 1000, by the deque).
        while len(self.events) > 1 and now - self.events[0].recorded_at > RETENTION:
            self.events.popleft()

    # -- the answers ----------------------------------------------------------------------------------

    async def health(self) -> tuple[int, dict[str, Any]]:
        """Feldera's ``HealthStatus`` from the latest event: 200 when all three services are healthy, else 503.
        ``checked_at`` is when the services were last checked, ``unchanged_since`` when the service's status
        became what it is."""
        latest = await self.latest()
        checked = _timestamp(self.checked_at or latest.recorded_at)
        body: dict[str, Any] = {"all_healthy": latest.all_healthy}
        for service in ("api", "compiler", "runner"):
            status = getattr(latest, f"{service}_status")
            since = latest.recorded_at
            for event in reversed(self.events):
                if getattr(event, f"{service}_status") != status:
                    break
                since = event.recorded_at
            body[service] = {"healthy": status == HEALTHY, "message": getattr(latest, f"{service}_self_info"),
                             "unchanged_since": _timestamp(since), "checked_at": checked}
        return (200 if latest.all_healthy else 503), body

    async def list(self) -> list[dict[str, Any]]:
        """``GET /v0/cluster/events``: the retained events, newest first, status fields only."""
        await self.latest()
        return [event.selected(False) for event in reversed(self.events)]

    async def get(self, event_id: str, selector: str) -> dict[str, Any]:
        """``GET /v0/cluster/events/{event_id|latest}?selector=all|status``."""
        if selector not in ("all", "status"):
            raise ApiError(400, "InvalidSelector", f"Invalid selector '{selector[:50]}': expected 'all' or 'status'",
                           {"selector": selector[:50]})
        everything = selector == "all"
        if event_id == "latest":
            return (await self.latest()).selected(everything)
        try:
            wanted = uuid.UUID(event_id)
        except ValueError:
            raise ApiError(400, "InvalidUuidParam", f"Invalid UUID '{event_id[:60]}'",
                           {"value": event_id[:60]}) from None
        await self.latest()
        for event in self.events:
            if event.id == wanted:
                return event.selected(everything)
        raise ApiError(404, "UnknownClusterMonitorEvent",
                       f"Cluster monitor event with identifier '{wanted}' does not exist -- it might have been "
                       f"deleted as monitor events are only retained for {RETENTION.days * 24}h and at most "
                       f"{RETENTION_NUM}", {"event_id": str(wanted)})
