"""Monitor events end to end: the emission rules through the real flags, the store, the status
history, Kubernetes Events, retention, restarts, deletion and bad data."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from itertools import pairwise

import pytest

from .operator_harness import sequence, wait_for
from .test_operator_lifecycle import FAST_PIPELINE, SQL, spec

pytestmark = pytest.mark.apiserver
DETAILS_MIN_INTERVAL, HEARTBEAT_INTERVAL = 1.0, 2.0
SHORT = ["--details-min-interval", str(DETAILS_MIN_INTERVAL), "--heartbeat-interval", str(HEARTBEAT_INTERVAL),
         "--events-prune-interval", "1"]


def stored(op, uid: str) -> list[dict]:
    """The store's events of one pipeline, newest first (read-only, beside the running operator)."""
    path = op.state_dir / "events.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [json.loads(r[0]) for r in conn.execute(
            "SELECT event FROM monitor_event WHERE pipeline_uid = ? ORDER BY recorded_at DESC, event_id DESC",
            (uid,))]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def oldest_first(events: list[dict]) -> list[dict]:
    return list(reversed(events))


def t(event: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(event["recorded_at"].replace("Z", "+00:00"))


STATUS = ("deployment_resources_status", "deployment_resources_desired_status", "deployment_runtime_status",
          "deployment_runtime_desired_status", "program_status", "storage_status", "deployment_error")


def key(event: dict) -> tuple:
    return tuple(json.dumps(event.get(f), sort_keys=True) for f in STATUS)


def details(event: dict) -> str:
    return json.dumps([event.get(f) for f in ("deployment_resources_status_details",
                                              "deployment_runtime_status_details", "storage_status_details")],
                      sort_keys=True)


def following(events: list[dict], resources_status: str, kind: str) -> list[tuple[dict, dict]]:
    """Pairs (previous, event) of consecutive events (oldest first) in which ``event``, recorded in
    ``resources_status``, changed no status field and, for ``kind`` "details", some details, for
    "heartbeat", nothing at all."""
    return [(b, a) for b, a in pairwise(events)
            if a["deployment_resources_status"] == resources_status and key(a) == key(b)
            and (details(a) != details(b)) == (kind == "details")]


def test_emission_rules_with_shortened_intervals(operators, pipelines, namespace, kstatus):
    op = operators(namespace, *SHORT, "--history-limit", "100")
    env = [*FAST_PIPELINE, {"name": "PIPELINE_DETAILS_TICK_SECONDS", "value": "0.3"}]
    uid = pipelines.create("rules", spec(deployment={"env": env}))["metadata"]["uid"]
    kstatus.track(namespace, "rules", expect="Current")
    pipelines.wait_status("rules", op, deploymentStatus="Running")
    # Details change every 0.3 s while Running: recorded, but throttled (checked below).
    wait_for("two details-only events while Running",
             lambda: len(following(oldest_first(stored(op, uid)), "Provisioned", "details")) >= 2, 30, operator=op)
    pipelines.patch_spec("rules", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("rules", op, deploymentStatus="Stopped")
    # Nothing changes while Stopped: heartbeats.
    events = wait_for("two heartbeats while Stopped",
                      lambda: (e := oldest_first(stored(op, uid))) and len(following(e, "Stopped", "heartbeat")) >= 2
                      and e, 30, operator=op)

    # (a) every status change is one event, in order: the lifecycle as Feldera records it.
    statuses = sequence([{"r": e["deployment_resources_status"], "rt": e["deployment_runtime_status"]}
                         for e in reversed(events)], "r", "rt")
    assert statuses[:4] == [("Stopped", None), ("Provisioning", None), ("Provisioned", "Initializing"),
                            ("Provisioned", "Running")]
    assert statuses[-2:] == [("Stopping", None), ("Stopped", None)]
    programs = [s for s, _ in sequence([{"p": e["program_status"], "x": 0} for e in reversed(events)], "p", "x")]
    assert programs == ["Pending", "CompilingSql", "SqlCompiled", "CompilingRust", "Success"]

    # (b) and (c): consecutive events with the same status are throttled details or heartbeats.
    # Only lower bounds: they are what the rules guarantee however slow the machine.
    for before, after in pairwise(events):
        gap = (t(after) - t(before)).total_seconds()
        if key(before) != key(after):
            continue  # a status change: recorded at once
        if details(before) != details(after):
            assert gap >= DETAILS_MIN_INTERVAL, f"details-only event after {gap:.2f}s"
        else:
            assert gap > HEARTBEAT_INTERVAL, f"an event with nothing changed after only {gap:.2f}s"

    # The history is the store's newest events, projected by the status selector, newest first.
    # (Heartbeats go on; the status is written before the store, so compare until both agree.)
    def agreeing() -> tuple[list[dict], list[dict]] | None:
        history = pipelines.status("rules")["history"]
        newest = stored(op, uid)[: len(history)]
        return (history, newest) if [h["eventId"] for h in history] == [e["event_id"] for e in newest] else None
    history, newest = wait_for("the history to be the store's newest events", agreeing, 10, operator=op)
    assert all(h["deploymentResourcesStatus"] == e["deployment_resources_status"]
               for h, e in zip(history, newest, strict=True))
    assert "deploymentRuntimeStatusDetails" not in history[0]


def test_no_heartbeats_while_provisioning_as_feldera(operators, pipelines, namespace, kstatus):
    """Feldera's runner records nothing while Provisioning unless the details change: a pipeline whose
    process takes 5 s to listen (heartbeats every 2 s elsewhere) has one Provisioning event."""
    op = operators(namespace, *SHORT)
    env = [*FAST_PIPELINE, {"name": "PIPELINE_BIND_DELAY_SECONDS", "value": "5"}]
    uid = pipelines.create("slow", spec(deployment={"env": env}))["metadata"]["uid"]
    kstatus.track(namespace, "slow", expect="Current")
    pipelines.wait_status("slow", op, deploymentStatus="Running")
    events = oldest_first(stored(op, uid))
    provisioning = [e for e in events if e["deployment_resources_status"] == "Provisioning"]
    assert provisioning and (t(provisioning[-1]) - t(provisioning[0])).total_seconds() < HEARTBEAT_INTERVAL, \
        provisioning
    assert not following(events, "Provisioning", "heartbeat"), provisioning
    provisioned = next(e for e in events if e["deployment_resources_status"] == "Provisioned")
    assert (t(provisioned) - t(provisioning[0])).total_seconds() >= 4  # it did provision for that long


def test_heartbeats_in_provisioned_and_history_is_bounded(operators, pipelines, namespace, kstatus):
    op = operators(namespace, *SHORT, "--history-limit", "5")
    uid = pipelines.create("beat", spec(deployment={"env": FAST_PIPELINE}))["metadata"]["uid"]
    kstatus.track(namespace, "beat", expect="Current")
    pipelines.wait_status("beat", op, deploymentStatus="Running")
    beats = wait_for("the Running event and two heartbeats",
                     lambda: (e := oldest_first(stored(op, uid))) and len(following(e, "Provisioned", "heartbeat")) >= 2
                     and e, 30, operator=op)
    running = beats.index(next(e for e in beats if e["deployment_runtime_status"] == "Running"))
    for before, after in pairwise(beats[running:]):  # nothing changes while it runs
        assert key(after) == key(before) and details(after) == details(before), (before, after)
        assert (t(after) - t(before)).total_seconds() > HEARTBEAT_INTERVAL
    assert len(beats) > 5

    def bounded() -> list[dict] | None:  # the status is written before the store: until both agree
        history = pipelines.status("beat")["history"]
        return history if history[0]["eventId"] == stored(op, uid)[0]["event_id"] else None
    history = wait_for("the history to show the newest stored event", bounded, 10, operator=op)
    assert len(history) == 5


def test_kubectl_describe_shows_reasons_and_one_aggregated_heartbeat(operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace, *SHORT)
    pipelines.create("told", spec(deployment={"env": FAST_PIPELINE}))
    kstatus.track(namespace, "told", expect="Current")
    pipelines.wait_status("told", op, deploymentStatus="Running")
    pipelines.patch_spec("told", {"runtimeDesiredStatus": "Paused"})
    pipelines.wait_status("told", op, deploymentStatus="Paused")

    def heartbeat_count() -> int:
        listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        beats = [e for e in listed if e["reason"] == "Heartbeat"]
        return beats[0]["count"] if len(beats) == 1 else 0
    assert wait_for("an aggregated heartbeat Event", lambda: heartbeat_count() >= 2, 30, operator=op)
    described = cluster.kubectl("describe", "pipeline", "told", "-n", namespace).stdout
    for reason in ("MonitoringStarted", "ProgramCompiled", "Provisioning", "Provisioned", "RuntimeRunning",
                   "RuntimePaused", "Heartbeat"):
        assert reason in described, f"{reason} missing from kubectl describe:\n{described}"
    assert "pipeline-operator" in described
    listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert len([e for e in listed if e["reason"] == "Heartbeat"]) == 1
    assert all(e["type"] == "Normal" for e in listed)
    paused = next(e for e in listed if e["reason"] == "RuntimePaused")
    assert "Running -> Paused" in paused["message"]

    # A restarted operator finds the aggregated Event (its create is refused) and counts on from it.
    op.stop()
    before = heartbeat_count()
    operators(namespace, *SHORT)
    assert wait_for("the heartbeat count to go on", lambda: heartbeat_count() > before, 30)


def test_errors_are_warning_events(operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace)
    pipelines.create("bad-sql", spec(program={"sql": "CREATE TABLE t (x INT"}))
    kstatus.track(namespace, "bad-sql", expect="Failed")
    pipelines.wait_status("bad-sql", op, programStatus="SqlError", deploymentResourcesDesiredStatus="Stopped")

    def warning():
        listed = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        return next((e for e in listed if e["reason"] == "DeploymentError"), None)
    event = wait_for("the DeploymentError event", warning, 10, operator=op)
    assert event["type"] == "Warning" and "StartFailedDueToFailedCompilation" in event["message"]


def test_retention_keeps_about_the_newest(operators, pipelines, namespace, kstatus):
    op = operators(namespace, "--events-retention", "50", "--details-min-interval", "0",
                   "--heartbeat-interval", "0.01", "--monitor-interval", "0.05", "--events-prune-interval", "1")
    uid = pipelines.create("chatty", {"desiredStatus": "Stopped", "program": {"sql": SQL}})["metadata"]["uid"]
    kstatus.track(namespace, "chatty", expect="Current")
    seen: set[str] = set()

    def seen_200() -> bool:  # a lower bound of what was written: the union of what the store showed
        seen.update(e["event_id"] for e in stored(op, uid))
        return len(seen) >= 200
    wait_for("200 events", seen_200, 90, interval=0.25, operator=op)
    during = len(stored(op, uid))
    assert 50 <= during < 200, during  # pruned while running: never all that were written
    assert op.stop() == 0  # closing the store commits what is queued and prunes
    appended = int(re.search(r"event store closed: (\d+) events appended", op.log()).group(1))
    assert appended >= 200, appended
    events = stored(op, uid)
    assert len(events) == 50
    history = pipelines.status("chatty")["history"]
    assert [h["eventId"] for h in history] == [e["event_id"] for e in events[: len(history)]]


def test_restart_loses_and_duplicates_nothing_and_a_lost_store_is_seeded(
        operators, pipelines, namespace, kstatus, tmp_path):
    state = tmp_path / "state"
    op = operators(namespace, *SHORT, state_dir=state)
    uid = pipelines.create("durable", spec(deployment={"env": FAST_PIPELINE}))["metadata"]["uid"]
    kstatus.track(namespace, "durable", expect="Current")
    pipelines.wait_status("durable", op, deploymentStatus="Running")
    assert op.stop() == 0
    before = stored(op, uid)
    assert before
    again = operators(namespace, *SHORT, state_dir=state)
    ids_before = {e["event_id"] for e in before}
    # The restarted operator has seeded the store and monitored the pipeline since: an event of its own.
    after = wait_for("an event recorded by the restarted operator (a heartbeat)",
                     lambda: (s := stored(again, uid)) and s[0]["event_id"] not in ids_before and s, 30,
                     operator=again)
    ids_after = [e["event_id"] for e in after]
    assert len(ids_after) == len(set(ids_after))
    assert ids_before <= set(ids_after)
    assert key(after[0]) == key(before[0]) and t(after[0]) > t(before[0])  # the restart changed no status
    assert again.stop() == 0

    (state / "events.sqlite").unlink()
    for extra in ("events.sqlite-wal", "events.sqlite-shm"):
        (state / extra).unlink(missing_ok=True)
    history = pipelines.status("durable")["history"]  # no operator runs: this is what the next one finds
    third = operators(namespace, *SHORT, state_dir=state)
    wanted = {h["eventId"] for h in history}
    assert wanted
    wait_for("the store to be seeded from the history",
             lambda: wanted <= {e["event_id"] for e in stored(third, uid)}, 10, operator=third)


def test_deletion_removes_events_and_finalizer_and_a_new_pipeline_starts_empty(
        operators, pipelines, namespace, cluster, kstatus):
    op = operators(namespace, *SHORT)
    uid = pipelines.create("gone", spec(deployment={"env": FAST_PIPELINE}))["metadata"]["uid"]
    pipelines.wait_status("gone", op, deploymentStatus="Running")
    folder = next((op.state_dir / "pipelines").glob(f"*__{uid}"))
    assert stored(op, uid)
    pipelines.delete("gone")
    assert cluster.kubectl("get", "pipeline", "gone", "-n", namespace, check=False).returncode != 0
    assert wait_for("its events to be removed", lambda: not stored(op, uid), 10, operator=op)
    assert not op.pipeline_processes(uid) and not folder.exists()
    new_uid = pipelines.create("gone", spec(desiredStatus="Stopped"))["metadata"]["uid"]
    kstatus.track(namespace, "gone", expect="Current")
    assert new_uid != uid
    st = pipelines.wait_status("gone", op, programStatus="Success")
    assert all(h["deploymentResourcesStatus"] == "Stopped" for h in st["history"])
    # The store's writes are queued: the status may be written a moment before its event is stored.
    first = wait_for("the new pipeline's first stored event", lambda: stored(op, new_uid), 10, operator=op)[-1]
    assert first["deployment_resources_status"] == "Stopped"


def test_huge_details_are_capped_in_the_store_and_the_resource(operators, pipelines, namespace, kstatus):
    op = operators(namespace)
    env = [*FAST_PIPELINE, {"name": "PIPELINE_DETAILS_BYTES", "value": "200000"}]
    uid = pipelines.create("bloated", spec(deployment={"env": env}))["metadata"]["uid"]
    kstatus.track(namespace, "bloated", expect="Current")
    st = pipelines.wait_status("bloated", op, deploymentStatus="Running")
    assert st["deploymentRuntimeStatusDetails"]["truncated"] is True
    assert len(json.dumps(pipelines.get("bloated"))) < 64 * 1024
    newest = stored(op, uid)[0]
    assert newest["deployment_runtime_status_details"]["truncated"] is True
    assert len(json.dumps(newest)) < 4096
