"""``/ui``: a read-only page of the tenant's pipelines and, for one pipeline, a timeline of its statuses.

Rendered on the server as HTML with an inline SVG: no JavaScript, so there is no build chain to keep
and nothing a browser runs; the Content-Security-Policy forbids scripts outright, so even a value that
escaped escaping could not run one. Everything user-controlled (names, namespaces, error messages,
details) is HTML-escaped.

The page is served by the API, with the API's authentication and authorization (``list`` for the list,
``get`` for one pipeline): a browser does not send a bearer token by itself, so with ``--api-auth
kubernetes`` the page is opened through a proxy that adds the ``Authorization`` header, and in local
development with ``--api-auth none`` (bound to 127.0.0.1). The tenant is ``?namespace=`` (a link can
carry it), else the API's rule (the ``Feldera-Tenant`` header, else a service account's own namespace,
else the API's default namespace).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web

from ..core import resource
from ..core.lifecycle import PipelineState
from ..models import PipelineStatus, combined_status
from .auth import NAMESPACE_RE
from .errors import ApiError

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps, ServedPipeline

# The timeline's bands: (title, the monitor event's field). One band per status kind.
BANDS: tuple[tuple[str, str], ...] = (
    ("resources", "deployment_resources_status"),
    ("runtime", "deployment_runtime_status"),
    ("storage", "storage_status"),
    ("program", "program_status"),
)
ERROR_BAND = "error"  # where an error was latched, labelled with its code
LAST_EVENTS = 20  # rows of the events table (the timeline shows every retained event)

# Colours by status value, alike for alike across bands: settled (green), on the way (blue), held
# (amber), off (grey), failing (red). Any other value gets a neutral colour.
COLORS: dict[str, str] = {
    "Running": "#2e9d4f", "Provisioned": "#3fae6a", "Success": "#2e9d4f", "InUse": "#5b8def",
    "Provisioning": "#4a7fd6", "Initializing": "#6d9be6", "Bootstrapping": "#6d9be6", "Replaying": "#6d9be6",
    "Coordination": "#7d8fe0",
    "Standby": "#8fa3c7", "CompilingSql": "#6d9be6", "SqlCompiled": "#6d9be6", "CompilingRust": "#6d9be6",
    "Paused": "#e0a526", "Suspended": "#b07cd6", "AwaitingApproval": "#e0a526", "Pending": "#b8b8b8",
    "Stopping": "#e07b26", "Clearing": "#e07b26",
    "Stopped": "#9a9a9a", "Cleared": "#c4c4c4",
    "Unavailable": "#d64545", "SqlError": "#d64545", "RustError": "#d64545", "SystemError": "#d64545",
}
OTHER_COLOR = "#8a8aa0"
ERROR_COLOR = "#c0392b"

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222;background:#fff}
h1{font-size:1.4rem;margin:0 0 .8rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;font-size:.85rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
th{background:#f4f4f4}a{color:#1f5fbf}.muted{color:#777}.error{border:1px solid #c0392b;background:#fdf0ee;
padding:.6rem .8rem;margin:.8rem 0}.error code{font-weight:bold}.status{font-weight:600}
svg text{font-family:system-ui,sans-serif;font-size:11px}
""".strip()
# The policy allows exactly this style sheet (by its digest), no script and nothing loaded from anywhere.
CSP = ("default-src 'none'; script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'; img-src 'self'; style-src 'sha256-"
       + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode() + "'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

# Geometry of the timeline (pixels).
WIDTH, LEFT, RIGHT, BAND_HEIGHT, BAND_GAP, TOP = 1100, 90, 20, 26, 8, 8
MIN_LABEL_WIDTH = 7.0  # pixels per character below which a segment shows no label (its <title> still does)


@dataclass(frozen=True)
class Segment:
    """One status held from ``start`` until ``end`` (the next event that changed it, or now)."""
    band: str
    label: str
    start: dt.datetime
    end: dt.datetime
    detail: str = ""  # more for the hover title (an error's message)


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC)


def segments(events: Sequence[dict[str, Any]], now: dt.datetime) -> list[Segment]:
    """The timeline's segments from monitor events (Feldera's JSON, any order): per band, one segment
    per run of equal values; a field that is absent or null (no runtime while Stopped) has none."""
    ordered = sorted(events, key=lambda e: (e["recorded_at"], e["event_id"]))
    times = [_time(e["recorded_at"]) for e in ordered]
    found: list[Segment] = []

    def runs(band: str, value_of: Any) -> None:
        current: tuple[str, str] | None = None
        since = now
        for event, at in zip(ordered, times, strict=True):
            value = value_of(event)
            if value == current:
                continue
            if current is not None:
                found.append(Segment(band, current[0], since, at, current[1]))
            current, since = value, at
        if current is not None:
            found.append(Segment(band, current[0], since, max(now, since), current[1]))

    for band, field in BANDS:
        runs(band, lambda e, f=field: (str(e[f]), "") if e.get(f) is not None else None)
    runs(ERROR_BAND, _error_of)
    return found


