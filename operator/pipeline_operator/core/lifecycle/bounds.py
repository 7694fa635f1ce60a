"""What a pipeline says, bounded before it goes into the Pipeline's status, its events and the event store:
each text (reason, message, error code) cut to a number of bytes of JSON, details larger or deeper than their
bounds replaced by a note saying so."""

from __future__ import annotations

import json
from typing import Any

from ...models import ErrorResponse

MAX_TEXT = 4096  # bytes of JSON of any one string taken from a pipeline (reason, message, error code)
MAX_ERROR_CODE = 128  # bytes of JSON of an error code
_WORST_ESCAPE = 12  # bytes of JSON one character may take ("\\ud83d\\ude00")


def _json_size(text: str) -> int:
    """Bytes the string takes as JSON (escaped, as the event store and the API write it)."""
    return len(json.dumps(text)) - 2


def _short(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as text of at most ``limit`` bytes of JSON, saying how much was cut.

    Measured as JSON, not in characters: a control character or an emoji takes 6 or 12 bytes there."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (ValueError, TypeError, RecursionError):
            text = f"<a {type(value).__name__} that cannot be shown>"
    if len(text) * _WORST_ESCAPE <= limit or _json_size(text) <= limit:
        return text
    marker = f"... ({len(text)} characters in all)"
    room = max(limit - len(marker), 0)
    # The longest prefix that fits: at most ``room`` characters, found by halving (a few short dumps).
    low, high = 0, min(len(text), room)
    while low < high:
        mid = (low + high + 1) // 2
        if _json_size(text[:mid]) <= room:
            low = mid
        else:
            high = mid - 1
    return text[:low] + marker


def cap_error(error: ErrorResponse) -> ErrorResponse:
    """An error as the pipeline reported it, each string and the details within their caps."""
    message, code = _short(error.message), _short(error.error_code, MAX_ERROR_CODE)
    details = cap_details(error.details)
    if message is error.message and code is error.error_code and details is error.details:
        return error
    return ErrorResponse(message=message, error_code=code, details=details)


DETAILS_LIMIT = 16 * 1024  # bytes of JSON; larger details are replaced by a marker
DETAILS_DEPTH_LIMIT = 32  # levels of nesting; deeper details are replaced by a marker (Feldera's have fewer than 10)


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects deeper than ``limit`` levels (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def cap_details(value: Any, limit: int = DETAILS_LIMIT) -> Any:
    """Details as the pipeline reported them, unless their JSON is larger than ``limit`` bytes or nests
    deeper than :data:`DETAILS_DEPTH_LIMIT` levels: then a marker saying so, so that no pipeline can bloat
    the event store or the resource, nor make a Pipeline too deep for its readers to decode."""
    if value is None:
        return None
    if isinstance(value, (dict, list)) and _depth_over(value, DETAILS_DEPTH_LIMIT):
        return {"truncated": True, "depth_limit": DETAILS_DEPTH_LIMIT,
                "reason": f"details nested deeper than {DETAILS_DEPTH_LIMIT} levels are not recorded"}
    try:
        size = len(json.dumps(value, separators=(",", ":"), default=str))
    except (TypeError, ValueError, RecursionError):
        return {"truncated": True, "reason": "details are not JSON-serialisable"}
    if size <= limit:
        return value
    return {"truncated": True, "size_bytes": size, "limit_bytes": limit,
            "reason": f"details larger than {limit} bytes are not recorded"}
