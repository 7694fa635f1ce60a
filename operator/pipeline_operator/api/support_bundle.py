"""``GET /v0/pipelines/{name}/support_bundle``: Feldera's support bundle, assembled by the operator from what
it has, as Feldera's manager assembles it (``api/endpoints/pipeline_interaction/support_bundle.rs`` and
``api/support_data_collector.rs`` at the Feldera version this API matches).

A ZIP (``{name}-support-bundle.zip``) with ``metadata.txt`` and ``metadata.json`` at its root (the pipeline,
its combined status, and for each collection the files collected, failed with the reason, or skipped), and one
directory per collection, named by its time, holding what was asked for: ``circuit_profile.zip`` and
``circuit_profile.json`` (the pipeline's ``dump_profile`` and ``dump_json_profile``), ``heap_profile.pb.gz``,
``metrics.txt``, ``stats.json`` (asked of the pipeline, 120 s each), ``logs.txt`` (the pipeline's log as the
``/logs`` route has it, without following it), ``pipeline_config.json`` (the pipeline as ``GET`` shows it),
``system_config.json`` (``/v0/config``), ``dataflow_graph.json`` and ``pipeline_events.json`` (its retained
monitor events). A file the pipeline cannot give (not running, an error) is listed as failed, with Feldera's
reason, and the bundle is served all the same.

Feldera's manager also collects in the background and keeps the last collections in its database; the operator
keeps none, so a bundle holds the collection made by the request (``collect=false`` gives the metadata only).
Each file is at most :data:`MAX_FILE` bytes (a larger one is listed as failed) and at most :data:`AT_ONCE`
bundles are assembled at once (429 ``TooManySupportBundles`` beyond), so a bundle's memory is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import zipfile
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..backends import LogsUnavailable
from ..core.lifecycle import PipelineState
from ..feldera.runtime_client import PipelineUnreachable
from ..models import combined_desired_status, combined_status
from . import pipeline_shape as shape
from . import writes
from .errors import ApiError, bool_param
from .interaction import reachable_endpoint
from .manager import dataflow_of
from .platform import VERSION, configuration

if TYPE_CHECKING:
    from .auth import Gate
    from .deps import ApiDeps, ServedPipeline

COLLECTION_TIMEOUT = 120.0  # Feldera's COLLECTION_TIMEOUT: each file asked of the pipeline
LOG_QUIET = 0.5  # seconds without a new line after which the log is taken as read (Feldera's next_line_timeout)
MAX_FILE = 64 * 1024 * 1024  # bytes of one file of a bundle (Feldera's 300 MiB, bounded tighter here)
AT_ONCE = 2  # bundles assembled at once
DATA_VERSION = 5  # Feldera's SupportBundleData::current_version
METADATA_VERSION = 1
# The parameters that choose what is collected (all true by default), and the files each gives.
FILES = {"circuit_profile": ("circuit_profile.zip", "circuit_profile.json"), "heap_profile": ("heap_profile.pb.gz",),
         "metrics": ("metrics.txt",), "logs": ("logs.txt",), "stats": ("stats.json",),
         "pipeline_config": ("pipeline_config.json",), "system_config": ("system_config.json",),
         "dataflow_graph": ("dataflow_graph.json",), "pipeline_events": ("pipeline_events.json",)}


class Failed(Exception):
    """A file that could not be collected: the reason is listed in the bundle's metadata."""


@dataclass
class Collection:
    time: dt.datetime
    files: dict[str, bytes] = field(default_factory=dict)
    collected: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def directory(self) -> str:
        return f"{self.time:%Y-%m-%dT%H-%M-%S}.{self.time.microsecond:06d}Z"


def _rfc3339(time: dt.datetime) -> str:
    return time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _pretty(raw: bytes) -> bytes:
    """Feldera's ``json_prettify``: indented when it is JSON, as it is otherwise."""
    try:
        return json.dumps(json.loads(raw), indent=2).encode()
    except (ValueError, RecursionError):
        return raw


