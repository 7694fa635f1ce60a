"""Fault injection against the real operator: lifecycle steps, faults at random moments, invariants.

One :class:`Chaos` drives a few Pipelines of one namespace through their lifecycle with the real
operator (``pipeline-operator run``, local backend, real pipeline processes), injects one fault
at a time, waits for the system to settle, and checks what must hold after any fault:

- exactly one workload (pipeline process) per Pipeline that should have one, none otherwise;
- every Pipeline converges to its spec (desired vs. status);
- no event id twice in the store, and no event content stored under two ids;
- every ``status.history`` entry is in the store;
- no event present before the fault is missing afterwards (except those pruned by retention);
- no event of a deleted Pipeline is left in the store, and a Pipeline created again under a deleted
  one's name is served only its own events (by the operator's HTTP API).

A name is used again only once its deleted Pipeline is gone (the API server answers 404, or the name
holds another uid): a deletion that does not finish within :data:`DELETION_SECONDS` is a
:class:`Finding`, reported in the fault's outcome like a broken invariant, never a traceback.

Every random choice comes from one seeded ``random.Random``: a run is replayed by its seed. The
random delay before a fault *is* the fault's timing (where in a lifecycle step it lands); waits
for outcomes are condition polls with generous deadlines.

The suite in ``tests/faults`` and ``bench/chaos.py`` both use this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..conftest import CRD_FILE, Cluster
from ..hostile_specs import (
    DEEP,
    deep_managed_fields_pipeline,
    deep_runtime_config_pipeline,
    free_form_crd,
    pipeline_json,
)
from ..operator_harness import OperatorProcess, Pipelines

SEED_ENV = "PIPELINE_FAULTS_SEED"
SQL = "CREATE TABLE t (x INT);\nCREATE VIEW v AS SELECT x FROM t;"
FAST_PIPELINE = [{"name": "PIPELINE_INIT_SECONDS", "value": "0.3"},
                 {"name": "PIPELINE_REPLAY_SECONDS", "value": "0.3"},
                 {"name": "PIPELINE_SUSPEND_SECONDS", "value": "0.2"}]
# A settled Pipeline: what its status says for each target the chaos gives it.
RUNNING, PAUSED, STOPPED, CLEARED, DELETED = "Running", "Paused", "Stopped", "Cleared", "Deleted"
STEPS = ("start", "pause", "stop", "clear", "spec change", "delete")
PIPELINE_FAULTS = ("kill", "sigstop", "hang", "garbage", "nested", "endless-header")
# The pipeline faults whose /status answer the operator cannot read (not JSON, nested too deep, a head that
# never ends): the pipeline is shown Unavailable, then answers properly again when told ``mode=available``.
INVALID_ANSWERS = ("garbage", "nested", "endless-header")
RSS_MARGIN_MB = 50.0  # how much the operator's memory may grow during a fault that targets it
ENDLESS_PROBE_BYTES = 8 * 1024 * 1024  # of a head that never ends, read to see that it goes on
HEAD_END = b"\r\n\r\n"
INVALID_PIPELINE = "InvalidPipeline"  # the reason (Event, conditions) of a Pipeline the operator cannot read
# A Pipeline the operator cannot read is reported within this (it looks again at such a one every 60 s only).
REPORT_SECONDS = 30.0
STORE_FAULTS = ("delete", "truncate", "read-only")
SETTLE_SECONDS = 120.0
DELETION_SECONDS = 120.0  # a deleted Pipeline must be gone within this before its name is used again
EVENTS_SECONDS = 30.0  # the store catches up with the statuses (and forgets deleted pipelines) within this
SWEEP_SECONDS = 2.0  # the operator's --events-sweep-interval here: what a deletion's removal missed goes soon


def until_empty(probe: Callable[[], dict[str, set[str]]], seconds: float) -> dict[str, set[str]]:
    """Poll ``probe`` until it finds nothing, at most ``seconds``; what it found last."""
    deadline = time.monotonic() + seconds
    found = probe()
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = probe()
    return found


class Finding(Exception):
    """What a fault run found, said in one sentence: a deletion that never finished, a step the API server
    refused. It ends the run's steps; the run reports it in its outcome (the verdict), not as a traceback."""


@contextlib.contextmanager
def findings(problems: list[str]) -> Iterator[None]:
    """Add a :class:`Finding`, a failed ``kubectl`` or an API server that did not answer to ``problems``."""
    try:
        yield
    except Finding as exc:
        problems.append(str(exc))
    except subprocess.CalledProcessError as exc:
        args = " ".join(str(a) for a in exc.cmd[1:4]) if isinstance(exc.cmd, list) else str(exc.cmd)
        problems.append(f"kubectl {args} ... failed: {(exc.stderr or exc.stdout or '').strip()[:300]}")
    except ConnectionError as exc:
        problems.append(f"the API server did not answer: {exc}")


def seed_from_env(default: int | None = None) -> int:
    """The seed to use: ``$PIPELINE_FAULTS_SEED`` when set (to replay a run), else ``default``, else random."""
    if os.environ.get(SEED_ENV):
        return int(os.environ[SEED_ENV])
    return default if default is not None else random.SystemRandom().randrange(1, 1_000_000)


@dataclasses.dataclass
class Target:
    """What one Pipeline should settle to."""
    name: str
    state: str = RUNNING
    uid: str = ""
    program: int = 0  # the SQL variant in its spec
    clear_value: str = ""
    force_stop: bool = False  # stop without suspending first (Feldera's /stop?force=true)


@dataclasses.dataclass
class Outcome:
    """The invariants after one fault."""
    kind: str
    converged: bool = True
    workloads_duplicated: int = 0
    events_lost: int = 0
    events_duplicated: int = 0
    events_of_deleted: int = 0  # left in the store, or served for a Pipeline created again under the name
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    rss: RssWatch | None = None  # the operator's memory during the fault, where it was watched
    memory_grew: bool = False  # by more than RSS_MARGIN_MB, in a fault that targets the operator's memory

    @property
    def ok(self) -> bool:
        return self.converged and not (self.workloads_duplicated or self.events_lost or self.events_duplicated
                                       or self.events_of_deleted or self.memory_grew)


