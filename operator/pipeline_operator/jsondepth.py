"""JSON decoding that a deeply nested document cannot break.

CPython's ``json`` module gives up with a RecursionError past about a thousand levels of nesting,
and fewer levels still break whatever walks the value afterwards (copies, diffs, validation,
encoding it again). Whoever can write a JSON document the operator reads can nest it that deep:
a pipeline's answers, a Pipeline object as the API server serves it (an object stored before its
CRD bounded every field, or with the CRD's validation bypassed), a request to the HTTP API.

- :func:`decode_json` decodes one document and refuses one nested too deep (:class:`TooDeep`).
- :func:`decode_objects` decodes an answer of the Kubernetes API (an object, a list of objects or a
  watch event) and never fails for depth: each list or object nested deeper than the limit is
  replaced by :data:`TOO_DEEP`, and the Kubernetes object that held it is marked (its
  ``metadata`` gets the key :data:`UNDECODABLE`, naming the place), so that one such object is
  reported and skipped while the list or the watch stream it came in goes on. A deep
  ``metadata.managedFields`` (server-side apply's bookkeeping, which whoever may update an object can
  write, and which the operator never reads) is dropped instead: that object is served as usual.

Both cost one C-speed decode and a few passes in C over the document (its strings removed, its
brackets counted), linear in its size whatever its shape; only a document nested too deep is cut,
likewise in linear time, and decoded once cut.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from typing import Any

# JSON strings (with their escapes), removed before brackets are counted: a bracket inside a string nests nothing.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An opening bracket as 2 and a closing one as 0: one less than each is its step of depth.
_STEPS = bytes(2 if b in b"[{" else 0 if b in b"]}" else 1 for b in range(256))

MAX_OBJECT_DEPTH = 96  # levels of a Kubernetes API answer (a Pipeline nests about 20, a list or an event 1-2 more)
TOO_DEEP = "\u0000nested too deep"  # what replaces a list or an object nested deeper than allowed
UNDECODABLE = "\u0000undecodable"  # the metadata key marking an object that held such a value
_TOO_DEEP_JSON = json.dumps(TOO_DEEP).encode()
_MAX_PATH = 120  # characters of the place named in a report


class TooDeep(ValueError):
    """A JSON document nested deeper than allowed."""


def too_deep(raw: bytes, limit: int) -> bool:
    """Whether the brackets of a JSON document (already known to be valid) nest deeper than ``limit``.

    In time linear in the document's size and without a Python loop per byte: strings are removed,
    then everything but brackets; each opening bracket counts +1 and each closing one -1, and the
    running sum (``itertools.accumulate``, in C) is the depth. A document of n brackets nests at most
    n/2 levels, so most answers are judged by their length alone."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 2 * limit:
        return False
    steps = brackets.translate(_STEPS)
    deepest: int = max(itertools.accumulate(map(operator.sub, steps, itertools.repeat(1))))
    return deepest > limit


def _as_bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


def decode_json(raw: bytes | str, max_depth: int) -> Any:
    """``raw`` decoded as JSON, nested at most ``max_depth`` levels.

    Raises ValueError when it is not JSON, :class:`TooDeep` when it nests deeper."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep(f"nested deeper than {max_depth} levels") from None
    if isinstance(value, (dict, list)) and too_deep(_as_bytes(raw), max_depth):
        raise TooDeep(f"nested deeper than {max_depth} levels")
    return value


def _blank_strings(raw: bytes) -> bytes:
    """``raw`` with the inside of each JSON string blanked, of the same length: its brackets are where
    they were, and only those that nest are left."""
    return _JSON_STRING.sub(lambda m: b'"' + b" " * (len(m[0]) - 2) + b'"', raw)


def cut_deep(raw: bytes, limit: int) -> bytes:
    """The JSON document ``raw`` with each list or object nested deeper than ``limit`` levels replaced
    by the string :data:`TOO_DEEP`.

    Linear, with no Python loop per byte or bracket: the depth after each byte (a running sum, as in
    :func:`too_deep`, over the document with its strings blanked) is capped at ``limit + 1``, and each
    run of bytes at that cap is a value to cut: it starts with the bracket that went deeper than
    ``limit`` and ends just before the bracket that closes it."""
    cap = limit + 1
    if cap > 255:
        raise ValueError(f"a depth limit of at most 254 levels, not {limit}")
    depths = itertools.accumulate(map(operator.sub, _blank_strings(raw).translate(_STEPS), itertools.repeat(1)))
    capped = bytes(map(min, depths, itertools.repeat(cap)))
    out: list[bytes] = []
    kept = 0
    for run in re.finditer(re.escape(bytes([cap])) + b"+", capped):
        out += (raw[kept:run.start()], _TOO_DEEP_JSON)
        kept = run.end() + 1  # past the closing bracket
    out.append(raw[kept:])
    return b"".join(out)


def _too_deep_at(value: Any) -> str | None:
    """The first place in ``value`` (already cut, so not deep) that holds :data:`TOO_DEEP`."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if item == TOO_DEEP:
            return path.lstrip(".") or "(the whole object)"
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def _objects_of(doc: Any) -> list[dict[str, Any]]:
    """The Kubernetes objects an answer holds: a list's items, a watch event's object, or itself."""
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("items"), list):
        return [o for o in doc["items"] if isinstance(o, dict)]
    if "type" in doc and isinstance(doc.get("object"), dict):
        return [doc["object"]]
    return [doc]


def undecodable(obj: Any) -> str | None:
    """Why this Kubernetes object could not be decoded whole (see :func:`decode_objects`), or None."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta.get(UNDECODABLE) if isinstance(meta, dict) else None


def decode_objects(raw: bytes | str, max_depth: int = MAX_OBJECT_DEPTH) -> Any:
    """An answer of the Kubernetes API decoded, however deep it nests.

    Raises ValueError only when it is not JSON. A list or an object nested deeper than ``max_depth``
    is replaced by :data:`TOO_DEEP`, and each object of the answer that held one is marked:
    :func:`undecodable` says where."""
    data = _as_bytes(raw)
    if not too_deep(data, max_depth):  # judged before decoding: a document is decoded once
        return json.loads(data)
    value = json.loads(cut_deep(data, max_depth))
    for obj in _objects_of(value):
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            continue
        place = _too_deep_at(obj)
        if place is not None and place.startswith("metadata.managedFields"):
            # Server-side apply's bookkeeping, which any writer of the object can fill (and which the
            # operator never reads): dropped, so that such an object is still served.
            del meta["managedFields"]
            place = _too_deep_at(obj)
        if place is not None:
            shown = place if len(place) <= _MAX_PATH else place[:_MAX_PATH] + "..."
            meta[UNDECODABLE] = f"{shown}: nested deeper than {max_depth} levels, more than the operator decodes"
    return value
