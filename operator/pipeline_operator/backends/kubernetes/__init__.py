"""The Kubernetes backend: compute is a StatefulSet (one replica), a Service, a ConfigMap, the
Secret holding the pipeline's control token and (with ``--network-policies``) a NetworkPolicy;
storage is a PersistentVolumeClaim. This is what Feldera's enterprise edition does.

Every child carries an owner reference to its Pipeline (the controller reference), the
``app.kubernetes.io/*`` labels and ``dataflow.dev/pipeline-uid``, never a copy of the Pipeline's
labels or annotations. An object is the operator's own only with both the label and the controller
reference: a label alone is easy to put on anything, and the operator must never adopt or delete an
object someone else made. Creation is idempotent (an existing object that is ours is adopted), and
deletion is explicit: the operator deletes what it created and waits until it is gone, without
relying on garbage collection.

The children are not read on every pass: the backend watches them (one list+watch cache per kind,
``kube/informer.py``, of the objects labelled ``app.kubernetes.io/managed-by=pipeline-operator`` in the
operator's namespaces), so a monitoring pass makes no API call, and a change of a child wakes its
pipeline at once. What the operator creates is written through to the cache, so the next pass sees a
complete set of children; while a watch is down, nothing is concluded from the cache (the pass is
tried again, as when the API server does not answer a GET).

The control token lives exactly as long as the compute: provisioning creates the Secret (or adopts
the one left by an interrupted provisioning), the pod reads it through ``secretKeyRef``, and
deprovisioning deletes it with the StatefulSet. A stopped pipeline leaves no credential behind, and
every start gets a fresh token; the operator reads the token back from the Secret (after a restart
too), so the token it sends is always the one the pod was started with.

A pipeline is reached at its pod's IP (``http://<pod IP>:8080``), never through its Service or any
name: the address comes only from objects the operator owns and has checked. The pod, in the pod cache,
must be ``<child>-0``, labelled with the Pipeline's uid, controlled by the StatefulSet the operator owns
(its controller reference names that StatefulSet's uid), not on the host's network, Running and Ready,
and its ``status.podIP`` (written by the kubelet, which a tenant cannot write) a valid address that no
other pipeline's pod claims in the cache. A Service can be changed by anyone who may edit Services in
the namespace (an ``ExternalName``, another selector, other ports) and a DNS name resolves to whatever
it says, so the operator's polls, its forwarded actions and the HTTP API's passed-through requests
(with the pipeline's control token) would go wherever a tenant chose; a pod IP needs no DNS and no
object the tenant can redirect. The Service stays, for the StatefulSet's pod DNS and for the peers a
spec lets in (``spec.deployment.allowIngressFrom``), and is put back like every other child.

**Owned objects are put back** (controller-runtime's ``Owns()``): provisioning remembers, per pipeline,
a digest of the part of each child the operator sets (:data:`OWNED_FIELDS`: labels, a Service's type,
selector and ports, a StatefulSet's replicas and pod template, a ConfigMap's data, a Secret's type and
data, a NetworkPolicy's spec, a claim's labels) and what rebuilds it (the spec's ``deployment``, the
program as written, the start parameters, compressed). Each cache keeps that digest of its objects
(computed in the watch's thread), not their specs; a child whose digest differs is written back (read,
then replaced, guarded by its resourceVersion) and the put-back is a Kubernetes Event ``ChildRestored``
on the Pipeline naming the fields; a child deleted while the compute runs is created again (the token
Secret with the token the pod was started with). Only fields the operator sets are compared, normalised
as the API server stores them (quantities in canonical form, empty values dropped), so the API server's
defaults (a Service's clusterIP and sessionAffinity, a pod template's dnsPolicy...) never differ. What
is remembered is in memory: after an operator restart or a takeover, the Service and the claim's labels
(which depend only on the Pipeline) are guarded at once, the StatefulSet, ConfigMap, Secret and
NetworkPolicy (which depend on the spec and start parameters of the start that made them) from the
pipeline's next start.

**Deletes are fenced**: every delete carries a uid precondition, the uid of the object the operator
verified as its own, so a same-named object someone made in its place is never deleted.

The package's rooms: ``objects`` (the manifests the operator builds), ``owned`` (what it owns in each child,
its digest, and what the caches keep), ``children`` (the caches and the API calls), ``putback`` (owned
objects put back), ``observation`` (the compute observed), ``logs`` (a pod's log) and ``backend`` (the
backend itself).
"""

from __future__ import annotations

from .backend import KubernetesBackend
from .objects import PORT, RETAINED_LABEL, UID_LABEL, KubernetesOptions, child_name, labels
from .putback import REASON_RESTORED

__all__ = ["PORT", "REASON_RESTORED", "RETAINED_LABEL", "UID_LABEL", "KubernetesBackend", "KubernetesOptions",
           "child_name", "labels"]
