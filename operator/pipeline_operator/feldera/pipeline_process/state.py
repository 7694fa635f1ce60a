"""The reference pipeline's state: its runtime and desired status, the time it spent Running, its
checkpoints in its storage directory, its lifecycle (Initializing, Replaying, the bootstrap and its approval,
Suspended) and what it knows of itself (Feldera's ``GlobalControllerMetrics``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import resource
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoints"


def checkpoint_metadata(checkpoint: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A checkpoint as Feldera's pipeline reports it in its status (``CheckpointMetadata``): its uuid, no name,
    the circuit's fingerprint (a u64; here of the program the checkpoint was written by), the size of its files,
    its steps and the records processed (none: the reference pipeline processes no data)."""
    name = str(checkpoint.get("uuid") or "")
    try:
        size: int | None = (folder / f"{name}.json").stat().st_size
    except (OSError, ValueError):
        size = None
    digest = hashlib.sha256(str(checkpoint.get("program_digest") or "").encode()).digest()
    return {"uuid": name, "identifier": None, "fingerprint": int.from_bytes(digest[:8], "big"), "size": size,
            "steps": checkpoint.get("steps"), "processed_records": 0}


def _rss_bytes() -> int:
    """The process's resident memory (Linux: /proc; elsewhere its peak, all the standard library knows)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ReferenceState:
    """What a reference pipeline is and does, whatever asks it: its statuses, checkpoints and lifecycle."""
    def __init__(self, storage: Path, program: dict[str, Any], initial: str,
                 init_seconds: float = 1.0, replay_seconds: float = 1.0, suspend_seconds: float = 0.5,
                 require_approval: bool = False, details_tick: float = 0.0, details_bytes: int = 0,
                 bootstrap_policy: str = "allow", control_token: str | None = None,
                 debug_routes: bool = False, exit: Callable[[int], Any] = os._exit) -> None:
        self.storage = storage
        self.program = program
        self.initial = initial
        self.init_seconds = init_seconds
        self.replay_seconds = replay_seconds
        self.suspend_seconds = suspend_seconds
        self.require_approval = require_approval
        self.details_tick = details_tick
        self.details_bytes = details_bytes
        self.bootstrap_policy = bootstrap_policy
        self.control_token = control_token.encode() if control_token else None
        self.debug_routes = debug_routes
        self.status_fault: str | None = None  # "garbage", "nested" or "endless-header": what /status answers instead
        self.hung = False  # the "hang" fault: no request is answered any more
        self.broken = False  # the "broken" fault: every route but /debug answers bytes that are not HTTP
        self.exit = exit  # how the process "exits" with a code (in a fleet: only this pipeline ends)
        self.gone = asyncio.Event()  # set when a fleet stops serving this pipeline: hung requests end
        self._status = "Initializing"
        self._status_since = time.monotonic()
        self._running_seconds = 0.0  # time spent Running before the current status
        self.details_extra: dict[str, Any] = {}
        self.desired = initial
        self.panic: dict[str, Any] | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self.incarnation_uuid = uuid.uuid4()  # this process (Feldera's: it tells a restart apart)
        self.resumed_from: dict[str, Any] | None = None  # the checkpoint it replayed, if any
        self.checkpoint_sequence = 0  # of the next POST /checkpoint (Feldera numbers them from 0)
        self.checkpoint_success: int | None = None
        self.checkpoint_failure: dict[str, Any] | None = None
        self.checkpoints_written = 0  # by this process: suspends and POST /checkpoint
        self.workers = 8  # Feldera's runtime_config.workers, as the operator gave it (no worker threads run)
        self._storage_sample: tuple[float, int] | None = None  # (monotonic time, bytes) of the last read
        self._storage_mb_secs = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        """Every change of the runtime status goes through here, so the time spent Running is known."""
        now = time.monotonic()
        if self._status == "Running":
            self._running_seconds += now - self._status_since
        self._status, self._status_since = value, now

    def running_seconds(self) -> float:
        """Time spent Running since the process started (Feldera's ``runtime_elapsed_msecs``)."""
        current = time.monotonic() - self._status_since if self._status == "Running" else 0.0
        return self._running_seconds + current

    # -- storage -----------------------------------------------------------------------

    def checkpoints(self) -> list[dict[str, Any]]:
        folder = self.storage / CHECKPOINT_DIR
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda c: c.get("created_at", ""))

    def write_checkpoint(self) -> dict[str, Any]:
        folder = self.storage / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = {"uuid": str(uuid.uuid4()), "created_at": dt.datetime.now(dt.UTC).isoformat(),
                      "program_digest": self.program.get("digest"), "steps": len(self.checkpoints()) + 1,
                      # Feldera's initial_start_time: a process resumed from this checkpoint started then.
                      "initial_start_time": self.initial_start_time()}
        tmp = folder / f".{checkpoint['uuid']}.tmp"
        tmp.write_text(json.dumps(checkpoint))
        tmp.replace(folder / f"{checkpoint['uuid']}.json")
        self.checkpoints_written += 1
        return checkpoint

    def initial_start_time(self) -> int:
        """When the process this one resumed from started (its own start when it resumed from nothing)."""
        resumed = (self.resumed_from or {}).get("initial_start_time")
        return resumed if isinstance(resumed, int) else int(self.started_at.timestamp())

    def storage_bytes(self) -> int:
        """Bytes of the files under the storage directory (blocking: run it in a thread)."""
        total = 0
        for folder, _, files in os.walk(self.storage):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue  # removed meanwhile
        return total

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._boot())

    def stop(self) -> None:
        """End it at once, as SIGKILL ends its process: no task of it runs on, hung requests end."""
        for task in self._tasks:
            task.cancel()
        self.gone.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def program_diff(self) -> dict[str, Any] | None:
        """What changed since the newest checkpoint (None: nothing to bootstrap)."""
        checkpoints = self.checkpoints()
        digest = self.program.get("digest")
        if self.require_approval:
            return {"program_diff": {"reason": "PIPELINE_REQUIRE_APPROVAL is set"}}
        if checkpoints and checkpoints[-1].get("program_digest") not in (None, digest):
            return {"program_diff": {"previous_program": checkpoints[-1].get("program_digest"),
                                     "program": digest, "views_to_bootstrap": self.program.get("views", [])}}
        return None

    async def _boot(self) -> None:
        await asyncio.sleep(self.init_seconds)
        checkpoints = self.checkpoints()
        if checkpoints:
            self.resumed_from = checkpoints[-1]
            self.status = "Replaying"
            await asyncio.sleep(self.replay_seconds)
        diff = self.program_diff()
        if diff is not None:
            if self.bootstrap_policy == "reject":
                self.panic = {"message": "Bootstrapping of the modified pipeline was rejected by the user.",
                              "error_code": "BootstrapRejected", "details": None, "http_status": 409}
                return
            if self.bootstrap_policy == "await_approval":
                self.status = "AwaitingApproval"
                self.details_extra = {"approval_diff": diff}
                # The reference pipeline polls its own plain attributes, set by the HTTP handlers (a test double).
                while self.bootstrap_policy == "await_approval":  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                self.details_extra = {}
            self.status = "Bootstrapping"
            await asyncio.sleep(self.replay_seconds)
        self._settle()

    def _settle(self) -> None:
        if self.desired == "Suspended":
            return
        self.status = {"Running": "Running", "Paused": "Paused", "Standby": "Standby"}[self.desired]

    async def _suspend(self) -> None:
        await asyncio.sleep(self.suspend_seconds)
        self.write_checkpoint()
        self.status = "Suspended"

    def status_body(self) -> dict[str, Any]:
        details: dict[str, Any] = {"reason": None, "connector_stats": {"num_errors": 0}, **self.details_extra}
        if self.details_tick > 0:
            elapsed = (dt.datetime.now(dt.UTC) - self.started_at).total_seconds()
            details["tick"] = int(elapsed / self.details_tick)
        if self.details_bytes > 0:
            details["padding"] = "x" * self.details_bytes
        return {
            "runtime_status": self.status,
            "runtime_status_details": details,
            "runtime_desired_status": self.desired,
            "storage_status_details": {"checkpoints": [checkpoint_metadata(c, self.storage / CHECKPOINT_DIR)
                                                       for c in self.checkpoints()]},
        }

    def _may_transition_to(self, target: str) -> bool:
        """Feldera's ``may_transition_to``: same -> same, Standby -> Paused|Running,
        Paused|Running -> each other or Suspended."""
        current = self.desired
        return current == target or (current == "Standby" and target in ("Paused", "Running")) or (
            current in ("Paused", "Running") and target in ("Paused", "Running", "Suspended"))

    # -- what it knows of itself -------------------------------------------------------

    def _sample_storage(self, size: int) -> None:
        """Fold the storage's size into Feldera's ``storage_mb_secs`` (integrated between reads)."""
        now = time.monotonic()
        if self._storage_sample is not None:
            then, before = self._storage_sample
            self._storage_mb_secs += (before + size) / 2 / 1e6 * (now - then)
        self._storage_sample = (now, size)

    async def figures(self) -> dict[str, Any]:
        """What the process really knows of itself, as Feldera's ``GlobalControllerMetrics``."""
        storage = await asyncio.to_thread(self.storage_bytes)
        self._sample_storage(storage)
        cpu = os.times()
        return {
            "state": "Running" if self.desired == "Running" else "Paused",
            "bootstrap_in_progress": self.status == "Bootstrapping",
            "transaction_status": "NoTransaction", "transaction_id": 0,
            "transaction_initiators": {"transaction_id": None, "initiated_by_api": None,
                                       "initiated_by_connectors": {}},
            "rss_bytes": _rss_bytes(), "memory_pressure": "low", "memory_pressure_epoch": 0,
            "cpu_msecs": int((cpu.user + cpu.system) * 1000),
            "uptime_msecs": int((dt.datetime.now(dt.UTC) - self.started_at).total_seconds() * 1000),
            "start_time": int(self.started_at.timestamp()), "incarnation_uuid": str(self.incarnation_uuid),
            "initial_start_time": self.initial_start_time(),
            "storage_bytes": storage, "storage_mb_secs": int(self._storage_mb_secs),
            "runtime_elapsed_msecs": int(self.running_seconds() * 1000),
            # It takes no input and runs no steps: every data counter is zero, and it is complete
            # (Feldera's pipeline_complete: every input at its end, every record processed).
            "buffered_input_records": 0, "buffered_input_bytes": 0, "total_input_records": 0,
            "total_input_bytes": 0, "total_processed_records": 0, "total_processed_bytes": 0,
            "total_completed_records": 0, "output_stall_msecs": 0, "total_initiated_steps": 0,
            "total_completed_steps": 0, "pipeline_complete": True,
        }
