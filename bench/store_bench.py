"""Event store benchmark: appends per second and list latency for 720 events, at 1,000 pipelines.

    .venv/bin/python bench/store_bench.py [--pipelines 1000] [--events 720]

Appends go through SqliteEventStore.append (queued, batched by the writer thread) as the operator
does; the figure is events committed per second. Lists read one pipeline's 720 events, newest
first, as the HTTP API does: as stored JSON (list_raw) and as models (list).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from pathlib import Path

from pipeline_operator.core.emission import UuidV7, make_event
from pipeline_operator.identity import PipelineKey
from pipeline_operator.models import (
    EventStatus,
    ProgramStatus,
    ResourcesDesiredStatus,
    ResourcesStatus,
    RuntimeDesiredStatus,
    RuntimeStatus,
    StorageStatus,
)
from pipeline_operator.store.sqlite import SqliteEventStore

STATUS = EventStatus(deployment_resources_status=ResourcesStatus.PROVISIONED,
                     deployment_resources_desired_status=ResourcesDesiredStatus.PROVISIONED,
                     deployment_runtime_status=RuntimeStatus.RUNNING,
                     deployment_runtime_desired_status=RuntimeDesiredStatus.RUNNING,
                     deployment_runtime_status_details={"connector_stats": {"num_errors": 0}},
                     program_status=ProgramStatus.SUCCESS, storage_status=StorageStatus.IN_USE,
                     storage_status_details={"checkpoints": [{"uuid": "c", "steps": 1}]})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--events", type=int, default=720)
    parser.add_argument("--lists", type=int, default=300)
    args = parser.parse_args()
    keys = [PipelineKey("bench", f"p{i}", f"uid-{i:05d}") for i in range(args.pipelines)]
    ids = UuidV7()
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with tempfile.TemporaryDirectory() as td:
        # Monitoring passes append one event per pipeline at a time, round-robin, as 1,000 loops would.
        # Everything is queued before the writer catches up: the queue holds it all (the operator's
        # default limit would drop most of it, which is not what this measures).
        total = args.pipelines * args.events
        store = SqliteEventStore(Path(td) / "events.sqlite", retention=args.events, queue_limit=total)
        print(f"appending {total:,} events ({args.pipelines} pipelines x {args.events}) ...", flush=True)
        started = time.perf_counter()
        for round_ in range(args.events):
            at = t0 + dt.timedelta(seconds=10 * round_)
            for key in keys:
                store.append(key, [make_event(STATUS, ids(at), at)])
            if round_ % 100 == 99:
                print(f"  {round_ + 1}/{args.events} rounds queued", flush=True)
        store.flush(timeout=3600)
        assert store.dropped == 0, f"{store.dropped} events dropped"
        elapsed = time.perf_counter() - started
        print(f"appends: {total / elapsed:,.0f} events/s ({elapsed:.1f}s for {total:,}; includes building "
              f"the events)")
        main_file = (Path(td) / "events.sqlite").stat().st_size
        wal = sum(p.stat().st_size for p in Path(td).glob("events.sqlite-wal"))
        print(f"store size: {main_file / 1e6:,.0f} MB database ({main_file / total:,.0f} bytes per event) "
              f"+ {wal / 1e6:,.0f} MB write-ahead log")

        raw, parsed = [], []
        for key in random.sample(keys, min(args.lists, len(keys))):
            s = time.perf_counter()
            body = store.list_json(key.uid, "all")
            raw.append(time.perf_counter() - s)
            assert body.count('"event_id"') == args.events
            s = time.perf_counter()
            store.list(key.uid)
            parsed.append(time.perf_counter() - s)
        for name, values in (("list 720 as the API's JSON (selector all)", raw), ("list 720 (models)", parsed)):
            print(f"{name}: p50 {percentile(values, 50) * 1000:.2f} ms, p99 {percentile(values, 99) * 1000:.2f} ms, "
                  f"mean {statistics.mean(values) * 1000:.2f} ms over {len(values)} pipelines")
        s = time.perf_counter()
        store.prune_now()
        print(f"pruning all {args.pipelines} pipelines (nothing over retention): {time.perf_counter() - s:.2f}s")
        store.close()


if __name__ == "__main__":
    main()