@dataclasses.dataclass
class RssWatch:
    """The operator's resident memory (MB) before a stretch of a run, at its highest during it (sampled every
    :data:`RSS_SAMPLE_SECONDS`) and after it; of one process (a restarted operator is not sampled)."""
    before: float | None = None
    peak: float | None = None
    after: float | None = None

    @property
    def growth(self) -> float | None:
        """How far the peak rose above the memory before (MB); None if either is not known."""
        return None if self.before is None or self.peak is None else self.peak - self.before


RSS_SAMPLE_SECONDS = 0.1


@dataclasses.dataclass
class Tally:
    kind: str
    runs: int = 0
    converged: int = 0
    workloads_duplicated: int = 0
    events_lost: int = 0
    events_duplicated: int = 0
    events_of_deleted: int = 0
    seconds: float = 0.0
    rss_growth: float | None = None  # the most the operator's memory rose during one run (MB)

    def add(self, o: Outcome) -> None:
        self.runs += 1
        self.converged += int(o.converged)
        self.workloads_duplicated += o.workloads_duplicated
        self.events_lost += o.events_lost
        self.events_duplicated += o.events_duplicated
        self.events_of_deleted += o.events_of_deleted
        self.seconds += o.seconds
        if o.rss is not None and (growth := o.rss.growth) is not None:
            self.rss_growth = growth if self.rss_growth is None else max(self.rss_growth, growth)

    @property
    def ok(self) -> bool:
        return self.converged == self.runs and not (
            self.workloads_duplicated or self.events_lost or self.events_duplicated or self.events_of_deleted)

    def line(self) -> str:
        growth = "-" if self.rss_growth is None else f"{self.rss_growth:+.1f}"
        return (f"{self.kind:<24} {self.runs:>4} {self.converged:>9} {self.workloads_duplicated:>20} "
                f"{self.events_lost:>11} {self.events_duplicated:>17} {self.events_of_deleted:>17} "
                f"{self.seconds:>8.1f} {growth:>13}")

    @staticmethod
    def header() -> str:
        return (f"{'kind':<24} {'runs':>4} {'converged':>9} {'workloads_duplicated':>20} {'events_lost':>11} "
                f"{'events_duplicated':>17} {'events_of_deleted':>17} {'seconds':>8} {'rss_growth_mb':>13}")


# --------------------------------------------------------------------------------------
# The event store, read from outside the operator
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class StoredEvent:
    event_id: str
    recorded_at: str
    content: str  # the event's JSON without its id: the same content under two ids is a duplicate


def read_store(path: Path) -> tuple[dict[str, list[StoredEvent]], str | None]:
    """Every stored event by pipeline uid, opened read-only; and why it could not be read, if so."""
    if not path.exists():
        return {}, f"the event store {path} does not exist"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return {}, f"the event store {path} cannot be opened: {exc}"
    try:
        rows = conn.execute("SELECT pipeline_uid, event_id, recorded_at, event FROM monitor_event").fetchall()
    except sqlite3.Error as exc:
        return {}, f"the event store {path} cannot be read: {exc}"
    finally:
        conn.close()
    out: dict[str, list[StoredEvent]] = {}
    for uid, event_id, recorded_at, event in rows:
        try:
            body = json.loads(event)
            body.pop("event_id", None)  # Feldera's name of the id (the rest is the event's content)
            content = json.dumps(body, sort_keys=True)
        except (ValueError, AttributeError):
            content = event
        out.setdefault(uid, []).append(StoredEvent(event_id, recorded_at, content))
    return out, None


# --------------------------------------------------------------------------------------
# Making the event store read-only while the operator has it open
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files and a folder unwritable, even for root: the inode's immutable attribute.

    ``chmod`` does not stop root, and a read-only bind mount does not affect descriptors already
    open. ``chattr +i`` does: SQLite's writes to the database and its write-ahead log fail with
    "disk I/O error" at once. The shared-memory index (``-shm``) is left writable: it is mapped
    into memory, and a write to a mapped immutable file is a SIGBUS, not an error any program
    could handle.
    """
    present = [p for p in paths if p.exists()]
    subprocess.run(["chattr", "+i", *map(str, present)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, present)], check=False, capture_output=True)


def rss_of(pid: int) -> float | None:
    """A process's resident memory (MB, ``VmRSS`` of ``/proc/<pid>/status``); None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def can_make_immutable(folder: Path) -> str | None:
    """None when :func:`immutable` works here; else why not (no chattr, no CAP_LINUX_IMMUTABLE, tmpfs)."""
    probe = folder / ".immutable-probe"
    probe.write_text("x")
    try:
        res = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        if res.returncode != 0:
            return f"chattr +i is not permitted here: {res.stderr.strip()}"
        try:
            with open(probe, "a") as fh:
                fh.write("y")
            return "chattr +i did not stop a write here"
        except OSError:
            return None
    except FileNotFoundError:
        return "chattr is not installed"
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# The chaos driver
# --------------------------------------------------------------------------------------