def _error_of(event: dict[str, Any]) -> tuple[str, str] | None:
    error = event.get("deployment_error")
    if isinstance(error, dict):
        return str(error.get("error_code") or "Error"), str(error.get("message") or "")
    return ("Error", "") if event.get("deployment_has_error") else None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def timeline_svg(events: Sequence[dict[str, Any]], now: dt.datetime) -> str:
    """The SVG timeline: a band per status kind and one for latched errors, time running left to right
    from the oldest retained event to ``now``; each segment is coloured by its status, labelled when
    wide enough, and has a ``<title>`` (status, from, to, how long) that a browser shows on hover."""
    parts = segments(events, now)
    bands = [b for b, _ in BANDS] + [ERROR_BAND]
    height = TOP + len(bands) * (BAND_HEIGHT + BAND_GAP) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="status timeline">']
    if not parts:
        out.append('<text x="10" y="20">No monitor events are retained for this pipeline.</text></svg>')
        return "".join(out)
    begin = min(s.start for s in parts)
    end = max(max(s.end for s in parts), begin + dt.timedelta(seconds=1))
    span = (end - begin).total_seconds()
    usable = WIDTH - LEFT - RIGHT

    def x(at: dt.datetime) -> float:
        return LEFT + usable * (at - begin).total_seconds() / span

    for row, band in enumerate(bands):
        y = TOP + row * (BAND_HEIGHT + BAND_GAP)
        out.append(f'<g class="band" data-band="{band}">'
                   f'<text x="{LEFT - 8}" y="{y + BAND_HEIGHT / 2 + 4:.1f}" text-anchor="end">{band}</text>'
                   f'<rect x="{LEFT}" y="{y}" width="{usable}" height="{BAND_HEIGHT}" fill="#f2f2f2"/>')
        for s in (p for p in parts if p.band == band):
            left, right = x(s.start), x(s.end)
            width = max(right - left, 1.5)  # a short status stays visible (and hoverable)
            color = ERROR_COLOR if band == ERROR_BAND else COLORS.get(s.label, OTHER_COLOR)
            title = f"{band}: {s.label} from {_clock(s.start)} to {_clock(s.end)} " \
                    f"({_duration((s.end - s.start).total_seconds())})"
            if s.detail:
                title += f": {s.detail}"
            label = escape(s.label)
            out.append(f'<g class="segment" data-band="{band}" data-status="{label}">'
                       f'<title>{escape(title)}</title>'
                       f'<rect x="{left:.1f}" y="{y}" width="{width:.1f}" height="{BAND_HEIGHT}" fill="{color}" '
                       f'stroke="#fff" stroke-width="0.5"/>')
            if width >= MIN_LABEL_WIDTH * len(s.label) + 6:
                out.append(f'<text x="{left + 4:.1f}" y="{y + BAND_HEIGHT / 2 + 4:.1f}" fill="#fff">{label}</text>')
            out.append("</g>")
        out.append("</g>")
    axis = TOP + len(bands) * (BAND_HEIGHT + BAND_GAP) + 12
    out.append(f'<text x="{LEFT}" y="{axis}" class="axis">{_clock(begin)}</text>'
               f'<text x="{WIDTH - RIGHT}" y="{axis}" text-anchor="end" class="axis">{_clock(end)} '
               f'({_duration(span)} shown)</text></svg>')
    return "".join(out)


def _page(title: str, body: str) -> web.Response:
    html = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>")
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=HEADERS)


def _state_of(pipeline: ServedPipeline) -> PipelineState:
    """The pipeline's state as this replica knows it (a standby reads it from the resource's status)."""
    if pipeline.state is not None:
        return pipeline.state
    return resource.from_status(PipelineStatus.model_validate((pipeline.obj or {}).get("status") or {}))


def _link(namespace: str, name: str) -> str:
    return f"/ui/pipelines/{quote(name, safe='')}?{urlencode({'namespace': namespace})}"


