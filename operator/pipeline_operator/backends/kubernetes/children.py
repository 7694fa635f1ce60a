"""The pipelines' children as the backend sees and writes them: the watches of each kind (one cache per
kind, over the operator's namespaces), the API calls that create, patch, replace and delete a child (deletes
fenced by uid), and what every part of the backend reads from the caches (a pipeline's claim and pod, its
control token)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ...identity import PipelineKey
from ...kube.client import Forbidden, KubeClient, Unavailable
from ...kube.informer import Informer
from .objects import KIND_NAMES, TOKEN_KEY, KubernetesOptions, child_name, token_secret_name
from .owned import _controller_of, _Owned, _pipeline_of, cached

log = logging.getLogger(__name__)


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


class Invalid(Exception):
    """The API server refused an object the operator built from a spec (422)."""


MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=pipeline-operator"
SYNC_TIMEOUT = 30.0  # seconds start() waits for the first lists; later passes wait for them no more than that
# The children the backend watches instead of reading them: kind -> (API path, resource).
WATCHED = {"statefulset": ("/apis/apps/v1", "statefulsets"),
           "service": ("/api/v1", "services"),
           "configmap": ("/api/v1", "configmaps"),
           "pvc": ("/api/v1", "persistentvolumeclaims"),
           "secret": ("/api/v1", "secrets"),
           "networkpolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
           "pod": ("/api/v1", "pods")}
COMPUTE_KINDS = ("statefulset", "service", "configmap", "secret", "networkpolicy", "pod", "pvc")


class ChildObjects:
    """The caches of the pipelines' children and the API calls on them, shared by every part of the
    backend (:class:`KubernetesBackend` is made of its parts)."""

    def __init__(self, kube: KubeClient, options: KubernetesOptions, namespaces: Sequence[str] | None = None,
                 on_child_change: Callable[[str], None] | None = None,
                 on_restored: Callable[[PipelineKey, str], None] | None = None) -> None:
        self.kube = kube
        self.options = options
        self.on_child_change = on_child_change
        self.on_restored = on_restored
        self._clients = {"apps": kube.apps, "core": kube.core,
                         "networking": kubernetes.client.NetworkingV1Api(kube.api_client)}
        # The watches get a client of their own (the same Configuration), not KubeClient's threads: a watch
        # holds its connection and thread for minutes. One connection per watch, and one to spare.
        configuration = copy.deepcopy(kube.api_client.configuration)
        streams = len(WATCHED) * (len(namespaces) if namespaces is not None else 1)
        configuration.connection_pool_maxsize = streams + 1
        self._watch_client = kubernetes.client.ApiClient(configuration)
        self._informers = {kind: Informer(self._watch_client, path=path, resource=resource, namespaces=namespaces,
                                          label_selector=MANAGED_BY_SELECTOR, on_change=self._child_changed,
                                          name=resource, transform=cached(kind))
                           for kind, (path, resource) in WATCHED.items()}
        self._starting: asyncio.Future[None] | None = None
        self._calls = {"reads": 0, "creates": 0, "deletes": 0, "patches": 0, "replaces": 0, "restored": 0}
        self._problems: dict[str, str] = {}  # pipeline uid -> why a child could not be adopted or created
        self._tokens: dict[str, str] = {}  # pipeline uid -> its control token (the Secret's)
        self._token_read: set[str] = set()  # pipeline uids whose Secret was read since their last provisioning
        # What endpoint() answered: pipeline uid -> endpoint, and endpoint -> the pipeline it was answered for.
        self._endpoints: dict[str, str] = {}
        self._endpoint_keys: dict[str, PipelineKey] = {}
        # Pipelines whose provisioning began here and has not got as far as its StatefulSet (a create was
        # refused, the API server went away): their other children are not a StatefulSet deleted by someone.
        self._unfinished: set[str] = set()
        # pipeline uid -> watched kinds whose deletion the backend asked for: the cache shows such a child
        # until the watch delivers its deletion, and it is terminating, not "deleted outside the operator".
        self._deleted: dict[str, set[str]] = {}
        self._owned: dict[str, _Owned] = {}  # pipeline uid -> what its children must be (see _Owned)
        # pipeline uid -> the program binary its pod runs ({"path", "sha256"}), served to that pod only.
        self._binaries: dict[str, dict[str, Any]] = {}

    # -- the caches ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the pipelines' children and wait until they are listed (up to
        :data:`SYNC_TIMEOUT`; a pass that needs a cache not listed yet fails as the API server's
        unavailability does, and is tried again). Every caller waits for the same start."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        for informer in self._informers.values():
            await informer.start()
        synced = await asyncio.gather(*(i.wait_synced(SYNC_TIMEOUT) for i in self._informers.values()))
        if not all(synced):
            late = [i.name for i, ok in zip(self._informers.values(), synced, strict=True) if not ok]
            log.warning("the pipelines' %s are not listed after %.0fs; their pipelines are looked at once they are",
                        ", ".join(late), SYNC_TIMEOUT)

    async def _cached(self, namespace: str, *kinds: str) -> None:
        """The caches of ``kinds`` may be relied on in ``namespace``: else nothing may be concluded."""
        await self.start()
        for kind in kinds:
            problem = self._informers[kind].problem(namespace)
            if problem is None:
                continue
            if problem.forbidden:
                raise Forbidden(problem.message)
            raise Unavailable(f"the Kubernetes API server is unreachable or has not answered yet, so the "
                              f"operator's view of the pipelines' {WATCHED[kind][1]} may be stale ({problem.message})")

    def _child_changed(self, kind: str, obj: dict[str, Any]) -> None:
        uid = _pipeline_of(obj)
        if uid and self.on_child_change is not None:
            self.on_child_change(uid)

    def _cache(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._informers[kind].get(namespace, name)

    def stats(self) -> dict[str, Any]:
        """The API calls the backend made itself (``reads`` are GETs: a monitoring pass makes none),
        and each cache's figures."""
        return {**self._calls, "informers": {i.name: i.stats() for i in self._informers.values()}}

    # -- API calls ---------------------------------------------------------------------------

    # kind -> (client, method suffix, resource name in RBAC)
    _KINDS = {"statefulset": ("apps", "stateful_set", "statefulsets"),
              "service": ("core", "service", "services"),
              "configmap": ("core", "config_map", "configmaps"),
              "pvc": ("core", "persistent_volume_claim", "persistentvolumeclaims"),
              "secret": ("core", "secret", "secrets"),
              "networkpolicy": ("networking", "network_policy", "networkpolicies")}

    def _method(self, verb: str, kind: str) -> tuple[Any, str]:
        client, suffix, resource = self._KINDS[kind]
        return getattr(self._clients[client], f"{verb}_namespaced_{suffix}"), resource

    def _json(self, obj: Any) -> dict[str, Any]:
        """A client model object as the API server's JSON (what the caches hold)."""
        return dict(self.kube.api_client.sanitize_for_serialization(obj))

    async def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read, resource = self._method("read", kind)
        self._calls["reads"] += 1
        try:
            return self._json(await self.kube.call(read, name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not get {resource} in {namespace}") from exc
            raise

    async def _write(self, verb: str, kind: str, body: dict[str, Any], gone: tuple[int, ...]) -> dict[str, Any] | None:
        """``<verb>_namespaced_<kind>`` of ``body``: the object the API server answers, or None for a status in
        ``gone``; :class:`Forbidden` (403), :class:`Invalid` (422)."""
        call, resource = self._method(verb, kind)
        meta = body["metadata"]
        namespace = meta["namespace"]
        args = (namespace, body) if verb == "create" else (meta["name"], namespace, body)
        self._calls[f"{verb}s"] += 1
        try:
            return self._json(await self.kube.call(call, *args, field_manager=self.kube.field_manager))
        except ApiException as exc:
            if exc.status in gone:
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not {'update' if verb == 'replace' else verb} {resource} "
                                f"in {namespace}") from exc
            if exc.status == 422:
                raise Invalid(_reason(exc)) from exc
            raise

    async def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The created object; None if one of that name exists already (the caller checks that it is ours)."""
        return await self._write("create", kind, body, gone=(409,))

    async def _delete(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Delete ``name`` if it is still the object ``uid`` (the one the operator verified as its own): the
        API server refuses the delete of a same-named object someone made in its place (409). Whether it is
        deleted or gone."""
        delete, resource = self._method("delete", kind)
        self._calls["deletes"] += 1
        options = kubernetes.client.V1DeleteOptions(propagation_policy="Background",
                                                    preconditions=kubernetes.client.V1Preconditions(uid=uid))
        try:
            await self.kube.call(delete, name, namespace, body=options)
        except ApiException as exc:
            if exc.status == 404:
                return True
            if exc.status == 409:
                log.warning("%s %s/%s was not deleted: it is no longer the object the operator verified as its own "
                            "(uid %s): %s", KIND_NAMES.get(kind, kind), namespace, name, uid, _reason(exc))
                return False
            if exc.status == 403:
                raise Forbidden(f"the operator may not delete {resource} in {namespace}") from exc
            raise
        return True

    async def _replace(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A PUT of ``body`` (guarded by its ``resourceVersion``); the object after it, or None when it is gone or
        changed meanwhile (the next pass looks again). :class:`Invalid` if the API server refuses it (422: an
        immutable field)."""
        return await self._write("replace", kind, body, gone=(404, 409))

    async def _patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch (guarded by the ``resourceVersion`` the body names, if any); the object after
        it, or None when it is gone or changed meanwhile (the next pass looks again)."""
        patch, resource = self._method("patch", kind)
        self._calls["patches"] += 1
        try:
            return self._json(await self.kube.call(patch, name, namespace, body, field_manager=self.kube.field_manager,
                                                   _content_type="application/merge-patch+json"))
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            if exc.status == 403:
                raise Forbidden(f"the operator may not patch {resource} in {namespace}") from exc
            raise

    @staticmethod
    def _ours(obj: dict[str, Any] | None, key: PipelineKey) -> bool:
        """Labelled with the Pipeline's uid AND controlled by it (a label alone proves nothing)."""
        return obj is not None and _pipeline_of(obj) == key.uid and _controller_of(obj) == key.uid

    async def _remember_token(self, key: PipelineKey, secret: dict[str, Any] | None = None) -> bool:
        """Learn the pipeline's control token from its Secret (read it unless given); whether it was."""
        if secret is None:
            secret = await self._read("secret", key.namespace, token_secret_name(key))
            self._token_read.add(key.uid)
        if secret is None or not self._ours(secret, key):
            return False
        encoded = (secret.get("data") or {}).get(TOKEN_KEY)
        try:
            token = base64.b64decode(encoded).decode() if encoded else ""
        except (ValueError, UnicodeDecodeError):
            token = ""
        if token:
            self._tokens[key.uid] = token
        return bool(token)

    # -- a pipeline's claim and pod, from the caches -------------------------------------------

    def _claim(self, key: PipelineKey) -> dict[str, Any] | None:
        """The pipeline's PersistentVolumeClaim from the cache: ``<child name>-storage``, or the claim it
        adopted (another name, labelled with its uid)."""
        claim = self._cache("pvc", key.namespace, f"{child_name(key)}-storage")
        if claim is not None:
            return claim
        for candidate in self._informers["pvc"].list(key.namespace):
            if _pipeline_of(candidate) == key.uid:
                return candidate
        return None

    def _claim_name(self, key: PipelineKey) -> str:
        claim = self._claim(key)
        return str(claim["metadata"]["name"]) if claim is not None else f"{child_name(key)}-storage"

    def _pod(self, key: PipelineKey) -> dict[str, Any] | None:
        """The pipeline's pod from the cache, if it is the one its StatefulSet (the operator's own, by uid)
        controls: a pod of that name made by anyone else is not it."""
        name = child_name(key)
        sts, pod = self._cache("statefulset", key.namespace, name), self._cache("pod", key.namespace, f"{name}-0")
        if sts is None or pod is None or not self._ours(sts, key):
            return None
        if _pipeline_of(pod) != key.uid or _controller_of(pod) != sts["metadata"].get("uid"):
            return None
        return pod
