"""The newest version of a Pipeline this replica knows: what its watch delivered, or a newer one it got
first-hand (its own write's answer), until the watch catches up (:class:`NewestVersion`)."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

AWAIT_WATCH = 10.0


def _copy(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {})}


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


class NewestVersion:
    """The newest version of a Pipeline this replica knows.

    Versions are compared for equality only (``resourceVersion`` is opaque). The watch delivers
    them in order; an object we get first-hand (our own write's answer, a read, the API's patch)
    is newer than anything the watch delivers before that same version, so until then (or for
    at most AWAIT_WATCH seconds, should the watch restart and skip it) watch events are older."""

    def __init__(self) -> None:
        self.watched: dict[str, Any] | None = None  # the newest version the watch delivered
        self._recent: collections.deque[str | None] = collections.deque(maxlen=32)  # its latest versions
        self._own: dict[str, Any] | None = None  # a newer version we got first-hand ...
        self._own_until = 0.0                    # ... until the watch delivers it (or this deadline)

    @property
    def obj(self) -> dict[str, Any] | None:
        if self._own is not None and time.monotonic() < self._own_until:
            return self._own
        self._own = None
        return self.watched

    def see(self, body: Mapping[str, Any] | None) -> None:
        """A version the watch delivered (None: the object is gone)."""
        rv = resource_version(body)
        self.watched = _copy(body) if body is not None else None
        self._recent.append(rv)
        if self._own is not None and resource_version(self._own) == rv:
            self._own = None  # the watch caught up

    def adopt(self, obj: Mapping[str, Any]) -> None:
        """A version got first-hand: newer than what the watch delivered so far, unless it did already."""
        if resource_version(obj) in self._recent:
            return
        self._own, self._own_until = _copy(obj), time.monotonic() + AWAIT_WATCH


__all__ = ["AWAIT_WATCH", "NewestVersion", "resource_version"]
