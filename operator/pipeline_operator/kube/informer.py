"""A list+watch cache ("informer") of one kind of Kubernetes object, kept as plain JSON.

The Kubernetes backend looks at each pipeline's children on every monitoring pass; reading them
with GETs costs several API calls per pipeline every few seconds, which does not scale to
thousands of pipelines. An informer lists the objects once and then follows a watch, so a pass
reads memory and the API server pushes what changed.

Objects are the API server's JSON as dicts, never the client's model objects: decoding a model
for every object and event is slow and memory-hungry, and a dict is all a reader needs.

Each watched namespace (or the whole cluster) gets one daemon thread of its own, outside the
operator's ``KubeClient`` thread pool: a watch holds its thread for minutes, and would otherwise take a
worker from the calls that write status. The threads never touch the cache: every change is
handed to the event loop (``call_soon_threadsafe``), which applies it and then calls
``on_change``, so a reader on the loop always sees a consistent cache and its callbacks run in
the order the API server sent the events.

The protocol is client-go's: LIST in pages (``limit`` + ``continue``), then WATCH from the list's
``resourceVersion`` with bookmarks, again from the last ``resourceVersion`` when a watch ends, and
a fresh LIST when the API server says that version is too old (410 Gone). Any other failure marks
the stream disconnected (a reader must not conclude anything from a cache that may be stale),
waits with a growing, jittered delay and lists again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import kubernetes
import urllib3

from .. import jsondepth
from .projection import Transform, as_is, trimmed

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
CONNECT_TIMEOUT = 5.0  # seconds to connect to the API server
LIST_READ_TIMEOUT = 60.0  # seconds to wait for (each part of) a list page
WATCH_SECONDS = (240, 300)  # a watch's timeoutSeconds, chosen at random so that watches do not end together
WATCH_READ_SLACK = 30  # seconds past timeoutSeconds before a silent watch counts as hung
BACKOFF_MAX = 30.0  # seconds: the longest wait before listing again after a failure
STOP_JOIN_TIMEOUT = 10.0  # seconds stop() waits for the threads (a connect in progress takes up to 5)

OnChange = Callable[[str, dict[str, Any]], None]


class _Expired(Exception):
    """The resourceVersion (or continue token) is too old: the API server answered 410 Gone."""


class _HttpError(Exception):
    """The API server refused a list or watch."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why one stream's part of the cache may not be relied on now."""
    message: str
    forbidden: bool = False  # RBAC refused the list or watch: a permission is missing, not the API server


@dataclasses.dataclass
class _Stream:
    """One list+watch: of one namespace, or of all namespaces (``namespace`` None)."""
    namespace: str | None
    synced: bool = False  # listed at least once
    connected: bool = False  # listed, and watching since (False from a failure until the next list)
    problem: Problem | None = None
    response: urllib3.response.BaseHTTPResponse | None = None  # the open request, closed by stop()
    thread: threading.Thread | None = None


def _version(obj: dict[str, Any]) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv is not None else None


def _older(candidate: str | None, held: str | None) -> bool:
    """Whether ``candidate`` is known to be an older version than ``held``. resourceVersions are opaque;
    the API server's are integers from etcd, so two integers are compared as such, anything else is not
    comparable (and not known to be older)."""
    if candidate is None or held is None:
        return False
    try:
        return int(candidate) < int(held)
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    """A failure in one short line: the innermost reason of a urllib3 error, not its whole retry chain."""
    if isinstance(exc, _HttpError | _Expired):
        return str(exc)
    reason: Any = exc
    while getattr(reason, "reason", None) is not None and isinstance(reason.reason, BaseException):
        reason = reason.reason
    text = str(reason) or type(reason).__name__
    return text.rpartition(": ")[2][:200] if "Failed to establish" in text else text[:200]


