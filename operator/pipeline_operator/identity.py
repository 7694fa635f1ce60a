"""A pipeline's identity, shared by the loop, the backends, the event store and Kubernetes Events."""

from __future__ import annotations

import dataclasses
import hashlib

# Bytes of a slug: a folder name must stay under the file system's 255 bytes with room to spare. A
# namespace (63) and a name (253) alone exceed that.
MAX_SLUG = 128
_HASH_CHARS = 16  # hex digits of sha256 that tell apart slugs cut to the same prefix
_MAX_KEPT_UID = 64  # a longer uid is represented by the hash alone


@dataclasses.dataclass(frozen=True)
class PipelineKey:
    """A pipeline's identity: a deleted and re-created Pipeline is a different key."""
    namespace: str
    name: str
    uid: str

    @property
    def slug(self) -> str:
        """A file-name-safe, stable and unique name of the pipeline: ``namespace__name__uid`` when that
        fits in :data:`MAX_SLUG` bytes (folders of existing installations keep their names), else the
        start of ``namespace__name`` with a hash of the whole value and the uid, so that two long
        names with the same beginning never share a folder."""
        full = f"{self.namespace}__{self.name}__{self.uid}"
        if len(full.encode()) <= MAX_SLUG:
            return full
        digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_CHARS]
        tail = f"__{digest}" + (f"__{self.uid}" if len(self.uid.encode()) <= _MAX_KEPT_UID else "")
        head = f"{self.namespace}__{self.name}".encode()[:MAX_SLUG - len(tail.encode())]
        return head.decode(errors="ignore") + tail

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
