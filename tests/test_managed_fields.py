"""Kopf's watch of the Pipelines, as the operator wraps it (controller.strip_managed_fields_in_kopf_watches):
the objects Kopf keeps come without ``metadata.managedFields``, listed or watched, against the real API
server. Kopf offers no transform of its own, so this also checks that the Kopf function the operator wraps
is still there and still takes what Kopf's watcher gives it."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import auth
from kopf._cogs.clients import watching as kopf_watching
from kopf._cogs.structs import credentials, references

from pipeline_operator.controller import kopf_workarounds as controller
from pipeline_operator.models import API_GROUP, API_VERSION, PLURAL

from .test_operator_lifecycle import spec

pytestmark = pytest.mark.apiserver


def test_kopf_still_has_the_watch_function_the_operator_wraps():
    kopfs = inspect.unwrap(kopf_watching.continuous_watch)  # Kopf's own, also once the operator wrapped it
    assert set(inspect.signature(kopfs).parameters) == {"settings", "resource", "namespace", "operator_pause_waiter"}
    assert inspect.isasyncgenfunction(kopfs)
    # The watcher calls it by its module-level name, which is what the operator replaces.
    assert "continuous_watch(" in inspect.getsource(kopf_watching.infinite_watch)


def test_kopfs_listed_and_watched_pipelines_come_without_managed_fields(pipelines, namespace, cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    pipelines.create("listed", spec())
    listed = json.loads(cluster.kubectl("get", "pipeline", "listed", "-n", namespace, "-o", "json",
                                        "--show-managed-fields").stdout)
    assert listed["metadata"].get("managedFields")  # the API server sends it

    monkeypatch.setattr(kopf_watching, "continuous_watch", kopf_watching.continuous_watch)  # undone afterwards
    controller.strip_managed_fields_in_kopf_watches()
    controller.strip_managed_fields_in_kopf_watches()  # once is enough: not wrapped twice
    assert kopf_watching.continuous_watch.strips_managed_fields

    async def main() -> dict[str, dict[str, Any]]:
        settings = kopf.OperatorSettings()
        info = kopf.login_with_kubeconfig(logger=logging.getLogger("test"), settings=settings)
        vault = credentials.Vault({"test": info})
        auth.vault_var.set(vault)
        resource = references.Resource(API_GROUP, API_VERSION, PLURAL, namespaced=True)
        seen: dict[str, dict[str, Any]] = {}

        async def watch() -> None:
            async for event in kopf_watching.infinite_watch(settings=settings, resource=resource, namespace=namespace):
                if isinstance(event, dict):
                    seen[event["object"]["metadata"]["name"]] = event["object"]
        task = asyncio.create_task(watch())
        try:
            for _ in range(200):
                if "listed" in seen:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(pipelines.create, "watched", spec())
            for _ in range(200):
                if "watched" in seen:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            failures = [r for r in await asyncio.gather(task, return_exceptions=True)
                        if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)]
            assert not failures, failures
            await vault.close()  # the API sessions Kopf opened with it
        return seen

    seen = asyncio.run(main())
    assert set(seen) == {"listed", "watched"}, seen.keys()
    for name, obj in seen.items():
        assert "managedFields" not in obj["metadata"], name
        assert obj["metadata"]["name"] == name and obj["spec"]["program"]["sql"]  # the rest is all there
