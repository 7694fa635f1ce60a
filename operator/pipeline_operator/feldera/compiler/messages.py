"""The messages of Feldera's SQL compiler as a program gets them: read from its stderr, and bounded so that
a program that makes the compiler write thousands of warnings cannot make its Pipeline's status too large
to write."""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGES_BYTES = 64 * 1024  # the messages kept, as JSON
MAX_MESSAGE_FIELD = 4096  # characters of one message's text fields (message, snippet, error_type)


def compiler_messages(stderr: str) -> list[dict[str, Any]] | None:
    """The messages Feldera's SQL compiler writes as JSON (``-je``) on stderr, after whatever the JVM wrote
    before them (as Feldera reads them: from the first ``[``); None when there are none to read. Bounded: each
    text field to ``MAX_MESSAGE_FIELD`` characters, the whole to ``MAX_MESSAGES_BYTES``, a last message saying
    how many more there were."""
    start = stderr.find("[")
    if start < 0:
        return None
    try:
        messages = json.loads(stderr[start:])
    except ValueError:
        return None
    if not isinstance(messages, list):
        return None
    kept: list[dict[str, Any]] = []
    size = 0
    found = [m for m in messages if isinstance(m, dict)]
    for message in found:
        message = {k: v[:MAX_MESSAGE_FIELD] + " ..." if isinstance(v, str) and len(v) > MAX_MESSAGE_FIELD else v
                   for k, v in message.items()}
        size += len(json.dumps(message))
        if size > MAX_MESSAGES_BYTES:
            break
        kept.append(message)
    if len(kept) < len(found):
        kept.append({"start_line_number": 0, "start_column": 0, "end_line_number": 0, "end_column": 0,
                     "warning": all(m.get("warning") is True for m in found[len(kept):]),
                     "error_type": "Messages not shown",
                     "message": f"{len(found) - len(kept)} more messages of the SQL compiler are not shown "
                                f"(a program's messages are kept to {MAX_MESSAGES_BYTES // 1024} KiB)",
                     "snippet": None})
    return kept
