"""A fleet's heartbeats come in step: a thousand routine status writes at once must not make a spec
change's write wait behind them. The loops' shared context gates routine writes (a stand-in client
with the real client's 16 slots; what is checked is the order in which writes finish)."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline_operator.identity import PipelineKey
from pipeline_operator.reconcile.services import ROUTINE_WRITES, LoopServices


class PoolOf16:
    """Writes as the operator's Kubernetes client does them: 16 at once, the rest queued in order."""

    def __init__(self) -> None:
        self.slots = asyncio.Semaphore(16)
        self.finished: list[str] = []

    async def write_status(self, namespace: str, name: str, rv: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.slots:
            await asyncio.sleep(0.01)
            self.finished.append(name)
            return body


def test_a_spec_changes_write_does_not_wait_behind_a_fleets_heartbeats():
    async def scenario() -> list[str]:
        kube = PoolOf16()
        ctx = LoopServices(settings=None, kube=kube, backend=None, compiler=None, runtime=None)  # type: ignore[arg-type]
        beats = [asyncio.create_task(ctx.write_status(PipelineKey("ns", f"p{i}", str(i)), "1", {}, routine=True))
                 for i in range(200)]
        await asyncio.sleep(0)  # every heartbeat write has asked for its turn
        urgent = asyncio.create_task(ctx.write_status(PipelineKey("ns", "changed", "x"), "1", {}, routine=False))
        await asyncio.gather(*beats, urgent)
        return kube.finished

    finished = asyncio.run(scenario())
    # Among the first to finish: at most ROUTINE_WRITES heartbeats were under way when it came.
    assert finished.index("changed") <= ROUTINE_WRITES, finished[:10]
    assert len(finished) == 201
