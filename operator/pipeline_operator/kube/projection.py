"""What an informer keeps of each object (:mod:`.informer`): a transform applied in the watch's thread
(by default all but ``metadata.managedFields``), and the form its cache holds. A :data:`FieldProjection`
names the fields kept, so that a cache of thousands of objects holds only what its readers use."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

Transform = Callable[[dict[str, Any]], dict[str, Any]]
FieldProjection = Union[Literal[True, "shared"], Mapping[str, "FieldProjection"]]  # noqa: UP007 - a recursive alias evaluated at run time
SHARED: Literal["shared"] = "shared"  # a shape: the whole value, its strings interned (labels, owner references)


def project(value: Any, shape: FieldProjection) -> Any:
    """What ``shape`` keeps of ``value``: ``True`` keeps a value whole, :data:`SHARED` too with its strings
    interned (the same labels and owner references recur across a cache's objects, and each decoded object
    would otherwise hold a copy of each string), a mapping keeps those keys of a dict (each by its own
    shape) and applies to each item of a list. Keys come from the shape, so that all the objects of a
    cache share one string per key instead of one each."""
    if shape is True:
        return value
    if shape == SHARED:
        return _interned(value)
    if isinstance(value, list):
        return [project(item, shape) for item in value]
    if not isinstance(value, dict):
        return value
    return {key: project(value[key], inner) for key, inner in shape.items() if value.get(key) is not None}


def _interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(item) for item in value]
    return value


def projection(shape: Mapping[str, FieldProjection]) -> Transform:
    """A transform keeping what ``shape`` names of each object (see :func:`project`)."""
    return lambda obj: project(obj, shape)


def names_and_versions(obj: dict[str, Any]) -> dict[str, Any]:
    """Only what names the object and its version (a ``cached_form`` for a cache whose reader is ``on_change``)."""
    meta = obj.get("metadata") or {}
    return {"metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta}}


def as_is(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


def trimmed(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without ``metadata.managedFields`` (client-go's usual informer transform): server-side
    apply's bookkeeping is often the largest part of an object, and no reader of the cache uses it."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


__all__ = ["SHARED", "FieldProjection", "Transform", "as_is", "names_and_versions", "project", "projection", "trimmed"]
