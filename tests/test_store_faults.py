"""The event store survives its file and its volume: corrupt, deleted or replaced files, a full
or read-only filesystem (a real tmpfs), a bounded queue; real SQLite throughout."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline_operator.store.sqlite import SqliteEventStore

from .operator_harness import wait_for
from .test_operator_lifecycle import spec
from .test_store import KEY, OTHER, events, wait


def filled(path: Path, n: int = 500) -> SqliteEventStore:
    store = SqliteEventStore(path, retention=1000, prune_interval=3600)
    store.append(KEY, events(n))
    assert store.flush(10)
    store.close()
    return store


def aside_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir()
                  if p.name.startswith(f"{path.name}.corrupt-") and not p.name.endswith(("-wal", "-shm")))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_file_at_start_is_moved_aside_and_a_fresh_store_starts(tmp_path, caplog, damage):
    path = tmp_path / "events.sqlite"
    filled(path)
    if damage == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        with open(path, "r+b") as f:  # cut in the middle of a page
            f.truncate(os.path.getsize(path) // 2 + 100)
    caplog.set_level(logging.ERROR, "pipeline_operator.store.sqlite")
    store = SqliteEventStore(path)
    try:
        [moved] = aside_files(path)
        assert store.generation == 1 and store.recovery is not None and str(moved) in store.recovery.what
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "corrupt" in errors[0].getMessage() and str(moved) in errors[0].getMessage()
        assert store.count(KEY.uid) == 0
        store.append(KEY, events(3))
        assert store.flush(10) and store.count(KEY.uid) == 3
    finally:
        store.close()


def test_a_file_deleted_while_running_is_created_again_and_the_generation_advances(tmp_path):
    path = tmp_path / "events.sqlite"
    store = SqliteEventStore(path, prune_interval=3600)
    try:
        store.append(KEY, events(5))
        assert store.flush(10)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        wait("the store to notice", lambda: store.generation == 1)
        assert path.exists() and "deleted" in (store.recovery.what if store.recovery else "")
        store.append(OTHER, events(2))
        assert store.flush(10)
        assert store.count(OTHER.uid) == 2 and store.count(KEY.uid) == 0  # readers follow the new file
    finally:
        store.close()


def test_a_file_replaced_by_garbage_while_running_is_moved_aside(tmp_path):
    path = tmp_path / "events.sqlite"
    store = SqliteEventStore(path, prune_interval=3600)
    try:
        store.append(KEY, events(5))
        assert store.flush(10)
        replacement = tmp_path / "garbage"
        replacement.write_bytes(os.urandom(8192))
        replacement.rename(path)  # a new inode at the path
        wait("the store to notice", lambda: store.generation == 1)
        assert len(aside_files(path)) == 1
        store.append(KEY, events(2, start=100))
        assert store.flush(10) and store.count(KEY.uid) == 2
    finally:
        store.close()


@pytest.mark.parametrize("first", ["write", "idle"])
def test_a_file_truncated_while_running_gets_its_schema_again(tmp_path, first):
    """Truncated to zero bytes in place (same inode): the store's own connections go on from their
    cache, while any new one sees an empty database without the table; the writer's periodic
    check of the file finds it (with or without writes) and starts afresh."""
    path = tmp_path / "events.sqlite"
    store = SqliteEventStore(path, prune_interval=3600)
    try:
        store.append(KEY, events(5))
        assert store.flush(10) and store.count(KEY.uid) == 5
        for suffix in ("", "-wal"):
            os.truncate(f"{path}{suffix}", 0)
        if first == "write":
            store.append(OTHER, events(2))
        wait("the store to notice", lambda: store.generation == 1)
        assert "emptied" in (store.recovery.what if store.recovery else "")
        outside = sqlite3.connect(path)  # what a new connection (a restarted operator) sees
        try:
            assert outside.execute("SELECT COUNT(*) FROM monitor_event").fetchone()[0] >= 0
        finally:
            outside.close()
        store.append(KEY, events(3, start=100))
        assert store.flush(10)
        assert store.count(KEY.uid) == 3
    finally:
        store.close()


def test_forget_is_queued_after_the_events_before_it(tmp_path):
    store = SqliteEventStore(tmp_path / "e.sqlite", prune_interval=3600)
    try:
        store.append(KEY, events(4))
        store.forget(KEY)
        store.append(OTHER, events(1))
        assert store.flush(10)
        assert store.count(KEY.uid) == 0 and store.count(OTHER.uid) == 1 and store.newest(KEY.uid) is None
    finally:
        store.close()


@pytest.fixture
def small_volume(tmp_path):
    """A real 512 KiB tmpfs (needs the right to mount; skipped otherwise)."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_volume_drops_new_events_beyond_the_limit_and_recovers(small_volume):
    path = small_volume / "events.sqlite"
    store = SqliteEventStore(path, prune_interval=3600, queue_limit=100)
    filler = small_volume / "filler"
    try:
        store.append(KEY, events(5))
        assert store.flush(10)
        generation = store.generation
        with open(filler, "wb", buffering=0) as f:  # fill the volume to the last byte: SQLite gets a real SQLITE_FULL
            try:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
            except OSError:
                pass
        more = events(300, start=10)  # far more data than the WAL has room for
        for i in range(0, len(more), 10):
            store.append(KEY, more[i:i + 10])
        wait("write failures", lambda: store.write_failures > 0)
        stats = store.stats()
        assert stats["dropped"] > 0 and stats["queued"] == store.queue_length <= 100 and stats["write_failures"] > 0
        assert store.newest(KEY.uid) == more[-1]  # a monitoring pass never waits for the writer
        filler.unlink()
        wait("the queued events to be written", lambda: store.stats()["queued"] == 0)
        assert store.generation == generation + 1  # events were dropped: pipelines re-seed from status.history
        store.append(OTHER, events(3, start=1000))
        assert store.flush(10) and store.count(OTHER.uid) == 3
    finally:
        filler.unlink(missing_ok=True)
        store.close(timeout=20)


