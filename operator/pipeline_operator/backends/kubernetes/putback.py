"""Owned objects are put back (controller-runtime's ``Owns()``): a child whose owned part is not what the
operator wrote is written back, one deleted while the compute runs is created again, and each put-back is a
Kubernetes Event ``ChildRestored`` on the Pipeline."""

from __future__ import annotations

import logging
from typing import Any

from ...identity import PipelineKey
from .children import ChildObjects, Invalid
from .objects import KIND_NAMES, UID_LABEL, _meta, child_name, labels, service_object, token_secret, token_secret_name
from .owned import OWNED_KEY, _deleting, _differences, _Owned, owned_digest, owned_part

log = logging.getLogger(__name__)
REASON_RESTORED = "ChildRestored"


class PutBack(ChildObjects):
    """Puts back each of a pipeline's children whose owned part differs from what the operator wrote."""

    # -- putting back what the operator owns --------------------------------------------------------

    def _child_names(self, key: PipelineKey, owned: _Owned) -> dict[str, str]:
        name = child_name(key)
        return {"statefulset": name, "service": name, "configmap": name, "networkpolicy": name,
                "secret": token_secret_name(key), "pvc": owned.claim}

    async def _guard(self, key: PipelineKey) -> None:
        """Put back each of the pipeline's children whose owned part is not what the operator wrote (its
        digest in the cache differs), and create again one deleted while the compute stands. After an operator
        restart, what is known without the start's parameters is guarded: the Service and the claim's labels."""
        owned = self._owned.get(key.uid)
        if owned is None:
            owned = self._owned[key.uid] = _Owned(
                digests={"service": owned_digest("service", service_object(key)),
                         "pvc": owned_digest("pvc", {"metadata": {"labels": labels(key)}})},
                claim=self._claim_name(key))
        for kind, name in self._child_names(key, owned).items():
            expected = owned.digests.get(kind)
            if expected is None:
                continue
            live = self._claim(key) if kind == "pvc" else self._cache(kind, key.namespace, name)
            if live is not None and (live.get(OWNED_KEY) == expected or _deleting(live)
                                     or not self._ours(live, key)):
                continue  # as written; or going; or someone else's object, which is never touched
            if live is None and kind in ("statefulset", "pvc"):
                continue  # a StatefulSet deleted is a failure (observe_compute); a claim is never made again here
            await self._put_back(key, kind, name, owned, expected)

    def _rebuild(self, key: PipelineKey, kind: str, owned: _Owned) -> dict[str, Any] | None:
        """The child as the operator wrote it; None when it cannot be known (see :meth:`_guard`)."""
        if kind == "service":
            return service_object(key)
        if kind == "pvc":
            return {"metadata": _meta(key, owned.claim)}
        if kind == "secret":
            token = self._tokens.get(key.uid)
            return token_secret(key, token) if token else None
        objects = owned.rebuild(key, self.options)
        return objects.get(kind) if objects is not None else None

    async def _put_back(self, key: PipelineKey, kind: str, name: str, owned: _Owned, expected: int) -> None:
        ns = key.namespace
        body = self._rebuild(key, kind, owned)
        if body is None:
            return
        fresh = await self._read(kind, ns, name)
        what = f"{KIND_NAMES[kind]} {name}"
        if fresh is None:
            if kind == "pvc":
                return
            try:
                created = await self._create(kind, body)
            except Invalid as exc:
                owned.digests.pop(kind, None)  # not tried on every pass
                log.warning("%s: %s was deleted and cannot be created again: %s", key, what, exc)
                return
            if created is None:
                return  # made meanwhile: the next pass looks at it
            self._informers[kind].remember(created)
            self._restored(key, f"{what} was deleted; created again")
            return
        if _deleting(fresh):
            return
        if not self._ours(fresh, key):  # someone else's by that name (never touched): not read on every pass
            owned.digests.pop(kind, None)
            log.warning("%s: %s is not the pipeline's (no controller reference to it, or no %s label); it is left "
                        "as it is and not put back", key, what, UID_LABEL)
            return
        changed = _differences(owned_part(kind, fresh), owned_part(kind, body))
        result: dict[str, Any] | None = fresh
        if changed:  # written back (the cache may only have been behind: then it is remembered as it is)
            meta = fresh["metadata"]
            if kind == "pvc":
                result = await self._patch(kind, ns, name, {"metadata": {"resourceVersion": meta["resourceVersion"],
                                                                         "labels": labels(key)}})
            else:
                replacement = {k: v for k, v in fresh.items() if k != "status"}
                replacement["metadata"] = {**{k: v for k, v in meta.items() if k != "managedFields"},
                                           "labels": {**(meta.get("labels") or {}), **labels(key)}}
                for field in ("spec", "data", "binaryData", "type"):
                    replacement.pop(field, None)
                    if field in body:
                        replacement[field] = body[field]
                try:
                    result = await self._replace(kind, replacement)
                except Invalid:  # an immutable field (a Secret's token, a ConfigMap made immutable): made anew
                    if not await self._delete(kind, ns, name, meta["uid"]):
                        return
                    result = await self._create(kind, body)
        if result is None:
            return  # changed or gone meanwhile: the next pass looks again
        self._informers[kind].remember(result)
        if changed:
            fields = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
            self._restored(key, f"{what} {fields} {'was' if len(changed) == 1 else 'were'} changed; put back")
        if owned_digest(kind, result) != expected:  # never a put-back on every pass: what was written differs
            owned.digests.pop(kind, None)
            log.error("%s: %s as the API server stores it differs from what the operator writes (%s); it is no "
                      "longer put back", key, what, ", ".join(_differences(owned_part(kind, result),
                                                                           owned_part(kind, body))) or "?")

    def _restored(self, key: PipelineKey, message: str) -> None:
        self._calls["restored"] += 1
        log.warning("%s: %s", key, message)
        if self.on_restored is not None:
            self.on_restored(key, message)