class SupportBundles:
    def __init__(self, gate: Gate, deps: ApiDeps) -> None:
        self.gate = gate
        self.deps = deps
        self.at_once = asyncio.Semaphore(AT_ONCE)

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v0/pipelines/{name}/support_bundle", self.support_bundle)
        self.gate.long_routes.add("GET /v0/pipelines/{name}/support_bundle")  # it waits for the pipeline

    async def support_bundle(self, request: web.Request) -> web.Response:
        monitor = await self.gate.pipeline(request, "get")
        query = request.query
        limit = query.get("limit")
        if limit is not None and limit.strip() == "0":
            raise ApiError(400, "InvalidSupportBundleParameter", "Invalid support bundle parameter: limit must be "
                           "at least 1 when provided; omit it to return all retained collections",
                           {"reason": "limit must be at least 1 when provided; omit it to return all retained "
                                      "collections"})
        wanted = {name: bool_param(query, name, True) for name in FILES}
        if self.at_once.locked():
            raise ApiError(429, "TooManySupportBundles", f"{AT_ONCE} support bundles are being assembled; try again "
                           "shortly", {"limit": AT_ONCE}, retry_after=5)
        async with self.at_once:
            state = await writes.served_state(monitor)
            collections = [await self._collect(monitor, state, wanted)] if bool_param(query, "collect", True) else []
            body = await asyncio.to_thread(self._zip, monitor, state, collections, wanted)
        return web.Response(body=body, headers={
            "Content-Type": "application/zip", "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="{monitor.key.name}-support-bundle.zip"'})

    # -- one collection ---------------------------------------------------------------------------------

    async def _collect(self, monitor: ServedPipeline, state: PipelineState, wanted: dict[str, bool]) -> Collection:
        collection = Collection(dt.datetime.now(dt.UTC))
        sources: dict[str, Awaitable[bytes]] = {}
        if wanted["circuit_profile"]:
            sources["circuit_profile.zip"] = self._ask(monitor, state, "/dump_profile")
            sources["circuit_profile.json"] = self._json_profile(monitor, state)
        if wanted["heap_profile"]:
            sources["heap_profile.pb.gz"] = self._ask(monitor, state, "/heap_profile")
        if wanted["metrics"]:
            sources["metrics.txt"] = self._ask(monitor, state, "/metrics")
        if wanted["logs"]:
            sources["logs.txt"] = self._logs(monitor)
        if wanted["stats"]:
            sources["stats.json"] = self._stats(monitor, state)
        if wanted["pipeline_config"]:
            sources["pipeline_config.json"] = self._pipeline_config(monitor, state)
        if wanted["system_config"]:
            sources["system_config.json"] = self._system_config()
        if wanted["dataflow_graph"]:
            sources["dataflow_graph.json"] = self._dataflow_graph(monitor, state)
        if wanted["pipeline_events"]:
            sources["pipeline_events.json"] = self._events(monitor)
        results = await asyncio.gather(*sources.values(), return_exceptions=True)
        for (name, _), result in zip(sources.items(), results, strict=True):
            if isinstance(result, Failed):
                collection.failed.append({"file": name, "reason": str(result)})
            elif isinstance(result, BaseException):
                raise result
            else:
                collection.files[name] = result
                collection.collected.append(name)
        for parameter, names in FILES.items():
            if not wanted[parameter]:
                collection.skipped.extend(names)
        return collection

    async def _ask(self, monitor: ServedPipeline, state: PipelineState, path: str, query: str = "") -> bytes:
        """``GET path`` of the pipeline, as Feldera's collector asks it: its body, or why not (``HTTP 503: ...``
        with the message of its ErrorResponse, or the manager's own refusal)."""
        try:
            endpoint = await reachable_endpoint(self.deps, monitor, state)
        except ApiError as exc:
            raise Failed(exc.message) from None
        try:
            async with asyncio.timeout(COLLECTION_TIMEOUT), self.deps.runtime.exchange(
                    endpoint, "GET", path, query, answer_timeout=COLLECTION_TIMEOUT,
                    read_timeout=COLLECTION_TIMEOUT) as answer:
                body = await self._read(answer.chunks())
                if 200 <= answer.status < 300:
                    return body
                reason = f"HTTP {answer.status}"
                if body:
                    try:
                        message = json.loads(body)["message"]
                        reason += f": {str(message).rstrip()}"
                    except (ValueError, KeyError, TypeError, RecursionError):
                        reason += f": {body[:2000].decode('utf-8', 'replace').rstrip()}"
                raise Failed(reason)
        except (PipelineUnreachable, TimeoutError) as exc:
            raise Failed(f"Error sending HTTP request to pipeline: {exc or 'timeout'}") from None

    @staticmethod
    async def _read(chunks: AsyncIterator[bytes]) -> bytes:
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > MAX_FILE:
                raise Failed(f"the answer is larger than {MAX_FILE} bytes, the most a file of a bundle holds")
        return bytes(body)

    async def _json_profile(self, monitor: ServedPipeline, state: PipelineState) -> bytes:
        raw = await self._ask(monitor, state, "/dump_json_profile")
        return await asyncio.to_thread(self._profile_json, raw)

    @staticmethod
    def _profile_json(raw: bytes) -> bytes:
        """The JSON profile (from a ZIP's ``profile.json`` when the pipeline zipped it), as Feldera's collector
        writes it."""
        if raw[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(raw)) as archive, archive.open("profile.json") as member:
                    return member.read(MAX_FILE + 1)[:MAX_FILE]
            except (zipfile.BadZipFile, KeyError) as exc:
                raise Failed(f"Failed to extract from ZIP: {exc}") from None
        return raw

    async def _stats(self, monitor: ServedPipeline, state: PipelineState) -> bytes:
        return _pretty(await self._ask(monitor, state, "/stats", "include_connector_errors=true"))

    async def _logs(self, monitor: ServedPipeline) -> bytes:
        """The log as ``/logs`` starts it (not followed): what arrives until it is quiet for half a second."""
        if self.deps.logs is None:
            raise Failed("This operator's backend does not serve pipeline logs")
        text = bytearray()
        try:
            async with self.deps.logs(monitor.key, False) as chunks:
                source = aiter(chunks)
                first = True
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(source, None), COLLECTION_TIMEOUT if first else LOG_QUIET)
                    except TimeoutError:
                        break
                    if chunk is None:
                        break
                    first = False
                    text += chunk
                    if len(text) > MAX_FILE:
                        del text[:len(text) - MAX_FILE]  # the most recent part
        except LogsUnavailable as exc:
            raise Failed(f"Unable to reach pipeline runner to interact due to: {exc}") from None
        return bytes(text)

    async def _pipeline_config(self, monitor: ServedPipeline, state: PipelineState) -> bytes:
        assert monitor.obj is not None
        try:
            info = await shape.pipeline_info(self.deps, monitor.obj, state, "all")
        except ApiError as exc:
            raise Failed(exc.message) from None
        return json.dumps(info, indent=2).encode()

    async def _system_config(self) -> bytes:
        return json.dumps(configuration(VERSION), indent=2).encode()

    async def _dataflow_graph(self, monitor: ServedPipeline, state: PipelineState) -> bytes:
        try:
            dataflow = await dataflow_of(self.deps, monitor.key.name, state)
        except ApiError as exc:
            raise Failed(exc.message) from None
        return json.dumps(dataflow, indent=2).encode()

    async def _events(self, monitor: ServedPipeline) -> bytes:
        return _pretty((await asyncio.to_thread(self.deps.events.list_json, monitor.key.uid, "all")).encode())

    # -- the ZIP ----------------------------------------------------------------------------------------

    @staticmethod
    def _zip(monitor: ServedPipeline, state: PipelineState, collections: list[Collection],
             wanted: dict[str, bool]) -> bytes:
        """The bundle (blocking: run in a thread): the collections' directories, then the metadata."""
        status = combined_status(state.deployment_resources_status, state.deployment_runtime_status).value
        desired = combined_desired_status(state.deployment_resources_desired_status,
                                          state.deployment_runtime_desired_status, state.deployment_initial).value
        stamps = [t for t in (state.deployment_resources_status_since, state.deployment_runtime_status_since) if t]
        since = max(stamps) if stamps else dt.datetime.now(dt.UTC)
        pipeline: dict[str, Any] = {"name": monitor.key.name, "status": status, "status_since": _rfc3339(since)}
        if desired != status:
            pipeline["desired_status"] = desired
        metadata: dict[str, Any] = {"metadata_version": METADATA_VERSION,
                                    "requested_at": _rfc3339(dt.datetime.now(dt.UTC)), "pipeline": pipeline,
                                    "collections": []}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for collection in collections:
                directory = collection.directory()
                for name, content in collection.files.items():
                    archive.writestr(f"{directory}/{name}", content)
                metadata["collections"].append({
                    "directory": directory, "time": _rfc3339(collection.time), "data_version": DATA_VERSION,
                    "collected": collection.collected, "failed": collection.failed, "skipped": collection.skipped})
            archive.writestr("metadata.txt", _metadata_text(metadata))
            archive.writestr("metadata.json", json.dumps(metadata, indent=2))
        return buffer.getvalue()


def _metadata_text(meta: dict[str, Any]) -> str:
    """Feldera's ``render_metadata_text``: the bundle's table of contents."""
    pipeline = meta["pipeline"]
    out = ["", "# Support Bundle Table of Contents", "", f"Pipeline: {pipeline['name']}",
           f"Requested at: {meta['requested_at']}",
           f"Pipeline Status: {pipeline['status']} (since {pipeline['status_since']})"]
    if "desired_status" in pipeline:
        out.append(f"Pipeline Desired Status: {pipeline['desired_status']}")
    for index, collection in enumerate(meta["collections"]):
        out += ["", f"## Collection {index} ({collection['time']})", f"Directory: {collection['directory']}/"]
        if collection["collected"]:
            out += ["", "Successfully Collected:"] + [f"  ✓ {entry}" for entry in collection["collected"]]
        if collection["failed"]:
            out += ["", "Failed To Collect:"] + [f"  ✗ {e['file']}: {e['reason']}" for e in collection["failed"]]
        if collection["skipped"]:
            out += ["", "Skipped (by request):"] + [f"  ⚠ {entry}" for entry in collection["skipped"]]
    return "\n".join(out) + "\n"

