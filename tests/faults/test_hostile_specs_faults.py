"""What the chaos found with a tenant's Pipelines nested 1,200 levels deep: the report of a Pipeline the operator
cannot read that met a newer version."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from pipeline_operator import jsondepth
from pipeline_operator.identity import PipelineKey
from pipeline_operator.kube import Conflict
from pipeline_operator.reconciler import Context, PipelineMonitor

from ..hostile_specs import pipeline_json

pytestmark = [pytest.mark.faults]


class OneConflict:
    """The operator's Kubernetes client for one Pipeline that changed (its finalizer, Kopf's annotations) just
    before the operator's first status write: that write conflicts; a read gets the newer version."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def version(self, rv: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = copy.deepcopy(self.obj)
        obj["metadata"]["resourceVersion"] = rv
        obj["status"] = status or {}
        return obj

    async def write_status(self, namespace: str, name: str, rv: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append((rv, body))
        if rv != "2":
            raise Conflict(f"{namespace}/{name} changed since resourceVersion {rv}")
        return self.version("3", body)

    async def get_pipeline(self, namespace: str, name: str) -> dict[str, Any]:
        return self.version("2")


def test_a_pipeline_that_cannot_be_read_is_reported_at_once_when_its_first_report_meets_a_newer_version():
    """Found by the deep-spec chaos (bench/chaos.py, tests/faults/test_request_storm.py): the report's status
    write conflicted with the Pipeline's newer version, and the pass meant to look at that version at once
    found the one it had just reported (the watch had not brought the newer one yet), so the Ready and
    Stalled conditions came only INVALID_RETRY (60 s) later."""
    obj = jsondepth.decode_objects(pipeline_json("deep", "ns", {}, deep_at=("runtimeConfig", "dev_tweaks", "x")))
    assert jsondepth.undecodable(obj)
    kube = OneConflict(obj)
    ctx = Context(settings=None, kube=kube, backend=None, compiler=None, runtime=None)  # type: ignore[arg-type]
    monitor = PipelineMonitor(ctx, PipelineKey("ns", "deep", "uid-1"))
    monitor.see(kube.version("1"))

    async def scenario() -> None:
        loop = asyncio.create_task(monitor.run(lambda: False))
        try:
            for _ in range(100):
                if len(kube.writes) >= 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            loop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop

    asyncio.run(scenario())
    assert [rv for rv, _ in kube.writes] == ["1", "2"], kube.writes
    conditions = {c["type"]: c for c in kube.writes[-1][1]["conditions"]}
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["reason"] == "InvalidPipeline"
    assert conditions["Ready"]["status"] == "False"