class Informer:
    """A cache of the ``resource`` objects below ``path`` (``"/api/v1"``, ``"/apis/apps/v1"``) in
    ``namespaces`` (None: in all namespaces, with one cluster-wide watch), optionally only those that
    match ``label_selector`` (selected by the API server)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, *, path: str, resource: str,
                 namespaces: Sequence[str] | None, label_selector: str | None = None,
                 on_change: OnChange | None = None, name: str = "", page_size: int = 500,
                 watch_seconds: tuple[int, int] = WATCH_SECONDS, backoff_max: float = BACKOFF_MAX,
                 transform: Transform | None = None, cached_form: Transform | None = None) -> None:
        self.api_client = api_client
        self.path = path.rstrip("/")
        self.resource = resource
        self.label_selector = label_selector
        self.on_change = on_change
        self.name = name or resource
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.backoff_max = backoff_max
        # What is kept of each object (client-go's SetTransform), applied in the watch's thread before the
        # object reaches the cache: by default all but metadata.managedFields.
        self.transform: Transform = transform or trimmed
        # What the cache itself holds of each (transformed) object, when ``on_change`` is its only reader and
        # keeps what it needs: get() and list() then answer with this. The object's metadata name, namespace,
        # uid and resourceVersion must stay (see :func:`names_and_versions`). By default, all of it.
        self.cached_form: Transform = cached_form or as_is
        scopes: list[str | None] = list(dict.fromkeys(namespaces)) if namespaces is not None else [None]
        self._streams = {scope: _Stream(scope) for scope in scopes}
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}  # namespace -> name -> object
        self._stats = {"lists": 0, "pages": 0, "watches": 0, "events": 0, "bookmarks": 0, "relists_gone": 0,
                       "errors": 0}
        self._stats_lock = threading.Lock()
        self._responses_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced: asyncio.Event | None = None

    # -- reading (on the event loop) --------------------------------------------------------------

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get(namespace, {}).get(name)

    def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace is not None:
            return list(self._objects.get(namespace, {}).values())
        return [obj for bucket in self._objects.values() for obj in bucket.values()]

    @property
    def synced(self) -> bool:
        """Every stream has listed at least once."""
        return all(s.synced for s in self._streams.values())

    @property
    def connected(self) -> bool:
        """Every stream is listed and watching (False from a failure until it has listed again)."""
        return all(s.connected for s in self._streams.values())

    def problem(self, namespace: str) -> Problem | None:
        """Why the cache of ``namespace`` may not be relied on now, or None when it may."""
        stream = self._streams.get(namespace) or self._streams.get(None)
        if stream is None:
            return Problem(f"{self.resource} in {namespace} are not watched (not one of the operator's namespaces)")
        if stream.connected:
            return None
        return stream.problem or Problem(f"{self.resource} in {self._where(stream.namespace)} are not listed yet")

    def remember(self, obj: dict[str, Any]) -> None:
        """Write through an object the operator itself just created or read, so that a reader sees it
        before the watch delivers it. Kept unless the cache already holds a newer version; a watch event
        older than it does not replace it."""
        obj = self.transform(obj)
        meta = obj.get("metadata") or {}
        bucket = self._objects.setdefault(str(meta.get("namespace") or ""), {})
        held = bucket.get(str(meta.get("name")))
        if held is None or not _older(_version(obj), _version(held)):
            bucket[str(meta.get("name"))] = self.cached_form(obj)

    def stats(self) -> dict[str, int]:
        """Lists (complete) and their pages, watches started, events received, bookmarks, relists after 410 Gone,
        failures, and the objects held."""
        with self._stats_lock:
            return {**self._stats, "objects": sum(len(b) for b in self._objects.values())}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start one thread per stream; returns at once (see :meth:`wait_synced`)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._synced = asyncio.Event()
        for stream in self._streams.values():
            stream.thread = threading.Thread(target=self._run, args=(stream,), daemon=True,
                                             name=f"informer-{self.name}-{stream.namespace or 'all'}")
            stream.thread.start()

    # The timeout is part of the contract (answer False after it): not a cancel scope for the caller.
    async def wait_synced(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every stream has listed once; False if that did not happen within ``timeout``."""
        if self._synced is None:
            raise RuntimeError(f"informer {self.name} was not started")
        try:
            async with asyncio.timeout(timeout):  # not wait_for (docs/architecture.md)
                await self._synced.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """End every thread: a request in progress is shut down, so a thread blocked reading a watch
        returns at once."""
        self._stopping.set()
        with self._responses_lock:
            for stream in self._streams.values():
                if stream.response is not None:
                    with contextlib.suppress(Exception):
                        stream.response.shutdown()
        threads = [s.thread for s in self._streams.values() if s.thread is not None]
        await asyncio.to_thread(self._join, threads)

    @staticmethod
    def _join(threads: builtins.list[threading.Thread]) -> None:
        deadline = time.monotonic() + STOP_JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("informer thread %s did not stop within %.0fs (it is a daemon thread and ends with "
                            "the process)", thread.name, STOP_JOIN_TIMEOUT)

    @property
    def threads_alive(self) -> int:
        return sum(1 for s in self._streams.values() if s.thread is not None and s.thread.is_alive())

    # -- the stream threads --------------------------------------------------------------------------

    def _run(self, stream: _Stream) -> None:
        failures = 0
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    items, version = self._list(stream)
                    self._post(self._replace, stream, items, version)
                    failures = 0
                version = self._watch(stream, version)
            except _Expired as exc:
                self._count("relists_gone")
                log.info("%s in %s: %s; listing them again", self.resource, self._where(stream.namespace), exc)
                version = None
            except _LoopClosed:
                return
            except Exception as exc:  # noqa: BLE001 - any failure: disconnected, listed again after a delay
                if self._stopping.is_set():
                    return
                version = None
                failures += 1
                self._count("errors")
                delay = min(self.backoff_max, 2.0 ** (failures - 1)) * random.uniform(0.8, 1.2)
                problem = self._problem_of(stream, exc, delay)
                try:
                    self._post(self._disconnect, stream, problem)
                except _LoopClosed:
                    return
                self._stopping.wait(delay)

    def _problem_of(self, stream: _Stream, exc: Exception, delay: float) -> Problem:
        where = self._where(stream.namespace)
        if isinstance(exc, _HttpError) and exc.status == 403:
            role = "ClusterRole" if stream.namespace is None else "Role or ClusterRole"
            message = (f"the operator may not list or watch {self.resource} in {where} ({exc}); grant the verbs "
                       f"list and watch on {self.resource} in its {role} (deploy/base/rbac)")
            if stream.problem is None or stream.problem.message != message:
                log.error("%s; trying again in %.0fs", message, delay)
            return Problem(message, forbidden=True)
        message = f"the watch of {self.resource} in {where} failed: {_describe(exc)}"
        if stream.problem is None or stream.problem.message != message:
            log.warning("%s; listing them again in %.1fs", message, delay)
        else:
            log.debug("%s; listing them again in %.1fs", message, delay)
        return Problem(message)

    def _list(self, stream: _Stream) -> tuple[builtins.list[dict[str, Any]], str]:
        items: builtins.list[dict[str, Any]] = []
        token: str | None = None
        version = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self.page_size)]
            if token:
                query.append(("continue", token))
            with self._open(stream, query, LIST_READ_TIMEOUT) as response:
                page = jsondepth.decode_objects(response.read())
            self._count("pages")
            items.extend(self.transform(o) for o in page.get("items") or [])
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue")
            if not token:
                break
        self._count("lists")
        return items, version

    def _watch(self, stream: _Stream, version: str) -> str:
        """Follow one watch until the API server ends it; returns the last resourceVersion seen."""
        seconds = random.randint(*self.watch_seconds)
        query: list[tuple[str, Any]] = [("watch", "true"), ("resourceVersion", version),
                                        ("allowWatchBookmarks", "true"), ("timeoutSeconds", seconds)]
        with self._open(stream, query, seconds + WATCH_READ_SLACK) as response:
            self._count("watches")
            for line in _lines(response):
                event = jsondepth.decode_objects(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired(str(obj.get("message") or "resourceVersion too old"))
                    raise _HttpError(int(obj.get("code") or 500), str(obj.get("message") or obj))
                version = _version(obj) or version
                if kind == "BOOKMARK":
                    self._count("bookmarks")
                elif kind in (ADDED, MODIFIED, DELETED):
                    self._count("events")
                    self._post(self._apply, kind, self.transform(obj))
        return version

    @contextlib.contextmanager
    def _open(self, stream: _Stream, query: builtins.list[tuple[str, Any]],
              read_timeout: float) -> Iterator[urllib3.response.BaseHTTPResponse]:
        """A GET of the collection, its body not read yet; shut down by :meth:`stop` while open."""
        if self.label_selector:
            query = [*query, ("labelSelector", self.label_selector)]
        where = f"/namespaces/{quote(stream.namespace, safe='')}" if stream.namespace is not None else ""
        method, url, headers, _, _ = self.api_client.param_serialize(
            "GET", f"{self.path}{where}/{self.resource}", query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        response = self.api_client.call_api(method, url, header_params=headers,
                                            _request_timeout=(CONNECT_TIMEOUT, read_timeout)).response
        if not 200 <= response.status < 300:
            body = response.read()
            response.release_conn()
            try:
                message = str(json.loads(body).get("message") or response.reason)
            except (ValueError, AttributeError):
                message = str(response.reason)
            if response.status == 410:
                raise _Expired(message)
            raise _HttpError(response.status, message)
        with self._responses_lock:
            stream.response = response
        if self._stopping.is_set():
            response.shutdown()
        finished = False
        try:
            yield response
            finished = True
        finally:
            with self._responses_lock:
                stream.response = None
            if finished:
                response.release_conn()
            else:
                response.close()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError as exc:  # the loop is closed: nobody reads the cache any more
            self._stopping.set()
            raise _LoopClosed() from exc

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self._stats[what] += 1

    def _where(self, namespace: str | None) -> str:
        return namespace if namespace is not None else "all namespaces"

    # -- applying changes (on the event loop) --------------------------------------------------------

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
        bucket = self._objects.setdefault(namespace, {})
        held = bucket.get(name)
        if held is not None and _older(_version(obj), _version(held)):
            return  # the cache holds a newer version (written through by remember())
        if kind == DELETED:
            if held is None:
                return
            del bucket[name]
        else:
            bucket[name] = self.cached_form(obj)
            if held is not None and _version(held) == _version(obj):
                return  # the version remember() wrote through: nothing changed
        self._notify(kind, obj)

    def _replace(self, stream: _Stream, items: builtins.list[dict[str, Any]], version: str) -> None:
        """A complete list of the stream's objects: what vanished is DELETED, what is new ADDED, what
        changed MODIFIED. An object remembered after the list's snapshot is kept (its events follow)."""
        listed = {(str(o["metadata"].get("namespace") or ""), str(o["metadata"]["name"])): o for o in items}
        scope = [stream.namespace] if stream.namespace is not None else list(self._objects)
        for namespace in scope:
            bucket = self._objects.get(namespace, {})
            for name, held in list(bucket.items()):
                if (namespace, name) not in listed and not _older(version, _version(held)):
                    del bucket[name]
                    self._notify(DELETED, held)
        for (namespace, name), obj in listed.items():
            bucket = self._objects.setdefault(namespace, {})
            current = bucket.get(name)
            if current is None:
                bucket[name] = self.cached_form(obj)
                self._notify(ADDED, obj)
            elif _version(current) != _version(obj) and not _older(_version(obj), _version(current)):
                bucket[name] = self.cached_form(obj)
                self._notify(MODIFIED, obj)
        if stream.problem is not None and stream.synced:
            log.info("%s in %s are listed and watched again", self.resource, self._where(stream.namespace))
        stream.synced = stream.connected = True
        stream.problem = None
        if self._synced is not None and self.synced:
            self._synced.set()

    def _disconnect(self, stream: _Stream, problem: Problem) -> None:
        stream.connected = False
        stream.problem = problem

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, obj)
        except Exception:  # noqa: BLE001 - a failing callback must not stop the cache
            log.exception("the %s informer's change callback failed", self.name)


class _LoopClosed(Exception):
    """The event loop the cache lives on is closed: the thread ends."""


def _lines(response: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
    """The newline-separated JSON documents of a watch, as they arrive."""
    pending = b""
    for chunk in response.stream(None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            if line.strip():
                yield line
    if pending.strip():
        yield pending