class Chaos:
    def __init__(self, cluster: Cluster, namespace: str, state_dir: Path, seed: int,
                 say: Callable[[str], None] = print, operator_args: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.seed = seed
        self.rng = random.Random(seed)
        self.say = say
        self.pipelines = Pipelines(cluster, namespace)
        self.store_dir = state_dir / "store"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.op = OperatorProcess(cluster, namespace, state_dir,
                                  ["--events-sweep-interval", str(SWEEP_SECONDS), *operator_args,
                                   "--event-store", str(self.store_path)])
        self.targets: dict[str, Target] = {}
        self.retired_uids: set[str] = set()  # uids of deleted Pipelines: never a workload again
        self.retired_ids: set[str] = set()  # ids of their events: never served for a Pipeline again
        self.seen_ids: dict[str, set[str]] = {}  # every event id seen in the store or a history, by uid
        self.operator_crashes = 0
        self.deletion_seconds = DELETION_SECONDS

    @property
    def store_path(self) -> Path:
        return self.store_dir / "events.sqlite"

    # -- set-up and tear-down ------------------------------------------------------------

    def start(self, pipelines: int = 3) -> None:
        self.op.start()
        for i in range(pipelines):
            target = Target(f"chaos-{i}")
            self.targets[target.name] = target
            self._create(target)
        problems = self.wait_settled()
        if problems:
            raise Finding(f"the pipelines did not start (seed {self.seed}): {problems}\n{self.op.log()[-3000:]}")

    def close(self) -> None:
        if self.op.proc is not None and self.op.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.op.stop()
        from pipeline_operator.backends.local import processes_under
        for pid in processes_under(self.op.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)

    def restart_operator(self) -> None:
        if self.op.proc is not None and self.op.proc.poll() is None:
            self.op.kill()
        self.op.start()

    def operator_rss(self) -> float | None:
        """The operator's resident memory now (MB), None if it is not running."""
        if self.op.proc is None or self.op.proc.poll() is not None:
            return None
        return rss_of(self.op.proc.pid)

    @contextlib.contextmanager
    def watch_rss(self) -> Iterator[RssWatch]:
        """Sample the operator's memory while the block runs (from a thread of its own): its
        :class:`RssWatch`, complete once the block is left."""
        pid = self.op.proc.pid if self.op.proc is not None and self.op.proc.poll() is None else None
        watch = RssWatch(before=rss_of(pid) if pid else None)
        watch.peak = watch.before
        stop = threading.Event()

        def sample() -> None:
            while pid and not stop.wait(RSS_SAMPLE_SECONDS):
                if (rss := rss_of(pid)) is not None:
                    watch.peak = max(watch.peak or 0.0, rss)
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield watch
        finally:
            stop.set()
            thread.join()
            watch.after = rss_of(pid) if pid else None

    # -- Pipelines -------------------------------------------------------------------------

    def spec(self, target: Target) -> dict[str, Any]:
        sql = SQL + "".join(f"\nCREATE VIEW v{n} AS SELECT x FROM t;" for n in range(1, target.program + 1))
        spec = {"desiredStatus": "Stopped" if target.state in (STOPPED, CLEARED) else "Provisioned",
                "runtimeDesiredStatus": PAUSED if target.state == PAUSED else RUNNING,
                "program": {"sql": sql}, "deployment": {"env": FAST_PIPELINE}}
        if target.force_stop:
            spec["stopMode"] = "Force"
        return spec

    def _create(self, target: Target) -> None:
        """Create the Pipeline again under a deleted one's name, once that one is gone."""
        self.wait_gone(target)
        fresh = dataclasses.replace(target, state=RUNNING, clear_value="")
        target.uid = self.pipelines.create(target.name, self.spec(fresh))["metadata"]["uid"]
        target.state, target.clear_value = RUNNING, ""

    def wait_gone(self, target: Target) -> None:
        """Wait until a deleted Pipeline is gone: the API server answers 404, or its name holds another
        uid. One that is still there after :attr:`deletion_seconds` is a :class:`Finding` (saying what
        holds it), and its name is not used again."""
        if not target.uid:
            return
        timeout = self.deletion_seconds
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj = self._get(target.name)
            except ConnectionError as exc:
                why = f"the API server did not answer ({exc})"
            else:
                if obj is None or obj["metadata"]["uid"] != target.uid:
                    return
                why = self._deleting(obj)
            if time.monotonic() > deadline:
                raise Finding(f"{target.name}: the deletion of uid {target.uid} did not finish within "
                              f"{timeout:.0f}s ({why}); not created again")
            time.sleep(0.3)

    @staticmethod
    def _deleting(obj: dict[str, Any]) -> str:
        """What holds a Pipeline whose deletion has not finished: its finalizers, and why, if it says."""
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp"):
            return "it was never deleted"
        why = f"finalizers {meta.get('finalizers') or []}"
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Stalled" and c.get("status") == "True":
                why += f"; {c.get('reason')}: {c.get('message', '')[:300]}"
        return why

    def choose_step(self, target: Target) -> str:
        if target.state == DELETED:
            return "start"
        allowed = {RUNNING: ["pause", "stop", "delete"],
                   PAUSED: ["start", "stop", "delete"],
                   STOPPED: ["start", "clear", "spec change", "delete"],
                   CLEARED: ["start", "spec change", "delete"]}[target.state]
        return self.rng.choice(allowed)

    def apply_step(self, target: Target, step: str) -> None:
        """Change a Pipeline's spec (or delete it, or create it again) and return at once: the operator
        acts on it later. The target changes only once the API server has accepted the change. Creating
        a Pipeline again first waits for the deleted one to be gone (:meth:`wait_gone`)."""
        if step == "start" and target.state == DELETED:
            self._create(target)
        elif step == "clear":
            value = f"c{self.rng.randrange(10**9)}"
            self.pipelines.annotate(target.name, "dataflow.dev/clear-storage", value)
            target.state, target.clear_value = CLEARED, value
        elif step == "delete":
            self.retired_ids |= self.seen_ids.get(target.uid, set()) | self.store_ids().get(target.uid, set())
            self.cluster.kubectl("delete", "pipeline", target.name, "-n", self.namespace, "--wait=false")
            target.state = DELETED
            self.retired_uids.add(target.uid)
        else:
            state = {"start": RUNNING, "pause": PAUSED, "stop": STOPPED}.get(step, target.state)
            changed = dataclasses.replace(target, state=state, program=target.program + (step == "spec change"))
            self.pipelines.patch_spec(target.name, self.spec(changed))
            target.state, target.program = changed.state, changed.program

    # -- convergence ------------------------------------------------------------------------

    def _get(self, name: str, output: str = "json") -> dict[str, Any] | None:
        """The Pipeline as the API server serves it; None if there is none. One nested deeper than Python's
        JSON decoder goes (a hostile spec) is its metadata and status only, which the operator writes."""
        res = self.cluster.kubectl("get", "pipeline", name, "-n", self.namespace, "-o", output,
                                   "--request-timeout=10s", check=False)
        if res.returncode != 0:
            if "NotFound" in res.stderr:
                return None
            raise ConnectionError(res.stderr.strip())
        try:
            obj: dict[str, Any] = json.loads(res.stdout.strip() or "{}")  # jsonpath of nothing: nothing
        except RecursionError:
            if output != "json":
                raise
            parts = [self._get(name, f"jsonpath={{.{part}}}") for part in ("metadata", "status")]
            return None if parts[0] is None else {"metadata": parts[0], "status": parts[1]}
        return obj

    def unsettled(self, target: Target) -> str | None:
        """Why the Pipeline has not converged to its target yet (None once it has)."""
        obj = self._get(target.name)
        if target.state == DELETED:
            if obj is not None and obj["metadata"]["uid"] == target.uid:
                return f"{target.name}: still present after its deletion"
            if self.op.pipeline_processes(target.uid):
                return f"{target.name}: deleted, but its pipeline process still runs"
            return None
        if obj is None:
            return f"{target.name}: missing"
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"]:
            return f"{target.name}: generation {obj['metadata']['generation']} not observed yet"
        wanted = {RUNNING: RUNNING, PAUSED: PAUSED, STOPPED: STOPPED, CLEARED: STOPPED}[target.state]
        if st.get("deploymentStatus") != wanted:
            return f"{target.name}: deploymentStatus {st.get('deploymentStatus')}, want {wanted}"
        if "deploymentError" in st:
            return f"{target.name}: error {st['deploymentError'].get('errorCode')}"
        if st.get("programStatus") != "Success":
            return f"{target.name}: programStatus {st.get('programStatus')}"
        if target.state == CLEARED and (st.get("storageStatus") != "Cleared" or (
                st.get("handledActions") or {}).get("clearStorage", {}).get("value") != target.clear_value):
            return f"{target.name}: storage {st.get('storageStatus')}, clear {target.clear_value} not applied"
        processes = len(self.op.pipeline_processes(target.uid))
        want = 1 if target.state in (RUNNING, PAUSED) else 0
        if processes != want:
            return f"{target.name}: {processes} pipeline processes, want {want}"
        return None

    def wait_settled(self, timeout: float = SETTLE_SECONDS) -> list[str]:
        """Poll until every Pipeline has converged; the reasons of those that did not, at the deadline.

        An operator that exits on its own is restarted (and counted): the fault then showed a crash.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.op.proc is not None and self.op.proc.poll() is not None:
                self.operator_crashes += 1
                self.say(f"the operator exited on its own ({self.op.proc.returncode}); log tail:\n"
                         f"{self.op.log()[-1500:]}")
                self.op.start()
            try:
                problems = [p for t in self.targets.values() if (p := self.unsettled(t))]
            except ConnectionError as exc:
                problems = [f"API server: {exc}"]
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.3)

    # -- invariants -------------------------------------------------------------------------

    def live_uids(self) -> dict[str, Target]:
        return {t.uid: t for t in self.targets.values() if t.state != DELETED}

    def histories(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.targets.values():
            if t.state != DELETED and (obj := self._get(t.name)) is not None:
                out[t.uid] = [h["eventId"] for h in (obj.get("status") or {}).get("history") or []]
        return out

    def store_ids(self) -> dict[str, set[str]]:
        stored, _ = read_store(self.store_path)
        return {uid: {e.event_id for e in events} for uid, events in stored.items()}

    def check(self, kind: str, before: dict[str, set[str]], started: float,
              problems: list[str], reference: str = "store") -> Outcome:
        """The invariants once the Pipelines have settled (``problems``: those that did not).

        ``reference="history"`` (the store itself was destroyed): what must be stored again is what
        the histories hold; an entry that newer ones pushed out of a full ``status.history`` since
        (``--history-limit``) was only in the destroyed store, and is gone by the fault's nature."""
        o = Outcome(kind, converged=not problems, problems=list(problems))
        live = self.live_uids()
        for uid, target in live.items():
            n = len(self.op.pipeline_processes(uid))
            if n > 1:
                o.workloads_duplicated += n - 1
                o.problems.append(f"{target.name}: {n} pipeline processes")
        for uid in self.retired_uids:
            if n := len(self.op.pipeline_processes(uid)):
                o.workloads_duplicated += n
                o.problems.append(f"deleted pipeline {uid}: {n} pipeline processes left")

        # Events: the history must reach the store and nothing stored before may vanish. The store
        # is written shortly after the status, so wait for it (generously) before counting losses.
        def missing() -> dict[str, set[str]]:
            now = self.store_ids()
            gaps: dict[str, set[str]] = {}
            for uid, ids in self.histories().items():
                if lost := set(ids) - now.get(uid, set()):
                    gaps[uid] = lost
            current = self.histories() if reference == "history" else {}
            for uid, ids in before.items():
                if reference == "history":
                    ids = ids & set(current.get(uid, []))
                if uid in live and (lost := ids - now.get(uid, set()) - self._pruned(uid, ids)):
                    gaps.setdefault(uid, set()).update(lost)
            return gaps
        gaps = until_empty(missing, EVENTS_SECONDS)
        for uid, lost in gaps.items():
            o.events_lost += len(lost)
            o.problems.append(f"{live[uid].name if uid in live else uid}: {len(lost)} events missing from the "
                              f"store, e.g. {sorted(lost)[:3]}")
        stored, error = read_store(self.store_path)
        if error:
            o.problems.append(error)
        for uid, events in stored.items():
            ids = [e.event_id for e in events]
            contents = [(e.recorded_at, e.content) for e in events]
            dup = (len(ids) - len(set(ids))) + (len(contents) - len(set(contents)))
            if dup:
                o.events_duplicated += dup
                o.problems.append(f"{uid}: {dup} events stored twice")
        self.check_deleted(o, live)
        o.seconds = time.monotonic() - started
        return o

    def check_deleted(self, o: Outcome, live: dict[str, Target]) -> None:
        """Deleted Pipelines' events leave the store (the deletion queues their removal; what it missed,
        the operator's sweep removes), and a Pipeline created under a deleted one's name is served none
        of them by the operator's HTTP API."""
        def left() -> dict[str, set[str]]:
            stored = self.store_ids()
            self.remember(stored)
            return {uid: stored[uid] for uid in self.retired_uids if stored.get(uid)}
        for uid, ids in until_empty(left, EVENTS_SECONDS).items():
            o.events_of_deleted += len(ids)
            o.problems.append(f"deleted pipeline {uid}: {len(ids)} events still in the store after "
                              f"{EVENTS_SECONDS:.0f}s")
        for target in live.values():
            try:
                served = self.served_ids(target.name)
            except Finding as exc:
                o.converged = False
                o.problems.append(str(exc))
                continue
            if inherited := served & self.retired_ids:
                o.events_of_deleted += len(inherited)
                o.problems.append(f"{target.name} (uid {target.uid}): served {len(inherited)} events of a deleted "
                                  f"Pipeline of that name, e.g. {sorted(inherited)[:3]}")

    def served_ids(self, name: str, timeout: float = EVENTS_SECONDS) -> set[str]:
        """The ids of the events the operator's HTTP API serves for a Pipeline (as an administrator); a
        :class:`Finding` if it answers no list within ``timeout`` (restarting, the store unreadable)."""
        token = self.cluster.plane.users["admin"].token
        req = urllib.request.Request(f"{self.op.api_url}/v0/pipelines/{name}/events",
                                     headers={"Authorization": f"Bearer {token}", "Feldera-Tenant": self.namespace})
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return {str(e["event_id"]) for e in json.loads(r.read())}
            except urllib.error.HTTPError as exc:
                why = f"{exc.code} {exc.read()[:300].decode(errors='replace')}"
            except (OSError, ValueError, KeyError, TypeError) as exc:  # no answer, or not a list of events
                why = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise Finding(f"{name}: the operator's HTTP API did not serve its events within {timeout:.0f}s "
                              f"(last: {why})")
            time.sleep(0.5)

    def remember(self, stored: dict[str, set[str]]) -> None:
        """Keep every event id seen by uid (the ids of a Pipeline deleted later are known even once its
        events are removed)."""
        for uid, ids in stored.items():
            self.seen_ids.setdefault(uid, set()).update(ids)

    def _pruned(self, uid: str, ids: set[str]) -> set[str]:
        """Events retention may have removed: older than the oldest event still stored for that pipeline."""
        stored, _ = read_store(self.store_path)
        events = stored.get(uid, [])
        if not events:
            return set()
        oldest = min(e.recorded_at for e in events)
        before, _ = self._before_times
        return {i for i in ids if before.get(i, oldest) < oldest}

    _before_times: tuple[dict[str, str], None] = ({}, None)

    def snapshot(self) -> dict[str, set[str]]:
        """The stored events now (to compare after the fault), with their times (for retention)."""
        stored, _ = read_store(self.store_path)
        self._before_times = ({e.event_id: e.recorded_at for events in stored.values() for e in events}, None)
        ids = {uid: {e.event_id for e in events} for uid, events in stored.items()}
        self.remember(ids)
        return ids

    # -- faults -----------------------------------------------------------------------------

    def _fault_delay(self, upper: float = 2.0) -> None:
        """The moment of the fault inside a lifecycle step: a seeded random offset after the step."""
        time.sleep(self.rng.uniform(0.0, upper))

    def run(self, kind: str, inject: Callable[[], None], reference: str = "store") -> Outcome:
        """One fault: a random lifecycle step, the fault at a random moment of it, then the invariants.

        ``reference="history"``: the store itself was destroyed, so what must survive is what the
        status still holds (the history), not everything stored before.
        """
        started = time.monotonic()
        target = self.rng.choice(list(self.targets.values()))
        step = self.choose_step(target)
        before = self.snapshot() if reference == "store" else self.histories_as_sets()
        self.say(f"[seed {self.seed}] {kind}: {step} {target.name} ({target.state})")
        problems: list[str] = []
        with findings(problems):
            self.apply_step(target, step)
            inject()
        problems += self.wait_settled()
        outcome = self.check(kind, before, started, problems, reference)
        if not outcome.ok:
            self.say(f"[seed {self.seed}] {kind} after {step} of {target.name}: " + "; ".join(outcome.problems))
        return outcome

    def histories_as_sets(self) -> dict[str, set[str]]:
        self._before_times = ({}, None)
        return {uid: set(ids) for uid, ids in self.histories().items()}

    def kill_operator(self) -> None:
        self._fault_delay()
        self.op.kill()
        self.op.start()

    def pick_running(self) -> Target | None:
        running = [t for t in self.targets.values() if t.state in (RUNNING, PAUSED)]
        return self.rng.choice(running) if running else None

    def pipeline_folder(self, target: Target) -> Path | None:
        return next((self.op.state_dir / "pipelines").glob(f"*__{target.uid}"), None)

    def debug_fail(self, target: Target, mode: str) -> int:
        """``POST /debug/fail?mode=`` on the pipeline process, with its control token when it has one."""
        folder = self.pipeline_folder(target)
        if folder is None:
            raise Finding(f"{target.name} has no pipeline folder: the fault could not be injected")
        port = int((folder / "port").read_text())
        headers = {}
        if (folder / "token").exists():
            headers["Authorization"] = f"Bearer {(folder / 'token').read_text().strip()}"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/debug/fail?mode={mode}", method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError as exc:  # no answer at all (urllib's URLError, a timeout)
            raise Finding(f"{target.name}: its pipeline process does not answer /debug/fail?mode={mode} "
                          f"({getattr(exc, 'reason', exc)}): the fault could not be injected") from None

    def endless_head(self, target: Target, enough: int = ENDLESS_PROBE_BYTES) -> str | None:
        """Read ``GET /status`` of a pipeline told ``mode=endless-header`` as a client without bounds would:
        None if ``enough`` bytes came with no end to the answer's head (then the connection is closed), else
        what came instead."""
        folder = self.pipeline_folder(target)
        if folder is None:
            return f"{target.name} has no pipeline folder"
        port = int((folder / "port").read_text())
        received, tail = 0, b""  # bytes counted; the last three kept (an end of the head may span two reads)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"GET /status HTTP/1.1\r\nHost: pipeline\r\n\r\n")
                while received < enough:
                    data = conn.recv(1 << 20)
                    if not data:
                        return f"the answer ended after {received} bytes"
                    if HEAD_END in tail + data:
                        return f"the answer's head ended within {received + len(data)} bytes"
                    received += len(data)
                    tail = (tail + data)[-3:]
        except OSError as exc:
            return f"/status could not be read ({exc})"
        return None

    def recover(self, target: Target) -> None:
        """A pipeline the system stopped with an error waits for the user (Feldera): dismiss and start."""
        obj = self._get(target.name)
        if obj is None or "deploymentError" not in (obj.get("status") or {}):
            return
        stamp = str(time.time_ns())
        self.pipelines.annotate(target.name, "dataflow.dev/dismiss-error", stamp)
        self.pipelines.annotate(target.name, "dataflow.dev/start", stamp)

    def pipeline_fault(self, mode: str, hang_seconds: float = 8.0) -> Outcome:
        """A pipeline process killed, stopped (SIGSTOP), hung, or answering what cannot be read (garbage,
        JSON nested too deep, a head that never ends: :data:`INVALID_ANSWERS`).

        The operator may stop a failed pipeline with an error (Feldera does, and then waits for the
        user): the invariants are checked once it settles either way, then the user's dismiss and
        start must bring it back to its spec. The operator's memory is watched meanwhile; in the
        ``endless-header`` fault, which aims at it, it may rise by :data:`RSS_MARGIN_MB` at most, and
        the status must say why the answer was refused (its head).
        """
        started = time.monotonic()
        problems: list[str] = []
        before: dict[str, set[str]] = {}
        with self.watch_rss() as rss, findings(problems):
            target = self.pick_running()
            if target is None:
                target = next(iter(self.targets.values()))
                self.apply_step(target, "start")
                self.wait_settled()
            before = self.snapshot()
            self.say(f"[seed {self.seed}] pipeline {mode}: {target.name}")
            pids = self.op.pipeline_processes(target.uid)
            self._fault_delay(1.0)
            if mode == "kill":
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            elif mode == "sigstop":
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                time.sleep(hang_seconds)  # the length of the hang is the fault
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            else:
                code = self.debug_fail(target, mode)
                if code != 202:
                    problems.append(f"the pipeline process refused /debug/fail?mode={mode} with {code}: the fault "
                                    "could not be injected")
            # The fault's effect: stopped by the system with an error (Feldera stops a pipeline whose
            # process is gone), or Unavailable (Feldera's runtime status while /status cannot be read or
            # understood: no answer, garbage, nesting too deep, a head that never ends), or, for a short
            # SIGSTOP, nothing at all.
            deadline = time.monotonic() + SETTLE_SECONDS
            seen = ""
            st: dict[str, Any] = {}
            while time.monotonic() < deadline and not problems:
                obj = self._get(target.name) or {}
                st = obj.get("status") or {}
                if "deploymentError" in st and st.get("deploymentStatus") == STOPPED:
                    seen = "stopped with an error"
                    break
                if mode in ("hang", *INVALID_ANSWERS) and st.get("deploymentStatus") == "Unavailable":
                    seen = "Unavailable"
                    break
                if mode == "sigstop" and self.unsettled(target) is None:
                    break
                time.sleep(0.3)
            if mode in ("hang", *INVALID_ANSWERS) and not problems and not seen:
                problems.append(f"pipeline {mode}: the status showed neither Unavailable nor an error within "
                                f"{SETTLE_SECONDS:.0f}s")
            reason = str((st.get("deploymentRuntimeStatusDetails") or {}).get("reason", ""))
            if seen == "Unavailable" and mode == "endless-header":
                if "head" not in reason:
                    problems.append(f"pipeline endless-header: Unavailable, but not for its answer's head: {reason!r}")
                if why := self.endless_head(target):
                    problems.append(f"pipeline endless-header: {why}")
            if seen == "Unavailable" and mode in INVALID_ANSWERS:
                self.debug_fail(target, "available")  # the pipeline answers properly again: it must come back
            elif seen == "Unavailable" and mode == "hang":
                # A hung process answers nothing, not even /debug (nor the /suspend of a graceful stop):
                # the user force-stops it (which kills the process) and starts it again.
                target.force_stop = True
                self.apply_step(target, "stop")
                problems += self.wait_settled()
                self.apply_step(target, "start")
            self.recover(target)
        problems += self.wait_settled()
        outcome = self.check(f"pipeline {mode}", before, started, problems)
        outcome.rss = rss
        if mode == "endless-header" and (growth := rss.growth) is not None and growth > RSS_MARGIN_MB:
            outcome.memory_grew = True
            outcome.problems.append(f"pipeline endless-header: the operator's memory rose by {growth:.0f} MB "
                                    f"({rss.before:.0f} -> {rss.peak:.0f} MB), more than {RSS_MARGIN_MB:.0f} MB")
        return outcome

    def store_fault(self, mode: str, seconds: float = 5.0) -> Outcome:
        """The event store deleted, truncated, or made read-only while the operator runs."""
        store = self.store_path
        files = [store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")]

        def inject() -> None:
            self._fault_delay(1.0)
            if mode == "delete":
                for f in files:
                    f.unlink(missing_ok=True)
            elif mode == "truncate":
                for f in files[:2]:
                    if f.exists():
                        os.truncate(f, 0)
            elif mode == "read-only":
                with immutable(store, files[1], self.store_dir):
                    # While it lasts, the pipelines keep changing: events the operator cannot store.
                    target = self.rng.choice(list(self.targets.values()))
                    step = self.choose_step(target)
                    self.say(f"[seed {self.seed}] store read-only: meanwhile {step} {target.name} ({target.state})")
                    self.apply_step(target, step)
                    time.sleep(seconds)  # the length of the outage is the fault
        return self.run(f"store {mode}", inject, reference="store" if mode == "read-only" else "history")

    # -- a hostile tenant's Pipelines ----------------------------------------------------------

    def deep_spec_fault(self) -> Outcome:
        """A tenant's Pipelines nested :data:`~tests.hostile_specs.DEEP` levels deep, while a random lifecycle
        step of the others goes on:

        - a ``spec.runtimeConfig`` that deep is refused by the API server, which names the field (an unknown key,
          with kubectl's strict field validation; a typed key, even without it);
        - ``metadata.managedFields`` that deep (which no CRD can refuse) is stored: that Pipeline runs as any;
        - a spec that deep stored while the CRD left ``runtimeConfig`` free-form (as it did before it typed
          it: the CRD as it was, for a moment) is reported (a Warning Event ``InvalidPipeline``, Ready False,
          Stalled True) and left alone: no pipeline process;
        - a Pipeline created after them in the namespace reaches Running;

        then the three are deleted, and each deletion completes. A step that does not happen is a
        :class:`Finding`."""
        def inject() -> None:
            self._fault_delay(1.0)
            self.refuse_deep_runtime_config("deep-refused")
            with self.extras() as made:
                made["deep-fields"] = self.create_deep_managed_fields("deep-fields")
                made["deep-legacy"] = self.store_deep_spec("deep-legacy")
                made["deep-after"] = self._create_text(pipeline_json("deep-after", self.namespace,
                                                                     self.spec(Target("deep-after"))))
                for name in ("deep-fields", "deep-after"):
                    self.wait_extra(f"{name} to be Running", lambda name=name: self.extra_running(name, made[name]))
                self.wait_extra("deep-legacy to be reported InvalidPipeline",
                                lambda: self.reported_invalid("deep-legacy", made["deep-legacy"]), REPORT_SECONDS)
                if pids := self.op.pipeline_processes(made["deep-legacy"]):
                    raise Finding(f"deep-legacy, which cannot be read, has pipeline processes {pids}")
        return self.run("deep spec", inject)

    @contextlib.contextmanager
    def hostile_neighbours(self) -> Iterator[list[str]]:
        """A hostile tenant's Pipelines beside the chaos's own while the block runs: ``hostile-endless``, whose
        process answers ``/status`` with a head that never ends, ``deep-fields`` (managedFields nested too
        deep) and ``deep-legacy`` (a spec nested too deep, stored under the free-form CRD). Yields their
        names. On leaving: the operator must have read the endless head (its reason is in the status) and
        reported ``deep-legacy``; then the three are deleted and gone (:class:`Finding` otherwise)."""
        endless = Target("hostile-endless")
        with self.extras() as made:
            made[endless.name] = endless.uid = self._create_text(
                pipeline_json(endless.name, self.namespace, self.spec(endless)))
            made["deep-fields"] = self.create_deep_managed_fields("deep-fields")
            made["deep-legacy"] = self.store_deep_spec("deep-legacy")
            self.wait_extra(f"{endless.name} to be Running", lambda: self.extra_running(endless.name, endless.uid))
            if (code := self.debug_fail(endless, "endless-header")) != 202:
                raise Finding(f"{endless.name}: /debug/fail?mode=endless-header answered {code}")
            yield list(made)

            def head_refused() -> bool:
                st = (self._get(endless.name) or {}).get("status") or {}
                return "head" in str((st.get("deploymentRuntimeStatusDetails") or {}).get("reason", ""))
            self.wait_extra(f"{endless.name}'s status to say its answer's head was refused", head_refused)
            self.wait_extra("deep-legacy to be reported InvalidPipeline",
                            lambda: self.reported_invalid("deep-legacy", made["deep-legacy"]), REPORT_SECONDS)

    def _create_text(self, text: str, *args: str) -> str:
        """Create a Pipeline given as JSON text (kubectl's own validation, unless ``args`` say otherwise): its uid."""
        return self.cluster.kubectl("create", *args, "-f", "-", "-o", "jsonpath={.metadata.uid}",
                                    input=text).stdout.strip()

    def refuse_deep_runtime_config(self, name: str) -> None:
        """A spec.runtimeConfig nested too deep is refused, naming the field (a :class:`Finding` otherwise)."""
        spec = self.spec(Target(name))
        typed = ("runtimeConfig", "dev_tweaks", "adaptive_joins")  # a boolean in the CRD
        for text, args, field in (
                (deep_runtime_config_pipeline(name, self.namespace, spec=spec), (),
                 "spec.runtimeConfig.dev_tweaks.x_deep"),
                (pipeline_json(name, self.namespace, spec, deep_at=typed), ("--validate=false",),
                 "spec.runtimeConfig.dev_tweaks.adaptive_joins")):
            res = self.cluster.kubectl("create", *args, "-f", "-", input=text, check=False)
            if res.returncode == 0:
                self.cluster.kubectl("delete", "pipeline", name, "-n", self.namespace, "--wait=false", check=False)
                raise Finding(f"the API server stored {name}, whose {field} nests {DEEP} levels")
            if field not in res.stderr:
                raise Finding(f"the API server refused {name} without naming {field}: {res.stderr.strip()[:300]}")

    def create_deep_managed_fields(self, name: str) -> str:
        """A Pipeline (running) whose metadata.managedFields nests too deep, stored as written: its uid."""
        uid = self._create_text(deep_managed_fields_pipeline(name, self.namespace, spec=self.spec(Target(name))))
        shown = self.cluster.kubectl("get", "pipeline", name, "-n", self.namespace, "-o", "json",
                                     "--show-managed-fields").stdout
        if shown.count('"f:a"') < DEEP - 1:
            raise Finding(f"the API server did not store {name}'s managedFields {DEEP} levels deep: the fault "
                          "could not be injected")
        return uid

    def store_deep_spec(self, name: str) -> str:
        """A Pipeline whose spec.runtimeConfig nests too deep, stored as it could be before the CRD typed
        runtimeConfig: the CRD free-form there for as long as it takes, then as it was. Its uid."""
        crd = yaml.safe_load(CRD_FILE.read_text())
        text = pipeline_json(name, self.namespace, self.spec(Target(name)),
                             deep_at=("runtimeConfig", "dev_tweaks", "adaptive_joins"))
        self._apply_crd(free_form_crd(crd))
        try:
            deadline = time.monotonic() + 30
            while True:  # until the API server serves the free-form CRD
                res = self.cluster.kubectl("create", "-f", "-", "-o", "jsonpath={.metadata.uid}", input=text,
                                           check=False)
                if res.returncode == 0:
                    return res.stdout.strip()
                if time.monotonic() > deadline:
                    raise Finding(f"{name} could not be stored under the free-form CRD: {res.stderr.strip()[:300]}")
                time.sleep(0.3)
        finally:
            self._apply_crd(crd)

    def _apply_crd(self, crd: dict[str, Any]) -> None:
        from pipeline_operator_dev import controlplane
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))
        controlplane.wait_established(self.cluster.kubectl)

    def wait_extra(self, what: str, probe: Callable[[], object], timeout: float = SETTLE_SECONDS) -> None:
        """Poll until ``probe`` holds; a :class:`Finding` after ``timeout``, or as soon as the operator exits
        (:meth:`wait_settled` counts that and starts it again)."""
        deadline = time.monotonic() + timeout
        while not probe():
            if self.op.proc is not None and self.op.proc.poll() is not None:
                raise Finding(f"the operator exited ({self.op.proc.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise Finding(f"waited {timeout:.0f}s for {what}")
            time.sleep(0.3)

    def extra_running(self, name: str, uid: str) -> bool:
        obj = self._get(name)
        return (obj is not None and obj["metadata"]["uid"] == uid
                and (obj.get("status") or {}).get("deploymentStatus") == RUNNING
                and len(self.op.pipeline_processes(uid)) == 1)

    def reported_invalid(self, name: str, uid: str) -> bool:
        """Whether the operator reported the Pipeline as one it cannot read: a Warning Event InvalidPipeline
        about it (this uid), and its Ready False and Stalled True for that reason."""
        obj = self._get(name)
        if obj is None or obj["metadata"]["uid"] != uid:
            return False
        conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
        if not (conditions.get("Stalled", {}).get("status") == "True"
                and conditions["Stalled"].get("reason") == INVALID_PIPELINE
                and conditions.get("Ready", {}).get("status") == "False"):
            return False
        events = json.loads(self.cluster.kubectl("get", "events", "-n", self.namespace, "-o", "json",
                                                 "--field-selector", f"involvedObject.uid={uid}").stdout)["items"]
        return any(e.get("type") == "Warning" and e.get("reason") == INVALID_PIPELINE for e in events)

    @contextlib.contextmanager
    def extras(self) -> Iterator[dict[str, str]]:
        """Pipelines that are not targets, made in the block (name -> uid): removed on leaving it
        (:meth:`remove_extras`); after a failure, as far as possible, and the failure is what is said."""
        made: dict[str, str] = {}
        try:
            yield made
        except BaseException:
            with contextlib.suppress(Finding, subprocess.CalledProcessError, ConnectionError):
                self.remove_extras(made)
            raise
        self.remove_extras(made)

    def remove_extras(self, made: dict[str, str]) -> None:
        """Delete Pipelines that are not targets (name -> uid); each must be gone, with no process left."""
        for name in made:
            self.cluster.kubectl("delete", "pipeline", name, "-n", self.namespace, "--wait=false", check=False)
        for name, uid in made.items():
            self.wait_gone(Target(name, state=DELETED, uid=uid))
            self.wait_extra(f"the pipeline processes of deleted {name} to end", lambda uid=uid: not
                            self.op.pipeline_processes(uid), timeout=30)


# --------------------------------------------------------------------------------------
# The request storm
# --------------------------------------------------------------------------------------

def storm_requests(rng: random.Random, admin_token: str, count: int,
                   also: tuple[str, ...] = ()) -> list[tuple[str, str, dict[str, str], bytes]]:
    """``count`` unauthenticated or malformed requests: (method, encoded path, headers, body); ``also``: more
    pipeline names the paths name (a hostile tenant's, :meth:`Chaos.hostile_neighbours`)."""
    names = ["chaos-0", "chaos-1", "nope", "%ff%fe", "a" * 300, "..%2f..%2fetc%2fpasswd", *also]
    out = []
    for _ in range(count):
        kind = rng.randrange(9)
        name = rng.choice(names)
        path = rng.choice([f"/v0/pipelines/{name}", f"/v0/pipelines/{name}/events", "/v0/pipelines",
                           f"/v0/pipelines/{name}/start", f"/v0/pipelines/{name}/events/{name}"])
        headers: dict[str, str] = {}
        body = b""
        method = "GET"
        if kind == 0:  # no token
            pass
        elif kind == 1:  # a bad token
            headers["Authorization"] = f"Bearer {rng.randbytes(16).hex()}"
        elif kind == 2:  # not a bearer token, or an empty one
            headers["Authorization"] = rng.choice(["Basic YWRtaW46YWRtaW4=", "Bearer ", "Bearer\t\t", "bearer x"])
        elif kind == 3:  # a garbage path
            path = "/" + "".join(rng.choice("abc%/.~:@!$&'()*+,;=") for _ in range(rng.randrange(1, 80)))
        elif kind == 4:  # invalid UTF-8 in the path and in the tenant header (as latin-1 bytes)
            path = f"/v0/pipelines/%ff%fe%fd{rng.randrange(100)}"
            headers["Authorization"] = f"Bearer {admin_token}"
            headers["Feldera-Tenant"] = "\xff\xfe\xc3\x28"
        elif kind == 5:  # a huge header
            headers["Authorization"] = "Bearer " + "x" * rng.choice([17_000, 70_000])
        elif kind == 6:  # a non-JSON body, authenticated: reaches the parsers
            method = rng.choice(["POST", "PUT", "PATCH"])
            path = "/v0/pipelines" if method == "POST" else f"/v0/pipelines/{name}"
            headers["Authorization"] = f"Bearer {admin_token}"
            headers["Content-Type"] = "application/json"
            body = rng.choice([b"\xff\xfe{not json", b"[1,2", b"null", b'{"name": 5}', b'"x"' * 1000,
                               b'{"a":' * 5000])
        elif kind == 7:  # a non-JSON body without a token
            method = "POST"
            headers["Content-Type"] = "application/json"
            body = rng.randbytes(rng.randrange(1, 2000))
        else:  # a bad token with an invalid tenant
            headers["Authorization"] = f"Bearer {rng.randbytes(8).hex()}"
            headers["Feldera-Tenant"] = rng.choice(["UPPER", "-x-", "a" * 100, "ns/../x"])
        out.append((method, path, headers, body))
    return out


@dataclasses.dataclass
class StormResult:
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    server_errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


async def _storm(url: str, requests: list[tuple[str, str, dict[str, str], bytes]], concurrency: int,
                 result: StormResult) -> None:
    import aiohttp
    from yarl import URL
    queue = iter(requests)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency),
                                     skip_auto_headers=["User-Agent"]) as session:
        async def worker() -> None:
            for method, path, headers, body in queue:
                try:
                    async with session.request(method, URL(url + path, encoded=True), headers=headers,
                                               data=body or None) as r:
                        await r.read()
                        result.statuses[r.status] = result.statuses.get(r.status, 0) + 1
                        if r.status >= 500 and r.status not in (501, 503):
                            text = (await r.text(errors="replace"))[:200]
                            result.server_errors.append(f"{r.status} {method} {path[:80]}: {text}")
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    key = type(exc).__name__
                    result.errors[key] = result.errors.get(key, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def start_storm(url: str, requests: list[tuple[str, str, dict[str, str], bytes]],
                concurrency: int = 100) -> tuple[threading.Thread, StormResult]:
    """Send the requests from a thread of its own (its own event loop); join the thread for the result."""
    result = StormResult()

    def go() -> None:
        started = time.monotonic()
        asyncio.run(_storm(url, requests, concurrency, result))
        result.seconds = time.monotonic() - started
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result
