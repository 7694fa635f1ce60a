"""The Kubernetes backend itself (:class:`KubernetesBackend`, the ``Backend`` protocol): provisioning and
deprovisioning a pipeline's compute, its storage (cleared, retained from a deleted Pipeline and adopted), where
it answers and with which control token, and the program binary served to its pod."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from ...feldera.launch import CONFIG_JSON, deployment_id_of
from ...identity import PipelineKey
from ...kube.client import KubeClient, Unavailable
from ...models import BootstrapPolicy, PipelineSpec, RuntimeDesiredStatus
from ...settings import OperatorSettings
from .children import Invalid
from .logs import PodLogs
from .objects import (
    NO_DEPLOYMENT,
    PORT,
    RETAINED_LABEL,
    UID_LABEL,
    KubernetesOptions,
    build_objects,
    child_name,
    image_allowed,
    labels,
    owner,
    retained_from,
    token_secret,
    token_secret_name,
)
from .observation import ComputeObserver
from .owned import OWNED_KEY, OWNERS_KEY, RETAINED_KEY, _binary_of, _deleting, _Owned, owned_digest

log = logging.getLogger(__name__)


class KubernetesBackend(ComputeObserver, PodLogs):
    """A monitoring pass reads the pipeline's children from caches (one :class:`Informer` per kind,
    over the operator's namespaces, of the objects labelled as the operator's), so it makes no API
    call; the API server pushes what changes, and ``on_child_change(uid)`` says whose child it was.

    The Secrets' cache keeps no token (only who owns each Secret and a digest of its owned part): the
    token is read from the Secret when provisioning or after a restart, and kept in memory for as long as
    the compute lives. ``on_restored(key, message)`` is told of each child put back.
    """

    @classmethod
    def from_settings(cls, kube: KubeClient, settings: OperatorSettings,
                      on_child_change: Callable[[str], None] | None = None,
                      on_restored: Callable[[PipelineKey, str], None] | None = None) -> KubernetesBackend:
        namespaces = None if settings.all_namespaces else settings.namespaces
        return cls(kube, KubernetesOptions.from_settings(settings), namespaces, on_child_change, on_restored)

    # -- storage retained from a deleted Pipeline ------------------------------------------------

    def _retained(self, key: PipelineKey) -> dict[str, Any] | None:
        """A claim retained from a deleted Pipeline of this name in this namespace, owned by nobody; the newest
        if several were (a name re-created and deleted more than once with Retain)."""
        value = retained_from(key.name)
        found = [c for c in self._informers["pvc"].list(key.namespace)
                 if c.get(RETAINED_KEY) == value and not c.get(OWNERS_KEY) and not _deleting(c)]
        return max(found, key=lambda c: c["metadata"].get("creationTimestamp") or "", default=None)

    async def _adopt_retained(self, key: PipelineKey) -> str | None:
        """The name of the retained claim this pipeline now owns (its controller reference and uid label set,
        the retained label removed), or None when there is none to adopt."""
        retained = self._retained(key)
        if retained is None:
            return None
        meta = retained["metadata"]
        adopted = await self._patch("pvc", key.namespace, meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"], "ownerReferences": [owner(key)],
            "labels": {**labels(key), RETAINED_LABEL: None}, "annotations": {RETAINED_LABEL: None}}})
        if adopted is None:  # changed or deleted meanwhile: never a fresh claim beside it, look again
            raise Unavailable(f"PersistentVolumeClaim {key.namespace}/{meta['name']} changed while it was being "
                              "adopted; trying again")
        self._informers["pvc"].remember(adopted)
        log.info("%s: adopted PersistentVolumeClaim %s/%s retained from a deleted Pipeline of the same name",
                 key, key.namespace, meta["name"])
        return str(meta["name"])

    async def retain_storage(self, key: PipelineKey) -> None:
        """Release the claim: its owner reference removed (so garbage collection leaves it), the uid label
        replaced by :data:`RETAINED_LABEL` (the Pipeline's name, in full in an annotation of the same key).
        The other labels stay, so the claim stays in the operator's cache, where the next Pipeline looks."""
        await self._cached(key.namespace, "pvc")
        claim = self._claim(key)
        if claim is None or not self._ours(claim, key) or _deleting(claim):
            return
        # Read: the cache keeps no owner references, and those of others stay.
        claim = await self._read("pvc", key.namespace, claim["metadata"]["name"])
        if claim is None or not self._ours(claim, key) or _deleting(claim):
            return
        meta = claim["metadata"]
        released = await self._patch("pvc", key.namespace, meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"],
            "ownerReferences": [r for r in meta.get("ownerReferences") or [] if r.get("uid") != key.uid] or None,
            "labels": {UID_LABEL: None, RETAINED_LABEL: retained_from(key.name)},
            "annotations": {RETAINED_LABEL: key.name}}})
        if released is None:
            raise Unavailable(f"PersistentVolumeClaim {key.namespace}/{meta['name']} changed while it was being "
                              "released; trying again")
        self._informers["pvc"].remember(released)
        log.info("%s: PersistentVolumeClaim %s/%s retained (label %s=%s) for the next Pipeline of this name", key,
                 key.namespace, meta["name"], RETAINED_LABEL, retained_from(key.name))

    # -- the Backend protocol ------------------------------------------------------------------

    def _fail(self, key: PipelineKey, message: str) -> None:
        self._problems[key.uid] = message
        log.warning("%s: %s", key, message)

    async def provision(self, key: PipelineKey, spec: PipelineSpec, artifact: dict[str, Any],
                        initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy,
                        silent_bootstrap: bool = False, deployment_id: str | None = None) -> None:
        self._deleted.pop(key.uid, None)
        self._token_read.discard(key.uid)
        image = spec.deployment.image
        if image is not None and not image_allowed(image, self.options.image_prefixes):
            self._fail(key, (f"spec.deployment.image {image!r} is not allowed: the operator runs only images "
                             f"starting with {', '.join(self.options.image_prefixes)}; use such an image, or "
                             "have the operator's administrator allow it (flag --pipeline-image-prefix, "
                             "chart value pipelines.imagePrefixes)"))
            return
        ns = key.namespace
        await self._cached(ns, "pvc", "secret", "configmap", "service", "networkpolicy", "statefulset")
        self._unfinished.add(key.uid)
        claim = self._claim(key)
        claim_name = claim["metadata"]["name"] if claim is not None else await self._adopt_retained(key)
        def built(deployment_id: str) -> dict[str, dict[str, Any]]:
            return build_objects(key, spec, artifact, initial, self.options, bootstrap_policy, claim_name,
                                 silent_bootstrap, deployment_id)

        recorded = deployment_id  # the start's, as its status records it; else derived from its token below
        deployment_id = recorded or NO_DEPLOYMENT
        objects = built(deployment_id)
        objects["secret"] = token_secret(key, self._tokens.get(key.uid))
        digests: dict[str, int] = {}
        # Storage first (it outlives compute), then the token, the program, the Service, the
        # NetworkPolicy (before the pod can serve) and the StatefulSet.
        for kind in ("pvc", "secret", "configmap", "service", "networkpolicy", "statefulset"):
            body = objects.get(kind)
            if body is None:
                continue
            name = body["metadata"]["name"]
            existing = self._cache(kind, ns, name)
            if kind == "secret" and existing is not None and key.uid not in self._tokens:
                existing = await self._read(kind, ns, name)  # the cache keeps no token: learn it
            fetched = existing is None
            if existing is None:
                try:
                    existing = await self._create(kind, body)
                except Invalid as exc:
                    what = ("spec.deployment.allowIngressFrom" if kind == "networkpolicy"
                            else "spec.deployment or spec.runtimeConfig.resources")
                    self._fail(key, f"the API server refused {body['kind']} {ns}/{name}: {exc}; correct {what}")
                    return
                if existing is None:  # it exists, but the cache has not seen it yet: whose is it?
                    existing = await self._read(kind, ns, name)
            if existing is None:
                return  # deleted right after: the next pass creates it
            if not self._ours(existing, key):
                self._fail(key, f"{body['kind']} {ns}/{name} exists and does not belong to this pipeline "
                                "(no controller reference to it); delete or rename it")
                return
            if fetched:  # seen before the watch delivers it: the next pass sees a complete set of children
                self._informers[kind].remember(existing)
            if kind == "secret":
                if key.uid not in self._tokens and not await self._remember_token(key, existing):
                    return
                # The token is the Secret's (adopted, or made now): what is put back is that Secret.
                digests[kind] = existing[OWNED_KEY] if OWNED_KEY in existing else owned_digest(kind, existing)
                if recorded is None:
                    deployment_id = deployment_id_of(self._tokens[key.uid])
                    objects = {**built(deployment_id), "secret": objects["secret"]}
            else:
                digests[kind] = owned_digest(kind, body)
        self._owned[key.uid] = _Owned.of(digests, claim_name or f"{child_name(key)}-storage", spec,
                                         objects["configmap"]["data"][CONFIG_JSON], initial, bootstrap_policy,
                                         silent_bootstrap, deployment_id, _binary_of(artifact))
        binary = _binary_of(artifact)
        if binary is not None:
            self._binaries[key.uid] = binary
        else:
            self._binaries.pop(key.uid, None)
        self._unfinished.discard(key.uid)
        self._problems.pop(key.uid, None)

    async def deprovision(self, key: PipelineKey) -> None:
        name = child_name(key)
        self._problems.pop(key.uid, None)
        self._tokens.pop(key.uid, None)
        self._token_read.discard(key.uid)
        self._unfinished.discard(key.uid)
        self._owned.pop(key.uid, None)
        self._binaries.pop(key.uid, None)
        await self._cached(key.namespace, "statefulset", "service", "configmap", "networkpolicy", "secret")
        deleted = self._deleted.setdefault(key.uid, set())
        for kind, child in (("statefulset", name), ("service", name), ("configmap", name),
                            ("networkpolicy", name), ("secret", token_secret_name(key))):
            if kind in deleted:
                continue
            existing = self._cache(kind, key.namespace, child)
            if existing is not None and self._ours(existing, key) and not _deleting(existing) \
                    and await self._delete(kind, key.namespace, child, existing["metadata"]["uid"]):
                deleted.add(kind)

    async def storage_exists(self, key: PipelineKey) -> bool:
        await self._cached(key.namespace, "pvc")
        return self._claim(key) is not None

    async def clear_storage(self, key: PipelineKey) -> None:
        """Delete the claim, under either deletion policy: clearing is an explicit request to drop the data."""
        await self._cached(key.namespace, "pvc")
        existing = self._claim(key)
        deleted = self._deleted.setdefault(key.uid, set())
        if existing is not None and "pvc" not in deleted and self._ours(existing, key) and not _deleting(existing) \
                and await self._delete("pvc", key.namespace, existing["metadata"]["name"], existing["metadata"]["uid"]):
            deleted.add("pvc")

    def describe_compute(self, key: PipelineKey) -> str:
        return f"StatefulSet {key.namespace}/{child_name(key)}"

    def describe_storage(self, key: PipelineKey) -> str:
        return f"PersistentVolumeClaim {key.namespace}/{self._claim_name(key)}"

    def _address(self, key: PipelineKey) -> str | None:
        """Where the pipeline's pod answers (``status.podIP``, written by its kubelet), if it is the operator's
        (:meth:`_pod`), not on the host's network, Running and Ready."""
        pod = self._pod(key)
        if pod is None or (pod.get("spec") or {}).get("hostNetwork"):
            return None
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or not any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            return None
        try:
            ip = ipaddress.ip_address(str(status.get("podIP") or ""))
        except ValueError:
            return None
        if ip.is_unspecified or ip.is_multicast:
            return None
        return f"[{ip}]" if ip.version == 6 else str(ip)

    def endpoint(self, key: PipelineKey) -> str | None:
        """``http://<pod IP>:8080`` of the pipeline's own pod (see the module's docstring), or None while there
        is none, or while another pipeline's pod has the same address in the cache (one of them is gone, and
        the watch has not said which yet: a token is never sent to the wrong one)."""
        address = self._address(key)
        endpoint = f"http://{address}:{PORT}" if address is not None else None
        previous = self._endpoints.get(key.uid)
        if previous is not None and previous != endpoint:
            del self._endpoints[key.uid]
            if self._endpoint_keys.get(previous) == key:
                del self._endpoint_keys[previous]
        if endpoint is None:
            return None
        other = self._endpoint_keys.get(endpoint)
        if other is not None and other.uid != key.uid:
            if self._address(other) == address:
                log.warning("%s: its pod and that of %s both have the address %s in the operator's cache; neither "
                            "is reached until the cache says which is gone", key, other, address)
                return None
            self._endpoints.pop(other.uid, None)
        self._endpoints[key.uid] = endpoint
        self._endpoint_keys[endpoint] = key
        return endpoint

    def control_token(self, endpoint: str) -> str | None:
        """The control token of the pipeline ``endpoint()`` last answered ``endpoint`` for."""
        key = self._endpoint_keys.get(endpoint)
        return self.token(key) if key is not None else None

    def token(self, key: PipelineKey) -> str | None:
        """The control token the operator knows for the pipeline (the one its pod was started with)."""
        return self._tokens.get(key.uid)

    async def learn_token(self, key: PipelineKey) -> None:
        """Read the pipeline's control token from its Secret unless it is known (a replica that took over,
        or a standby forwarding an action, has not provisioned the pipeline)."""
        if key.uid not in self._tokens:
            await self._remember_token(key)

    async def program_binary(self, key: PipelineKey, token: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether ``token`` is the control token of the pipeline's current start (compared in constant time; a
        token is read from the Secret only if the cache shows one, so a request cannot make the operator read
        Secrets of stopped pipelines), and the program binary its pod runs if this replica provisioned it (None
        after a restart or a takeover: the caller takes the program's compiled artifact instead)."""
        if key.uid not in self._tokens and self._cache("secret", key.namespace, token_secret_name(key)) is not None:
            await self._remember_token(key)
        known = self._tokens.get(key.uid)
        if not known or not token or not hmac.compare_digest(known.encode(), token.encode("utf-8", "surrogateescape")):
            return False, None
        return True, self._binaries.get(key.uid)

    async def forget(self, key: PipelineKey) -> None:
        """Nothing to remove: the pipeline's objects are deleted with its compute and storage."""
        self._problems.pop(key.uid, None)
        self._tokens.pop(key.uid, None)
        self._token_read.discard(key.uid)
        self._deleted.pop(key.uid, None)
        self._owned.pop(key.uid, None)
        self._binaries.pop(key.uid, None)
        self._unfinished.discard(key.uid)
        endpoint = self._endpoints.pop(key.uid, None)
        if endpoint is not None and self._endpoint_keys.get(endpoint) == key:
            del self._endpoint_keys[endpoint]

    async def close(self) -> None:
        """Stop the watches (their threads end at once) and close their client."""
        if self._starting is not None:
            self._starting.cancel()
        await asyncio.gather(*(i.stop() for i in self._informers.values()))
        await asyncio.to_thread(self._watch_client.close)
