"""A pipeline's identity, shared by the loop, the backends, the event store and Kubernetes Events."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PipelineKey:
    """A pipeline's identity: a deleted and re-created Pipeline is a different key."""
    namespace: str
    name: str
    uid: str

    @property
    def slug(self) -> str:
        return f"{self.namespace}__{self.name}__{self.uid}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
