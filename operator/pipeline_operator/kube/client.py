"""The operator's own calls to the Kubernetes API (Kopf does the watching).

The official ``kubernetes`` client is blocking, so every call runs in a dedicated thread pool
and never on the asyncio loop. Status writes are JSON patches guarded by a ``test`` of
``metadata.resourceVersion``: a write based on a stale object fails instead of overwriting.

A :class:`KubeClient` can be fenced (its replica lost the leadership): no call is sent after that, and no
write is ever sent twice. urllib3, under the client, tries a request again when its answer did not
come or said to try later (up to three times, PUT and DELETE among them, each after a whole request
timeout or the answer's Retry-After), which could send a leader's write well after its fence; here
urllib3 tries again only reads, and only while the ``KubeClient`` is not fenced (:class:`_Retries`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from .. import jsondepth
from ..models import API_GROUP, API_VERSION, PLURAL

log = logging.getLogger(__name__)


class Conflict(Exception):
    """The object changed since it was read; read it again and decide again."""


class Gone(Exception):
    """The object no longer exists (its deletion reaches the watch shortly)."""


class Forbidden(Exception):
    """RBAC refused a call; the message names the verb and resource."""


class Unavailable(ConnectionError):
    """The API server could not be reached or did not answer in time (an outage, a restart):
    nothing is known about the objects, so nothing may be concluded; try again later."""


class Fenced(Unavailable):
    """This operator lost its leadership: it makes no call any more (another replica leads)."""


REQUEST_TIMEOUT = (5.0, 30.0)  # seconds to connect, and to wait for an answer: a hung API server fails the call
_READS = frozenset({"GET", "HEAD"})


class _Retries(urllib3.util.Retry):
    """urllib3's retries (its default: three) for a read; none for a write (whatever failed, the API server
    may have the request: sent again, it could leave after the fence, when another replica leads), and
    none for anything once ``fenced()`` says so. Nor is a redirect followed for a write."""

    def __init__(self, *args: Any, fenced: Callable[[], bool] = lambda: False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fenced = fenced

    def new(self, **kw: Any) -> _Retries:
        return super().new(fenced=self.fenced, **kw)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        """An answer asking to try again later (429 or 503 with Retry-After) is the answer, for a write."""
        return method.upper() in _READS and not self.fenced() and super().is_retry(method, status_code,
                                                                                   has_retry_after)

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: TracebackType | None = None) -> Any:
        if (method or "").upper() not in _READS or self.fenced():
            if error is not None:
                raise error.with_traceback(_stacktrace)
            raise urllib3.exceptions.MaxRetryError(_pool, url or "", urllib3.exceptions.ResponseError(
                "not followed: a write is sent once, and nothing after the fence"))
        return super().increment(method, url, response, error, _pool, _stacktrace)


def load_config() -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return configuration


_JSON_CONTENT = re.compile(r"^application/(json|[\w!#$&.+\-^_]+\+json)\s*(;|$)", re.IGNORECASE)


class ApiClient(kubernetes.client.ApiClient):
    """The ``kubernetes`` client, decoding the API server's JSON answers with
    :func:`jsondepth.decode_objects`: a Pipeline nested deeper than Python's decoder goes comes back
    marked (:func:`jsondepth.undecodable`) instead of failing the call with a RecursionError."""

    def deserialize(self, response_text: str, response_type: str, content_type: str | None) -> Any:
        if response_text and (content_type is None or _JSON_CONTENT.match(content_type)):
            try:
                data = jsondepth.decode_objects(response_text)
            except ValueError:
                if content_type is not None:
                    raise
                data = response_text
            return getattr(self, "_ApiClient__deserialize")(data, response_type)  # noqa: B009 (the client's own step)
        return super().deserialize(response_text, response_type, content_type)


class KubeClient:
    def __init__(self, configuration: kubernetes.client.Configuration | None = None,
                 field_manager: str = "pipeline-operator", workers: int = 16) -> None:
        self.api_client: Any = ApiClient(configuration or load_config())
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.apps = kubernetes.client.AppsV1Api(self.api_client)
        self.auth = kubernetes.client.AuthenticationV1Api(self.api_client)
        self.authz = kubernetes.client.AuthorizationV1Api(self.api_client)
        self.field_manager = field_manager
        self.fenced: str | None = None
        # Every connection pool of this client takes its retries from here (pools are made on first use).
        self.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = _Retries(
            3, fenced=lambda: self.fenced is not None)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    def fence(self, reason: str) -> None:
        """From now on every call fails with :class:`Fenced` before it is sent (leadership lost)."""
        self.fenced = reason

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one blocking client call in the operator's Kubernetes thread pool, with a timeout
        (a worker thread never waits forever); an unreachable API server is :class:`Unavailable`."""
        if self.fenced is not None:
            raise Fenced(f"no call to the Kubernetes API: {self.fenced}")
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        loop = asyncio.get_running_loop()

        def send() -> Any:  # checked again in the worker: a call queued before the fence is not sent either
            if self.fenced is not None:
                raise Fenced(f"no call to the Kubernetes API: {self.fenced}")
            return fn(*args, **kwargs)

        try:
            return await loop.run_in_executor(self._pool, send)
        except urllib3.exceptions.HTTPError as exc:  # connection refused or reset, timeouts, retries used up
            raise Unavailable(f"the Kubernetes API server is unreachable ({_cause(exc)})") from exc

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.api_client.close)

    async def get_pipeline(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], await self.call(self.custom.get_namespaced_custom_object, API_GROUP,
                                                        API_VERSION, namespace, PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, "get", "pipelines") from exc

    async def write_status(self, namespace: str, name: str, resource_version: str,
                           status: dict[str, Any]) -> dict[str, Any]:
        """Replace ``status`` if the object is still at ``resource_version``; returns the new object."""
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                 {"op": "add", "path": "/status", "value": status}]
        try:
            return cast(dict[str, Any], await self.call(
                self.custom.patch_namespaced_custom_object_status, API_GROUP, API_VERSION,
                namespace, PLURAL, name, patch, field_manager=self.field_manager,
                _content_type="application/json-patch+json"))
        except ApiException as exc:
            if exc.status == 409 or (exc.status == 422 and _is_failed_test(exc)):
                raise Conflict(f"{namespace}/{name} changed since resourceVersion {resource_version}") from exc
            if exc.status == 404:
                raise Gone(f"{namespace}/{name} is gone") from exc
            raise _translate(exc, "patch", "pipelines/status") from exc


    async def merge_patch_pipeline(self, namespace: str, name: str, body: dict[str, Any],
                                   field_manager: str) -> dict[str, Any] | None:
        """A JSON merge patch of a Pipeline (None if it does not exist)."""
        try:
            return cast(dict[str, Any] | None, await self.call(
                self.custom.patch_namespaced_custom_object, API_GROUP, API_VERSION, namespace,
                PLURAL, name, body, field_manager=field_manager,
                _content_type="application/merge-patch+json"))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, "patch", "pipelines") from exc

    async def apply_pipeline(self, namespace: str, name: str, body: dict[str, Any],
                             field_manager: str) -> dict[str, Any]:
        """Server-side apply of a Pipeline as ``field_manager`` (never forced: a field another
        manager owns with another value raises :class:`FieldConflict`)."""
        try:
            applied: dict[str, Any] | None = await self.call(
                self.custom.patch_namespaced_custom_object, API_GROUP, API_VERSION, namespace,
                PLURAL, name, body, field_manager=field_manager,
                _content_type="application/apply-patch+yaml")
        except ApiException as exc:
            if exc.status == 409:
                raise FieldConflict(_conflicts(exc)) from exc
            if exc.status in (400, 404, 422):
                raise Rejected(exc.status, _message(exc)) from exc
            raise _translate(exc, "apply", "pipelines") from exc
        if applied is None:  # the client decodes no body for 201 Created
            applied = await self.get_pipeline(namespace, name)
        if applied is None:
            raise Conflict(f"{namespace}/{name} was deleted right after it was applied")
        return applied

    async def delete_pipeline(self, namespace: str, name: str) -> bool:
        """Delete a Pipeline; False if it did not exist."""
        try:
            await self.call(self.custom.delete_namespaced_custom_object, API_GROUP, API_VERSION, namespace,
                            PLURAL, name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _translate(exc, "delete", "pipelines") from exc


class Rejected(Exception):
    """The API server refused a write as invalid (400, 422) or its namespace as unknown (404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)[:2000]
    except ValueError:
        return str(exc.reason)


class FieldConflict(Exception):
    """Server-side apply found fields that other field managers own: (field, manager) pairs."""

    def __init__(self, conflicts: list[tuple[str, str]]) -> None:
        super().__init__(", ".join(f"{f} (owned by {m})" for f, m in conflicts))
        self.conflicts = conflicts


_MANAGER_RE = re.compile(r'conflict with "([^"]+)"')


def _conflicts(exc: ApiException) -> list[tuple[str, str]]:
    """The (field, manager) pairs of a 409 from server-side apply."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return [("?", "another field manager")]
    found = []
    for cause in (body.get("details") or {}).get("causes") or []:
        match = _MANAGER_RE.search(cause.get("message") or "")
        found.append((cause.get("field") or "?", match.group(1) if match else "another field manager"))
    return found or [("?", "another field manager")]


def _is_failed_test(exc: ApiException) -> bool:
    """A failed JSON-patch ``test`` is a 422 without field causes (a schema error names fields)."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return False
    return not (body.get("details") or {}).get("causes")


def _cause(exc: BaseException) -> str:
    """The innermost reason of a urllib3 failure, short (not the whole retry chain)."""
    reason: Any = getattr(exc, "reason", None)
    while isinstance(reason, BaseException) and getattr(reason, "reason", None) is not None:
        reason = getattr(reason, "reason", None)
    text = str(reason if reason is not None else exc)
    return text.rpartition(": ")[2][:200] if "Failed to establish" in text else text[:200]


def _translate(exc: ApiException, verb: str, resource: str) -> Exception:
    if exc.status == 403:
        return Forbidden(f"the operator may not {verb} {resource}: {exc.reason}")
    if exc.status in (502, 503, 504):  # e.g. an API server still starting ("not all HTTP paths installed")
        return Unavailable(f"the Kubernetes API server is unavailable ({exc.status} {exc.reason})")
    return exc
