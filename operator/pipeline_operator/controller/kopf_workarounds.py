"""What Kopf lacks and the operator needs, worked around in Kopf's private modules: the one place that
touches them (an import-linter contract keeps it so; tests/test_kopf_workarounds.py fails when Kopf changes
what these rely on).

- Kopf offers no transform of the objects its watch keeps (client-go's ``TransformStripManagedFields``):
  :func:`strip_managed_fields_in_kopf_watches` drops ``metadata.managedFields`` as objects arrive.
- Kopf decodes the API server's answers with ``json.loads``, which a deep enough object makes fail with a
  RecursionError (the whole list or watch, then the operator): :func:`bound_json_depth_in_kopf` decodes them
  within a depth bound instead.
- Kopf offers no informer's view of its watch (what a listing holds, when it is over):
  :func:`following_kopf_watches` hears each stream as it arrives, so that the leader's cache of the Pipelines
  is fed by Kopf's watch and needs no second one.

Recorded for Kopf 1.45.2 (pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import watching as kopf_watching

from .. import jsondepth

log = logging.getLogger(__name__)


def apply() -> None:
    """Both workarounds, once per process (idempotent), before Kopf starts."""
    strip_managed_fields_in_kopf_watches()
    bound_json_depth_in_kopf()


class WatchFollower(Protocol):
    """What hears Kopf's watch of one resource as it arrives (:func:`following_kopf_watches`): each listing
    begins, its objects (``kind`` None), the end of the listing, then the watch's events. Called on the event
    loop, in the stream's order, before Kopf's handlers see the object."""

    def listing(self, group: str, plural: str, namespace: str | None) -> None: ...

    def event(self, group: str, plural: str, namespace: str | None, kind: str | None, obj: dict[str, Any]) -> None: ...

    def listed(self, group: str, plural: str, namespace: str | None) -> None: ...


_followers: list[WatchFollower] = []


@contextlib.contextmanager
def following_kopf_watches(follower: WatchFollower) -> Iterator[None]:
    """``follower`` hears every stream of Kopf's watches while the block runs (Kopf offers no such access:
    its on.event handlers run later, one worker per object, and never say when a listing is over). With
    :func:`strip_managed_fields_in_kopf_watches` applied."""
    _followers.append(follower)
    try:
        yield
    finally:
        _followers.remove(follower)


def _tell(what: str, *args: Any) -> None:
    for follower in list(_followers):
        try:
            getattr(follower, what)(*args)
        except Exception:  # a follower's failure never breaks Kopf's watch
            log.exception("a follower of Kopf's watch failed on %s", what)


def strip_managed_fields_in_kopf_watches() -> None:
    """Kopf keeps the newest version of every Pipeline it watches, and offers no transform of what its
    watch delivers (client-go and controller-runtime do: ``TransformStripManagedFields``). Nothing here
    or in Kopf reads ``metadata.managedFields``, server-side apply's bookkeeping, which is about 13 KB of
    a Pipeline's 24 KB in memory. So Kopf's watch stream (``continuous_watch``, which its watcher calls
    for the initial list and every watch) is wrapped to drop it from each object as it arrives. The same
    wrapper tells the followers (:func:`following_kopf_watches`) what the stream delivers. Done once per
    process; tests/test_kopf_workarounds.py checks Kopf still has the function this wraps."""
    original = kopf_watching.continuous_watch
    if getattr(original, "strips_managed_fields", False):
        return

    async def continuous_watch(**kwargs: Any) -> AsyncIterator[Any]:
        resource, namespace = kwargs.get("resource"), kwargs.get("namespace")
        where = (getattr(resource, "group", ""), getattr(resource, "plural", ""), namespace)
        _tell("listing", *where)  # every call lists first (Kopf's initial streaming is off)
        async for event in original(**kwargs):
            raw: Any = event  # a bookmark, or the event as the API server sent it
            obj = raw.get("object") if isinstance(raw, dict) else None
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            if isinstance(meta, dict):
                meta.pop("managedFields", None)
            if event is kopf_watching.Bookmark.LISTED:
                _tell("listed", *where)
            elif isinstance(obj, dict) and raw.get("type") in (None, "ADDED", "MODIFIED", "DELETED"):
                _tell("event", *where, raw.get("type"), obj)
            yield event
    continuous_watch.strips_managed_fields = True  # type: ignore[attr-defined]
    continuous_watch.__wrapped__ = original  # type: ignore[attr-defined]  # what inspect.unwrap finds (the tests)
    kopf_watching.continuous_watch = continuous_watch


_DECODE_IN_THREAD = 64 * 1024  # bytes of an answer from which Kopf's decoding leaves the event loop


class _BoundedJson:
    """Kopf's ``json`` module as its API client sees it: ``loads`` (a watch stream's lines) decodes
    without a depth limit's failure (:func:`jsondepth.decode_objects`), the rest is ``json``'s."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return jsondepth.decode_objects(text)


class _BoundedJsonAnswer:
    """An answer of Kopf's ``request`` whose ``json()`` (a list, an object, a patch's result) is decoded
    by :func:`jsondepth.decode_objects`, off the event loop when it is large."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    async def __aenter__(self) -> _BoundedJsonAnswer:
        await self._response.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._response.__aexit__(*exc)

    async def json(self, **_: Any) -> Any:
        raw = await self._response.read()
        if len(raw) < _DECODE_IN_THREAD:
            return jsondepth.decode_objects(raw)
        return await asyncio.to_thread(jsondepth.decode_objects, raw)


def bound_json_depth_in_kopf() -> None:
    """Kopf decodes the API server's answers with ``json.loads``, which gives up with a RecursionError past
    about a thousand levels of nesting: one Pipeline nested that deep (stored before the CRD bounded every
    field, or with its validation bypassed) failed the whole list or watch, and the operator stopped. Kopf's
    API client (``kopf._cogs.clients.api``: its ``request``, through which every call goes, and its ``json``
    module, which decodes a watch stream's lines) is made to decode with :func:`jsondepth.decode_objects`:
    such an object comes through marked (:func:`jsondepth.undecodable`), its deep values cut, and is
    reported and skipped by its loop while every other Pipeline goes on. Done once per process;
    tests/test_kopf_workarounds.py checks Kopf still has what this replaces."""
    if getattr(kopf_api.request, "bounds_json_depth", False):
        return
    original = kopf_api.request

    async def request(*args: Any, **kwargs: Any) -> Any:
        return _BoundedJsonAnswer(await original(*args, **kwargs))
    request.bounds_json_depth = True  # type: ignore[attr-defined]
    request.__wrapped__ = original  # type: ignore[attr-defined]
    kopf_api.request = request
    setattr(kopf_api, "json", _BoundedJson())  # noqa: B010 (the module's own name for json, not exported)


__all__ = ["WatchFollower", "apply", "bound_json_depth_in_kopf", "following_kopf_watches",
           "strip_managed_fields_in_kopf_watches"]
