"""The no-op Kopf floor of the fleet benchmark: one 2.5 s timer per Pipeline that does nothing.

    python -m kopf run --standalone --namespace NAMESPACE bench/fleet_kopf_floor.py

It is what any Kopf operator with a periodic look at each object costs at least: the same
resource, namespaces and Kopf settings as the operator where they matter (its finalizer, its
annotation prefix for progress and diff-base, watch and request timeouts, no namespace or CRD
scanning, no posting of Events), and a timer of the operator's monitor interval. The benchmark runs
it alone against the same Pipelines and compares the operator's CPU, RSS and API requests to it.
"""

from __future__ import annotations

from typing import Any

import kopf

GROUP, VERSION, PLURAL = "dataflow.dev", "v1alpha1", "pipelines"
INTERVAL = 2.5  # the operator's default --monitor-interval


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "dataflow.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="operator.dataflow.dev", v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.dataflow.dev", key="last-handled-configuration", v1=False,
        ignored_fields=["metadata.annotations", "metadata.labels", "status"])
    settings.posting.enabled = False
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.scanning.disabled = True


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, idle=None)
async def look(**_: Any) -> None:
    """Nothing: the floor is the cost of Kopf calling it."""
