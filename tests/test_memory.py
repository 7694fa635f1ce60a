"""Freed memory goes back to the system (``memory.trim``): what keeps an operator that started a
thousand pipelines at once from staying at that burst's peak. Run in a process of its own, whose heap
holds nothing else."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline_operator import memory

SCRIPT = """
import json
from pipeline_operator import memory

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
