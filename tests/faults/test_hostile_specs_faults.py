"""A tenant's Pipelines nested 1,200 levels deep while the other Pipelines go through their lifecycle; and what
the chaos found there: the report of a Pipeline the operator cannot read that met a newer version."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from pipeline_operator import jsondepth
from pipeline_operator.identity import PipelineKey
from pipeline_operator.kube.client import Conflict
from pipeline_operator.reconcile.reconciler import PipelineMonitor
from pipeline_operator.reconcile.services import LoopServices

from ..hostile_specs import pipeline_json
from .chaos import Chaos

pytestmark = [pytest.mark.faults]


@pytest.mark.apiserver
def test_pipelines_nested_too_deep_are_refused_or_reported_while_the_others_go_on(chaos_factory):
    """A deep spec.runtimeConfig is refused naming the field; deep managedFields run as usual; a deep spec stored
    under the free-form CRD is reported (Warning Event InvalidPipeline, within chaos.REPORT_SECONDS) and its
    deletion completes; a Pipeline created after them reaches Running; every invariant holds for the others
    (chaos.Chaos.deep_spec_fault)."""
    chaos: Chaos = chaos_factory(2)
    outcome = chaos.deep_spec_fault()
    assert outcome.ok, f"seed {chaos.seed}: deep spec: {outcome.problems}"
    assert chaos.operator_crashes == 0, f"seed {chaos.seed}: the operator exited on its own"
    log = chaos.op.log()
    assert "RecursionError" not in log, log[-3000:]
    assert f"{chaos.namespace}/deep-legacy: the Pipeline cannot be decoded" in log or \
        f"{chaos.namespace}/deep-legacy: its spec is not valid" in log, log[-3000:]


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
    ctx = LoopServices(settings=None, kube=kube, backend=None, compiler=None, runtime=None)  # type: ignore[arg-type]
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
