"""Where a pipeline's compute and storage live.

A backend creates, observes and deletes a pipeline's compute (the pipeline process) and
storage. Every method is idempotent: the reconciler calls it on every pass until the
observation shows the effect, so a retry or an operator restart never creates a second set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..core.lifecycle import ComputeObservation
from ..feldera_config import RuntimeConfig
from ..identity import PipelineKey
from ..models import BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus


class LogsUnavailable(Exception):
    """The pipeline's log cannot be read now (the message says why and, where it can, what to do)."""


class Backend(Protocol):
    async def start(self) -> None:
        """Get ready to observe (the Kubernetes backend lists and watches the pipelines' children);
        called once before the monitoring loops start."""

    async def observe_compute(self, key: PipelineKey) -> ComputeObservation: ...

    async def provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                        initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy,
                        silent_bootstrap: bool = False, deployment_id: str | None = None) -> None:
        """Create the compute (and storage) of a start with these start parameters (Feldera's ``--initial``,
        ``--bootstrap-policy``, ``--silent-bootstrap`` and ``--deployment-id`` of the pipeline: the start's id
        as its status records it; without one the backend makes one), or wait for it."""

    async def deprovision(self, key: PipelineKey) -> None: ...

    async def storage_exists(self, key: PipelineKey) -> bool: ...

    async def clear_storage(self, key: PipelineKey) -> None: ...

    async def retain_storage(self, key: PipelineKey) -> None:
        """Release the storage of a deleted pipeline (its compute is gone) so that it outlives the pipeline
        (``spec.storage.deletionPolicy: Retain``) and the next pipeline of the same name and namespace
        adopts it at its first provisioning; nothing to do without storage. Done once this returns."""

    def endpoint(self, key: PipelineKey) -> str | None: ...

    def control_token(self, endpoint: str) -> str | None:
        """The token the pipeline at ``endpoint`` (exactly as :meth:`endpoint` returned it) requires on its
        control routes (``Authorization: Bearer``), from memory (it is asked for every request);
        None when none is known."""

    async def learn_token(self, key: PipelineKey) -> None:
        """Make sure :meth:`control_token` knows the pipeline's token, reading it where it is kept if need be
        (a replica that has not provisioned or observed the pipeline yet)."""

    async def forget(self, key: PipelineKey) -> None:
        """Remove what is left of a deleted pipeline (its compute and storage are gone)."""

    def describe_compute(self, key: PipelineKey) -> str:
        """The pipeline's compute, named for a person (logs, Events, conditions)."""

    def describe_storage(self, key: PipelineKey) -> str:
        """The pipeline's storage, named for a person."""

    async def close(self) -> None: ...

    def logs(self, key: PipelineKey, follow: bool) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The pipeline's log, opened: ``async with backend.logs(key, follow) as chunks`` gives its bytes as
        they come, its recent past first, then (``follow``) what the pipeline writes, across its stops and
        starts (the next run's log follows the last one's), for as long as it is read. Not followed, no log yet
        (never started, no pod) is an empty log; a log that cannot be read now is :class:`LogsUnavailable`,
        raised on opening."""


# What of Feldera's runtime_config the backends use beside the PipelineConfig they write: its workers and
# io_workers (TOKIO_WORKER_THREADS) and env for the process, and (Kubernetes) its resources for the container and
# the storage.
RUNTIME_CONFIG_USED = {"workers", "io_workers", "env", "resources"}


def workers(spec: PipelineSpec) -> int:
    """Feldera's ``runtime_config.workers`` (its default, 8, when there is no runtime configuration)."""
    return (spec.runtime_config or RuntimeConfig()).workers


def pipeline_env(spec: PipelineSpec) -> dict[str, str]:
    """The environment a spec gives the pipeline process: ``deployment.env``, then Feldera's
    ``runtime_config.env`` for the names it leaves out (Feldera's reserved names are refused by the schema;
    each backend drops the names it sets itself)."""
    env = {var.name: var.value for var in spec.deployment.env}
    for name, value in (spec.runtime_config.env if spec.runtime_config is not None else {}).items():
        env.setdefault(name, value)
    return env


__all__ = ["RUNTIME_CONFIG_USED", "Backend", "LogsUnavailable", "PipelineKey", "pipeline_env", "workers"]
