"""What ``/metrics`` sees of one pipeline's monitoring loop: its combined status, whether it is stalled, how far
into its provisioning timeout it is, and how long its runtime has been unavailable."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ..core.lifecycle import PipelineState
from ..core.resource import STALLED
from ..identity import PipelineKey
from ..metrics import PipelineSample
from ..models import Condition, ConditionStatus, ResourcesStatus, RuntimeStatus, combined_status
from .spec import desired_of


def pipeline_sample(key: PipelineKey, state: PipelineState | None, obj: dict[str, Any] | None,
                    conditions: Sequence[Condition], now: dt.datetime,
                    default_provisioning_timeout: float) -> PipelineSample | None:
    """The loop's sample (None before its first pass)."""
    if state is None:
        return None
    fraction = 0.0
    if state.deployment_resources_status is ResourcesStatus.PROVISIONING and obj is not None \
            and state.deployment_resources_status_since is not None:
        timeout = desired_of(obj)[0].provisioning_timeout or default_provisioning_timeout
        fraction = (now - state.deployment_resources_status_since).total_seconds() / timeout
    unavailable = 0.0
    if state.deployment_runtime_status is RuntimeStatus.UNAVAILABLE \
            and state.deployment_runtime_status_since is not None:
        unavailable = (now - state.deployment_runtime_status_since).total_seconds()
    return PipelineSample(
        namespace=key.namespace,
        status=combined_status(state.deployment_resources_status, state.deployment_runtime_status).value,
        stalled=any(c.type == STALLED and c.status is ConditionStatus.TRUE for c in conditions),
        provisioning_fraction=max(0.0, fraction), unavailable_seconds=max(0.0, unavailable))
