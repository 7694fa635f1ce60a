"""Connecting as the user: the Kubernetes API with the user's kubeconfig, context and namespace (RBAC
applies as to kubectl), and the operator's HTTP API (``--api``), to which the kubeconfig's token goes only over
https, or over plain http to a loopback address, and never on to where a redirect points
(:func:`api_url_refusal`, :func:`api_opener`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ..models import API_GROUP, API_VERSION, PLURAL

FIELD_MANAGER = "kubectl-pipeline"
API_ENV = "PIPELINE_OPERATOR_API"
API_TIMEOUT = 10.0  # seconds the operator's API may take to answer a list of events
REQUEST_TIMEOUT = (5, 30)  # connect, read: as the operator's own calls


class PluginError(Exception):
    """Something the user can act on: printed as one line on stderr, exit code 1."""


# -- connecting as the user ---------------------------------------------------------------------------


@dataclasses.dataclass
class Connection:
    """The user's cluster, credentials and namespace, resolved as kubectl resolves them."""
    client: kubernetes.client.ApiClient
    namespace: str

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.client)

    @property
    def bearer_token(self) -> str | None:
        configuration = self.client.configuration
        # A kubeconfig's token (refreshed if it expires) or, in a pod, the service account's.
        value = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
        return value[len("Bearer "):] if value.startswith("Bearer ") else None

    def get(self, name: str) -> dict[str, Any]:
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            raise api_error(exc, f'pipeline "{name}"', self.namespace) from None
        return dict(obj)

    def names(self) -> list[str]:
        listed: Any = self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL,
                                                           _request_timeout=REQUEST_TIMEOUT)
        return sorted(item["metadata"]["name"] for item in listed.get("items") or [])

    def merge_patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            obj: Any = self.custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, PLURAL, name, body, field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json", _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            raise api_error(exc, f'pipeline "{name}"', self.namespace) from None
        return dict(obj)

    def watch(self, name: str, resource_version: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Every new version of the Pipeline after ``resource_version`` for up to ``timeout`` seconds
        (``kubectl get --watch``), starting again where it stopped when the API server ends a watch."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(self.custom.list_namespaced_custom_object, API_GROUP, API_VERSION,
                                          self.namespace, PLURAL, field_selector=f"metadata.name={name}",
                                          resource_version=resource_version,
                                          timeout_seconds=max(1, min(int(left), 300))):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        if obj.get("code") == 410:  # too old: start from the current version
                            resource_version = self.get(name)["metadata"]["resourceVersion"]
                            break
                        raise PluginError(f"watching pipeline \"{name}\" failed: {obj.get('message')}")
                    if event["type"] == "DELETED":
                        raise PluginError(f'pipeline "{name}" was deleted from namespace "{self.namespace}"')
                    resource_version = obj["metadata"]["resourceVersion"]
                    yield obj
            except ApiException as exc:
                raise api_error(exc, f'pipeline "{name}"', self.namespace) from None
            finally:
                watch.stop()


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    """The kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``; in a pod
    without one, the pod's service account), its context and that context's namespace."""
    configuration = kubernetes.client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    present = any(os.path.exists(p) for p in path.split(os.pathsep) if p)
    try:
        if not present and kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                default_namespace = f.read().strip()
        else:
            if not present:
                raise PluginError(f"no kubeconfig found at {path}: set KUBECONFIG or pass --kubeconfig")
            kubernetes.config.load_kube_config(config_file=path, context=context,
                                               client_configuration=configuration)
            contexts, active = kubernetes.config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            default_namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    except kubernetes.config.ConfigException as exc:
        raise PluginError(f"cannot use the kubeconfig {path}: {exc}") from None
    configuration.retries = 1  # a command answers promptly that the API server is unreachable
    return Connection(kubernetes.client.ApiClient(configuration), namespace or default_namespace)


def api_error(exc: ApiException, what: str, namespace: str) -> PluginError:
    """The API server's answer as one line, in kubectl's words."""
    message = ""
    try:
        message = json.loads(exc.body or "{}").get("message") or ""
    except (ValueError, AttributeError):
        pass
    if exc.status == 404:
        return PluginError(f'{what} not found in namespace "{namespace}"')
    if exc.status == 403:
        return PluginError(f"Forbidden: {message or exc.reason}")
    if exc.status == 401:
        return PluginError("Unauthorized: the kubeconfig's credentials were refused by the API server")
    return PluginError(f"the API server answered {exc.status} {exc.reason}: {message or exc.body}")


def is_loopback(host: str) -> bool:
    """``localhost`` or an address of 127.0.0.0/8 or ::1, as written (no name is looked up: a name could
    point anywhere)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_url_refusal(api: str) -> str | None:
    """Why the kubeconfig's token may not be sent to ``api``, or None: only https, or plain http to a
    loopback address (a ``kubectl port-forward``), where nothing crosses a network in the clear."""
    try:
        parts = urllib.parse.urlsplit(api)
        host = parts.hostname or ""
    except ValueError:
        return f"--api {api}: not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"--api {api}: give an https:// URL (or http:// to a loopback address)"
    if parts.scheme == "http" and not is_loopback(host):
        return (f"--api {api}: plain http:// would send the kubeconfig's token in the clear: use https://, "
                "or plain http:// to a loopback address only (127.0.0.0/8, ::1, localhost)")
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, never followed: urllib would take every header along, the token too."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def api_opener(api: str) -> urllib.request.OpenerDirector:
    """What reads the operator's API: no redirect followed; for plain http (a loopback address only), no
    proxy either (``http_proxy`` would carry the token in the clear, off this machine)."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if urllib.parse.urlsplit(api).scheme == "http":
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)