def test_a_read_only_volume_at_start_is_waited_for_not_fatal(small_volume, caplog):
    path = small_volume / "events.sqlite"
    filled(path, 50)
    subprocess.run(["mount", "-o", "remount,ro", str(small_volume)], check=True)
    caplog.set_level(logging.ERROR, "pipeline_operator.store.sqlite")
    try:
        store = SqliteEventStore(path, prune_interval=3600, queue_limit=100)
        assert any("cannot be opened" in r.getMessage() for r in caplog.records)
        more = events(150)
        for i in range(0, len(more), 10):
            store.append(OTHER, more[i:i + 10])
        wait("write failures", lambda: store.write_failures > 1)
        assert store.stats()["dropped"] == 50 and store.stats()["queued"] == 100
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_volume)], check=True)
    try:
        wait("the queued events to be written", lambda: store.stats()["queued"] == 0)
        assert store.count(KEY.uid) == 50  # the old file is kept: it was never corrupt
        assert store.count(OTHER.uid) == 100 and store.generation == 1 and store.recovery is None
    finally:
        store.close(timeout=20)


# -- the real operator ------------------------------------------------------------------------


def stored_ids(path: Path, uid: str) -> set[str]:
    """Event ids in the store file (read-only, beside the running operator)."""
    if not path.exists():
        return set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT event_id FROM monitor_event WHERE pipeline_uid = ?", (uid,))}
    except sqlite3.DatabaseError:
        return set()
    finally:
        conn.close()


