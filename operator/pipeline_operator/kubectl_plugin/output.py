"""What the plugin prints: monitor events as rows that line up under their header (followed rows too), as
JSON or YAML, and times as ages."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from pydantic.alias_generators import to_snake

from ..models import EVENT_FIELD_ORDER

COLUMNS = ("TIME", "RESOURCES", "RUNTIME", "PROGRAM", "STORAGE", "ERROR")
# Widths that hold every status value Feldera has, so that followed rows line up under the header.
MIN_WIDTHS = (7, 26, 26, 13, 8, 5)


# -- monitor events ------------------------------------------------------------------------------------


def snake(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``status.history`` entry (camelCase) as the HTTP API shows an event: snake_case, in
    Feldera's field order (the API server keeps the keys sorted)."""
    fields = {to_snake(k): v for k, v in entry.items()}
    return {k: fields[k] for k in EVENT_FIELD_ORDER if k in fields}


def ago(at: str, now: dt.datetime) -> str:
    seconds = max(0, int((now - dt.datetime.fromisoformat(at.replace("Z", "+00:00"))).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def row(event: dict[str, Any], now: dt.datetime) -> tuple[str, ...]:
    runtime = event.get("deployment_runtime_status") or "-"
    if event.get("deployment_runtime_desired_status"):
        runtime += f" ({event['deployment_runtime_desired_status']})"
    error = "-"
    if event.get("deployment_has_error"):
        error = (event.get("deployment_error") or {}).get("error_code") or "yes"
    return (ago(event["recorded_at"], now),
            f"{event['deployment_resources_status']} ({event['deployment_resources_desired_status']})",
            runtime, event["program_status"], event["storage_status"], error)


def format_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([w, *(len(r[i]) for r in rows)]) for i, w in enumerate(MIN_WIDTHS)]
    return ["   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def events_table(events: Sequence[dict[str, Any]], now: dt.datetime) -> str:
    """Newest first, as Feldera's ``fda events`` prints them; desired statuses in parentheses."""
    return "\n".join(format_rows([COLUMNS, *(row(e, now) for e in events)]))


def to_yaml(value: Any, indent: int = 0) -> str:
    """JSON data as YAML (block style; strings quoted as JSON, which YAML reads), without PyYAML,
    which the operator does not depend on."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{json.dumps(str(key))}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{json.dumps(str(key))}: {to_yaml(item).strip()}")
        return "\n".join(lines)
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2)
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    return pad + json.dumps(value)


def print_events(events: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print(json.dumps(events, indent=2))
    elif output == "yaml":
        print(to_yaml(events))
    else:
        print(events_table(events, dt.datetime.now(dt.UTC)))
