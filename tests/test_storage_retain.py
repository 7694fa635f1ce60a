"""``spec.storage.deletionPolicy: Retain``: deleting a Pipeline leaves its storage, which the next Pipeline
of the same name adopts; clearing storage still deletes it."""

from __future__ import annotations

import pytest

from pipeline_operator.backends.kubernetes import RETAINED_LABEL, UID_LABEL, KubernetesBackend, child_name
from pipeline_operator.backends.local import LocalBackend
from pipeline_operator.identity import PipelineKey

from .operator_harness import wait_for
from .test_kubernetes_backend import RBAC, InProcess, key_of, operator_kubeconfig
from .test_operator_lifecycle import spec

pytestmark = pytest.mark.apiserver
RETAIN = {"storage": {"deletionPolicy": "Retain"}}


def test_a_retained_claim_is_released_then_adopted_by_the_next_pipeline_of_the_name(
        cluster, namespace, crd_installed, pipelines):
    backend = InProcess(cluster, namespace, operator_kubeconfig(cluster, namespace, (RBAC / "role.yaml").read_text()))
    first = key_of(pipelines.create("kept", spec(**RETAIN)))
    backend.provision(first, spec(**RETAIN))
    claim = f"{child_name(first)}-storage"
    backend.deprovision(first)

    async def retain(b: KubernetesBackend) -> None:
        await b.retain_storage(first)
        await b.retain_storage(first)  # once released, there is nothing of this pipeline's left to release
    backend.run(retain)
    released = backend.get("pvc", claim)["metadata"]
    assert "ownerReferences" not in released  # garbage collection leaves it when the Pipeline goes
    assert released["labels"][RETAINED_LABEL] == "kept" and UID_LABEL not in released["labels"]
    assert released["annotations"][RETAINED_LABEL] == "kept"
    pipelines.delete("kept")

    second = key_of(pipelines.create("kept", spec(**RETAIN)))
    assert second.uid != first.uid and child_name(second) != child_name(first)
    backend.provision(second, spec(**RETAIN))
    adopted = backend.get("pvc", claim)["metadata"]
    assert adopted["labels"][UID_LABEL] == second.uid and RETAINED_LABEL not in adopted["labels"]
    assert [(r["uid"], r["controller"]) for r in adopted["ownerReferences"]] == [(second.uid, True)]
    assert backend.get("pvc", f"{child_name(second)}-storage") is None  # no second claim beside it
    volumes = backend.get("statefulset", child_name(second))["spec"]["template"]["spec"]["volumes"]
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": claim}} in volumes

    async def storage(b: KubernetesBackend) -> tuple[bool, str]:
        return await b.storage_exists(second), b.describe_storage(second)
    assert backend.run(storage) == (True, f"PersistentVolumeClaim {namespace}/{claim}")

    async def clear(b: KubernetesBackend) -> None:
        await b.clear_storage(second)  # an explicit request: deleted under Retain too
    backend.run(clear)
    wait_for("the claim's deletion", lambda: _gone_or_deleting(backend.get("pvc", claim)), 10)


def _gone_or_deleting(obj: dict | None) -> bool:
    return obj is None or bool(obj["metadata"].get("deletionTimestamp"))


def test_a_claim_of_another_name_is_not_adopted(cluster, namespace, crd_installed, pipelines):
    backend = InProcess(cluster, namespace, operator_kubeconfig(cluster, namespace, (RBAC / "role.yaml").read_text()))
    first = key_of(pipelines.create("left", spec(**RETAIN)))
    backend.provision(first, spec(**RETAIN))

    async def retain(b: KubernetesBackend) -> None:
        await b.retain_storage(first)
    backend.run(retain)
    other = key_of(pipelines.create("right", spec(**RETAIN)))
    backend.provision(other, spec(**RETAIN))
    assert backend.get("pvc", f"{child_name(first)}-storage")["metadata"]["labels"][RETAINED_LABEL] == "left"
    assert backend.get("pvc", f"{child_name(other)}-storage")["metadata"]["labels"][UID_LABEL] == other.uid


def test_local_storage_is_kept_on_deletion_and_adopted_by_the_next_pipeline(operators, pipelines, namespace):
    op = operators(namespace)
    uid = pipelines.create("ledger", spec(**RETAIN))["metadata"]["uid"]
    pipelines.wait_status("ledger", op, deploymentStatus="Running", timeout=40)
    local = LocalBackend(op.state_dir)
    first = PipelineKey(namespace, "ledger", uid)
    (local.storage_dir(first) / "kept.marker").write_text("written by the first pipeline")
    pipelines.delete("ledger")
    assert not local.folder(first).exists()  # the rest of the pipeline's folder goes with it
    assert (local.retained_dir(first) / "kept.marker").exists()

    uid2 = pipelines.create("ledger", spec(**RETAIN))["metadata"]["uid"]
    pipelines.wait_status("ledger", op, deploymentStatus="Running", timeout=40)
    second = PipelineKey(namespace, "ledger", uid2)
    assert (local.storage_dir(second) / "kept.marker").read_text() == "written by the first pipeline"
    assert not local.retained_dir(second).exists()

    pipelines.patch_spec("ledger", {"desiredStatus": "Stopped", "stopMode": "Force"})
    pipelines.wait_status("ledger", op, deploymentStatus="Stopped")
    pipelines.annotate("ledger", "dataflow.dev/clear-storage", "1")
    pipelines.wait_status("ledger", op, storageStatus="Cleared", timeout=40)
    assert not local.storage_dir(second).exists()  # /clear deletes it under Retain too
    pipelines.delete("ledger")
    assert not local.retained_dir(second).exists()  # nothing was left to retain


def test_local_storage_of_the_default_policy_is_deleted(operators, pipelines, namespace):
    op = operators(namespace)
    uid = pipelines.create("gone", spec())["metadata"]["uid"]
    pipelines.wait_status("gone", op, deploymentStatus="Running", timeout=40)
    pipelines.delete("gone")
    local = LocalBackend(op.state_dir)
    key = PipelineKey(namespace, "gone", uid)
    assert not local.folder(key).exists() and not local.retained_dir(key).exists()
