"""What ``/metrics`` sees of one pipeline's monitoring loop: its combined status, whether it is stalled, how far
into its provisioning timeout it is, and how long its runtime has been unavailable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.resource import STALLED
from ..metrics import PipelineSample
from ..models import ConditionStatus, ResourcesStatus, RuntimeStatus, combined_status
from .spec import desired_of

if TYPE_CHECKING:
    from .reconciler import PipelineMonitor


def pipeline_sample(monitor: PipelineMonitor) -> PipelineSample | None:
    """The loop's sample (None before its first pass)."""
    state = monitor.state
    if state is None:
        return None
    now = monitor.ctx.clock()
    fraction = 0.0
    if state.deployment_resources_status is ResourcesStatus.PROVISIONING and monitor.obj is not None \
            and state.deployment_resources_status_since is not None:
        timeout = desired_of(monitor.obj)[0].provisioning_timeout or monitor.ctx.lifecycle.default_provisioning_timeout
        fraction = (now - state.deployment_resources_status_since).total_seconds() / timeout
    unavailable = 0.0
    if state.deployment_runtime_status is RuntimeStatus.UNAVAILABLE \
            and state.deployment_runtime_status_since is not None:
        unavailable = (now - state.deployment_runtime_status_since).total_seconds()
    return PipelineSample(
        namespace=monitor.key.namespace,
        status=combined_status(state.deployment_resources_status, state.deployment_runtime_status).value,
        stalled=any(c.type == STALLED and c.status is ConditionStatus.TRUE for c in monitor.conditions),
        provisioning_fraction=max(0.0, fraction), unavailable_seconds=max(0.0, unavailable))