def list_page(namespace: str, pipelines: Sequence[tuple[str, PipelineState]]) -> web.Response:
    """The tenant's pipelines with their combined, resources, runtime and storage statuses and error."""
    rows = []
    for name, state in sorted(pipelines, key=lambda p: p[0]):
        status = combined_status(state.deployment_resources_status, state.deployment_runtime_status).value
        error = state.deployment_error
        rows.append(
            f'<tr class="pipeline" data-name="{escape(name)}"><td><a href="{escape(_link(namespace, name))}">'
            f'{escape(name)}</a></td><td class="status">{escape(status)}</td>'
            f"<td>{escape(state.deployment_resources_status.value)}</td>"
            f"<td>{escape(state.deployment_runtime_status.value if state.deployment_runtime_status else '—')}</td>"
            f"<td>{escape(state.storage_status.value)}</td><td>{escape(state.program_status.value)}</td>"
            f"<td>{escape(error.error_code) if error else ''}</td></tr>")
    table = ("<table><thead><tr><th>pipeline</th><th>status</th><th>resources</th><th>runtime</th><th>storage</th>"
             "<th>program</th><th>error</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows \
        else '<p class="muted">No pipelines in this namespace.</p>'
    return _page(f"Pipelines in {namespace}",
                 f"<h1>Pipelines in namespace <code>{escape(namespace)}</code></h1>{table}")


def pipeline_page(namespace: str, name: str, state: PipelineState, events: Sequence[dict[str, Any]],
                  now: dt.datetime) -> web.Response:
    """One pipeline: its statuses, the latched error, the timeline and the newest events."""
    status = combined_status(state.deployment_resources_status, state.deployment_runtime_status).value
    parts = [f'<p><a href="{escape("/ui?" + urlencode({"namespace": namespace}))}">← pipelines in '
             f"{escape(namespace)}</a></p>",
             f'<h1>Pipeline <code>{escape(name)}</code> <span class="status" id="status">{escape(status)}</span></h1>']
    error = state.deployment_error
    if error is not None:
        details = "" if error.details is None else \
            f"<pre>{escape(json.dumps(error.details, indent=2, sort_keys=True, default=str)[:4000])}</pre>"
        parts.append(f'<div class="error" id="error"><strong>Latched error</strong> <code>{escape(error.error_code)}'
                     f"</code>: {escape(error.message)}{details}</div>")
    parts.append(f"<h2>Timeline ({len(events)} retained events)</h2>{timeline_svg(events, now)}")
    newest = sorted(events, key=lambda e: (e["recorded_at"], e["event_id"]), reverse=True)[:LAST_EVENTS]
    rows = []
    for e in newest:
        error_of = _error_of(e)
        rows.append("<tr class=\"event\">" + "".join(f"<td>{escape(str(v))}</td>" for v in (
            e["recorded_at"],
            f"{e.get('deployment_resources_status')} ({e.get('deployment_resources_desired_status')})",
            f"{e.get('deployment_runtime_status') or '—'} ({e.get('deployment_runtime_desired_status') or '—'})",
            e.get("program_status"), e.get("storage_status"),
            f"{error_of[0]}: {error_of[1]}" if error_of else "")) + "</tr>")
    parts.append(f"<h2>Last events</h2><table><thead><tr><th>recorded at</th><th>resources (desired)</th>"
                 f"<th>runtime (desired)</th><th>program</th><th>storage</th><th>error</th></tr></thead>"
                 f"<tbody>{''.join(rows)}</tbody></table>")
    return _page(f"{name} in {namespace}", "".join(parts))


class Ui:
    """The ``/ui`` handlers of one :class:`~.server.ApiServer`."""

    def __init__(self, gate: Gate, deps: ApiDeps) -> None:
        self.gate = gate
        self.deps = deps

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/ui", self.pipelines)
        r.add_get("/ui/pipelines/{name}", self.pipeline)

    async def namespace(self, request: web.Request) -> str:
        """``?namespace=``, else the API's rule (the ``Feldera-Tenant`` header, else a service account's own
        namespace, else the default)."""
        namespace = request.query.get("namespace")
        if namespace is None:
            return await self.gate.namespace(request)
        if not NAMESPACE_RE.match(namespace) or len(namespace) > 63:
            raise ApiError(400, "InvalidTenant", f"'{namespace[:70]}' is not a namespace name")
        return namespace

    async def pipelines(self, request: web.Request) -> web.Response:
        namespace = await self.namespace(request)
        await self.gate.authorize(request, "list", namespace)
        found = [(p.key.name, _state_of(p)) for p in self.deps.pipelines.in_namespace(namespace)
                 if p.obj is not None]
        return list_page(namespace, found)

    async def pipeline(self, request: web.Request) -> web.Response:
        namespace = await self.namespace(request)
        name = request.match_info["name"]
        await self.gate.authorize(request, "get", namespace, name)
        served = self.gate.monitor(namespace, name)
        raw = await asyncio.to_thread(self.deps.events.list_json, served.key.uid, "all")
        return pipeline_page(namespace, name, _state_of(served), json.loads(raw), dt.datetime.now(dt.UTC))