def recovered_events(cluster, namespace: str, name: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"].get("name") == name and e["reason"] == "EventStoreRecovered"]


@pytest.mark.apiserver
def test_the_operator_survives_a_corrupt_store_and_one_deleted_under_it(
        operators, pipelines, namespace, cluster, kstatus, tmp_path):
    state = tmp_path / "state"
    path = state / "events.sqlite"
    op = operators(namespace, state_dir=state)
    uids = {name: pipelines.create(name, spec())["metadata"]["uid"] for name in ("one", "two")}
    for name in uids:
        kstatus.track(namespace, name, expect="Current")
        pipelines.wait_status(name, op, deploymentStatus="Running")
    assert op.stop() == 0

    path.write_bytes(os.urandom(32 * 1024))  # garbage where the store was
    op = operators(namespace, state_dir=state)
    for name, uid in uids.items():
        wanted = {h["eventId"] for h in pipelines.status(name)["history"]}
        wait_for(f"{name}'s history in the fresh store",
                 lambda wanted=wanted, uid=uid: wanted <= stored_ids(path, uid), 30, operator=op)
        wait_for(f"one EventStoreRecovered Event for {name}",
                 lambda name=name: recovered_events(cluster, namespace, name), 30, operator=op)
    [moved] = aside_files(path)
    errors = [line for line in op.log().splitlines() if " ERROR " in line and "corrupt" in line]
    assert len(errors) == 1 and str(moved) in errors[0]
    for name in uids:  # the pipelines are still monitored
        assert pipelines.a_later_pass(name, op)["deploymentStatus"] == "Running"

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for name, uid in uids.items():
        wanted = {h["eventId"] for h in pipelines.status(name)["history"]}
        wait_for(f"{name}'s history in the re-created store",
                 lambda wanted=wanted, uid=uid: wanted <= stored_ids(path, uid), 30, operator=op)
        wait_for(f"a second EventStoreRecovered Event for {name}",
                 lambda name=name: len(recovered_events(cluster, namespace, name)) == 2, 30, operator=op)
    st = pipelines.a_later_pass("one", op)
    wait_for("the newest event in the store", lambda: st["history"][0]["eventId"] in stored_ids(path, uids["one"]),
             30, operator=op)
    assert "Traceback" not in op.log()
    assert op.stop() == 0


@pytest.mark.apiserver
def test_the_operator_keeps_reconciling_while_the_store_volume_is_full(
        operators, pipelines, namespace, kstatus, small_volume):
    path = small_volume / "events.sqlite"
    op = operators(namespace, "--event-store", str(path), "--event-store-queue-limit", "100",
                   "--heartbeat-interval", "0.2", "--details-min-interval", "0.2")
    uid = pipelines.create("full", spec())["metadata"]["uid"]
    kstatus.track(namespace, "full", expect="Current")
    pipelines.wait_status("full", op, deploymentStatus="Running")
    filler = small_volume / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 65536)
                f.flush()
        except OSError:
            pass
    wait_for("the store to drop events", lambda: "new events are dropped" in op.log(), 120, operator=op)
    pipelines.patch_spec("full", {"desiredStatus": "Stopped", "stopMode": "Force"})  # reconciliation goes on
    st = pipelines.wait_status("full", op, deploymentStatus="Stopped")
    assert st["history"][0]["eventId"] not in stored_ids(path, uid)
    filler.unlink()
    wanted = st["history"][0]["eventId"]
    wait_for("the newest events stored again (re-seeded)", lambda: wanted in stored_ids(path, uid), 60, operator=op)
    assert "accepts writes again" in op.log() and "Traceback" not in op.log()
    assert op.stop() == 0


def test_a_file_corrupted_in_place_is_found_by_a_read_and_replaced(tmp_path):
    path = tmp_path / "events.sqlite"
    store = SqliteEventStore(path, prune_interval=3600)
    try:
        store.append(KEY, events(5))
        assert store.flush(10)
        checkpoint = sqlite3.connect(path)
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
        checkpoint.close()
        with open(path, "r+b") as f:  # the same file (inode), its header overwritten
            f.write(os.urandom(100))
        reading = ThreadPoolExecutor(1)  # a reader thread with a fresh connection, as the API's are
        with pytest.raises(sqlite3.DatabaseError):
            reading.submit(store.count, KEY.uid).result()
        wait("the writer to start afresh", lambda: store.generation == 1)
        assert len(aside_files(path)) == 1
        assert reading.submit(store.count, KEY.uid).result() == 0  # the reader follows the fresh file
        reading.shutdown()
    finally:
        store.close()


def test_a_monitoring_pass_never_waits_for_a_store_that_cannot_write(small_volume):
    import asyncio

    from pipeline_operator.reconcile.recording import Recorder
    path = small_volume / "events.sqlite"
    store = SqliteEventStore(path, prune_interval=3600, queue_limit=1000)
    filler = small_volume / "filler"
    try:
        before = events(3)
        store.append(OTHER, before)
        assert store.flush(10)
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
            except OSError:
                pass
        store.seed(KEY, events(300))  # what a first pass after a restart queues: it cannot be written
        wait("write failures", lambda: store.write_failures > 0)
        recorder = Recorder(store, None)

        async def first_pass_reads():
            # The writer cannot finish: waiting for it (as a flush does, for up to 30 s) would pass the deadline.
            return await asyncio.wait_for(asyncio.gather(recorder.latest(KEY), recorder.latest(OTHER)), 10)
        latest_key, latest_other = asyncio.run(first_pass_reads())
        assert latest_key is None and latest_other == before[-1]
        assert store.stats()["queued"] == 300  # still not written
    finally:
        filler.unlink(missing_ok=True)
        store.close(timeout=20)
