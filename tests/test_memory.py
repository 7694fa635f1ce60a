"""Freed memory goes back to the system (``memory.trim``): what keeps an operator that started a
thousand pipelines at once from staying at that burst's peak. Run in a process of its own, whose heap
holds nothing else."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import weakref

import pytest

from pipeline_operator.controller import memory

SCRIPT = """
import json
from pipeline_operator.controller import memory

def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

# JSON objects as the watches decode them, a burst of them, of which one in fifty stays (the rest is
# freed, but the heap's pages are not: each holds a survivor or freed chunks glibc keeps).
burst = [json.loads(json.dumps({"metadata": {"name": f"p{i}", "labels": {"k": "v" * 900}}})) for i in range(60000)]
kept = burst[::50]
del burst
before = rss_mb()
assert memory.trim()
after = rss_mb()
print(json.dumps({"before": before, "after": after, "kept": len(kept)}))
"""


@pytest.mark.skipif(not memory.trim(), reason="not glibc: nothing to trim")
def test_trim_gives_the_pages_freed_after_a_burst_back():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    figures = json.loads(out)
    # About 60 MB were allocated and 59 MB freed; the freed pages between the survivors go back.
    assert figures["before"] - figures["after"] > 20, figures


def test_a_steady_operator_is_not_settled_again_until_it_grew(monkeypatch):
    """Settling is a full collection (every thread stopped meanwhile) and a trim: it is done when the
    resident size grew by more than a tenth since it last settled, not every minute."""
    sizes = iter([500, 300, 310, 329, 331, 200, 210])  # before a trim, after it, ...
    trims: list[int] = []

    class Seen(Exception):
        """Every size was looked at."""

    def resident() -> int:
        try:
            return next(sizes)
        except StopIteration:
            raise Seen from None

    monkeypatch.setattr(memory, "resident_bytes", resident)
    monkeypatch.setattr(memory, "settle", lambda: trims.append(len(trims)))
    with pytest.raises(Seen):
        asyncio.run(asyncio.wait_for(memory.settle_after_bursts(interval=0.01), 5))
    # 500: trimmed (to 300); 310 and 329 are within 10% of 300; 331 is not: trimmed (to 200); 210 is within.
    assert len(trims) == 2


def test_settling_freezes_the_survivors_and_finds_cycles_among_what_was_frozen():
    class Node:
        pass
    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    alive = [Node() for _ in range(1000)]
    try:
        memory.settle()
        frozen = gc.get_freeze_count()
        assert frozen >= len(alive)  # left out of the collector's scans from now on
        probe = weakref.ref(cycle)
        del cycle  # garbage now, but frozen: no automatic collection finds it
        gc.collect()
        assert probe() is not None
        memory.settle()  # the next settling does
        assert probe() is None
    finally:
        gc.unfreeze()
