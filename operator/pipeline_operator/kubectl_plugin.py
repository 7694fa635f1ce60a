"""``kubectl pipeline``: monitor events, lifecycle actions and one-screen status of a Pipeline.

kubectl finds the console script ``kubectl-pipeline`` on the PATH; ``pipeline-operator kubectl``
runs the same. It talks to the Kubernetes API as the user, with the user's kubeconfig, context
and namespace (so RBAC applies exactly as to ``kubectl get`` and ``kubectl patch``), and makes the
same changes a user would make by hand: spec fields and one-shot annotations, as a merge patch
with the field manager ``kubectl-pipeline``. Monitor events come from ``status.history``, or
from the operator's HTTP API (``--api``) for the full retained history, to which the kubeconfig's
token goes only over https, or over plain http to a loopback address, and never on to where a
redirect points (:func:`api_url_refusal`, :func:`api_opener`).

The ``kubernetes`` client is blocking, which suits a command that does one thing at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic.alias_generators import to_snake

from .models import API_GROUP, API_VERSION, EVENT_FIELD_ORDER, PLURAL

FIELD_MANAGER = "kubectl-pipeline"
API_ENV = "PIPELINE_OPERATOR_API"
API_TIMEOUT = 10.0  # seconds the operator's API may take to answer a list of events
REQUEST_TIMEOUT = (5, 30)  # connect, read: as the operator's own calls
LAST_EVENTS = 10  # events on the status screen
UID_LABEL = "dataflow.dev/pipeline-uid"  # the Kubernetes backend's label on every object of a pipeline
COMMANDS = ("events", "status", "start", "stop", "pause", "resume", "clear", "dismiss-error", "approve",
            "completion")
ACTIONS = ("start", "stop", "pause", "resume", "clear", "dismiss-error", "approve")
COLUMNS = ("TIME", "RESOURCES", "RUNTIME", "PROGRAM", "STORAGE", "ERROR")
# Widths that hold every status value Feldera has, so that followed rows line up under the header.
MIN_WIDTHS = (7, 26, 26, 13, 8, 5)


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


# -- monitor events ------------------------------------------------------------------------------------


def snake(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``status.history`` entry (camelCase) as the HTTP API shows an event: snake_case, in
    Feldera's field order (the API server keeps the keys sorted)."""
    fields = {to_snake(k): v for k, v in entry.items()}
    return {k: fields[k] for k in EVENT_FIELD_ORDER if k in fields}


def history_events(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The events in ``status.history`` (newest first), with the latched error on the newest
    entries that have one (the history keeps whether an entry had an error, not which)."""
    status = obj.get("status") or {}
    latched = status.get("deploymentError")
    events = []
    for entry in status.get("history") or []:
        event = snake(entry)
        if not event.get("deployment_has_error"):
            latched = None
        if latched is not None:  # after deployment_has_error, as Feldera orders them
            event = {**{k: v for k, v in event.items() if k not in ("program_status", "storage_status")},
                     "deployment_error": {"message": latched.get("message"), "error_code": latched.get("errorCode")},
                     "program_status": event["program_status"], "storage_status": event["storage_status"]}
        events.append(event)
    return events


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


def api_events(api: str, connection: Connection, name: str, selector: str) -> list[dict[str, Any]] | None:
    """The full retained history from the operator's HTTP API; None when it cannot be reached."""
    refusal = api_url_refusal(api)
    if refusal is not None:
        raise PluginError(refusal)
    url = f"{api.rstrip('/')}/v0/pipelines/{urllib.parse.quote(name)}/events?selector={selector}"
    headers = {"Feldera-Tenant": connection.namespace, "Accept": "application/json"}
    token = connection.bearer_token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with api_opener(api).open(urllib.request.Request(url, headers=headers), timeout=API_TIMEOUT) as answer:
            events: list[dict[str, Any]] = json.load(answer)
            return events
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise PluginError(f"the operator's API at {api} answered a redirect (HTTP {exc.code} to "
                              f"{exc.headers.get('Location') or '?'}), which is not followed (it would take the "
                              "kubeconfig's token along): give --api the address it redirects to") from None
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        raise PluginError(f"the operator's API answered {exc.code}: {body.get('message') or exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"the operator's API at {api} is unreachable ({reason}); showing status.history instead",
              file=sys.stderr)
        return None


def ago(at: str, now: dt.datetime) -> str:
    seconds = max(0, int((now - dt.datetime.fromisoformat(at.replace("Z", "+00:00"))).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def row(event: dict[str, Any], now: dt.datetime) -> tuple[str, ...]:
    runtime = event.get("deployment_runtime_status") or "-"
    if event.get("deployment_runtime_desired_status"):
        runtime += f" ({event['deployment_runtime_desired_status']})"
    error = "-"
    if event.get("deployment_has_error"):
        error = (event.get("deployment_error") or {}).get("error_code") or "yes"
    return (ago(event["recorded_at"], now),
            f"{event['deployment_resources_status']} ({event['deployment_resources_desired_status']})",
            runtime, event["program_status"], event["storage_status"], error)


def format_rows(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([w, *(len(r[i]) for r in rows)]) for i, w in enumerate(MIN_WIDTHS)]
    return ["   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def events_table(events: Sequence[dict[str, Any]], now: dt.datetime) -> str:
    """Newest first, as Feldera's ``fda events`` prints them; desired statuses in parentheses."""
    return "\n".join(format_rows([COLUMNS, *(row(e, now) for e in events)]))


def to_yaml(value: Any, indent: int = 0) -> str:
    """JSON data as YAML (block style; strings quoted as JSON, which YAML reads), without PyYAML,
    which the operator does not depend on."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{json.dumps(str(key))}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{json.dumps(str(key))}: {to_yaml(item).strip()}")
        return "\n".join(lines)
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            text = to_yaml(item, indent + 2)
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    return pad + json.dumps(value)


def print_events(events: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print(json.dumps(events, indent=2))
    elif output == "yaml":
        print(to_yaml(events))
    else:
        print(events_table(events, dt.datetime.now(dt.UTC)))


def cmd_events(args: argparse.Namespace, connection: Connection) -> int:
    api = args.api or os.environ.get(API_ENV)
    refusal = api_url_refusal(api) if api else None
    if refusal is not None:  # before any connection
        raise PluginError(refusal)
    obj = connection.get(args.name)
    events = api_events(api, connection, args.name, args.selector) if api else None
    if events is None:
        events = history_events(obj)
        if args.selector == "status":  # the history has no error text: the status selector shows none
            events = [{k: v for k, v in e.items() if k != "deployment_error"} for e in events]
    print_events(events, args.output)
    if not args.follow:
        return 0
    sys.stdout.flush()
    last = max((str(e["event_id"]) for e in events), default="")
    rv = obj["metadata"]["resourceVersion"]
    while True:  # until Ctrl-C; a watch the API server ends is started again
        for newer in connection.watch(args.name, rv, timeout=3600):
            rv = newer["metadata"]["resourceVersion"]
            fresh = sorted((e for e in history_events(newer) if str(e["event_id"]) > last),
                           key=lambda e: str(e["event_id"]))
            for event in fresh:  # UUIDv7: the id sorts as the time it was recorded
                last = str(event["event_id"])
                if args.output == "table":
                    print(format_rows([COLUMNS, row(event, dt.datetime.now(dt.UTC))])[1], flush=True)
                else:
                    print(json.dumps(event) if args.output == "json" else to_yaml([event]), flush=True)


# -- actions ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Change:
    """What an action writes and how ``--wait`` knows the operator has acted on it."""
    spec: dict[str, Any]
    annotations: dict[str, str]
    handled: str | None  # the status.handledActions key that records the one-shot annotation
    target: Callable[[dict[str, Any]], bool]  # the status shows the action done
    goal: str  # what --wait waits for, in words


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def change_for(action: str, force: bool, before: dict[str, Any]) -> Change:
    # Imported here: the monitoring loop's module (and what it imports) is needed by actions only,
    # so that `events`, `status` and completion start quickly.
    from .reconcile.spec import ANNOTATION_APPROVE, ANNOTATION_CLEAR_STORAGE, ANNOTATION_DISMISS_ERROR, ANNOTATION_START
    nonce = uuid.uuid4().hex
    if action == "start":
        annotations = {ANNOTATION_START: nonce}
        if _status(before).get("deploymentError"):  # as Feldera's /start (dismiss_error=true by default)
            annotations[ANNOTATION_DISMISS_ERROR] = uuid.uuid4().hex
        return Change({"desiredStatus": "Provisioned"}, annotations, "start",
                      lambda o: _status(o).get("deploymentResourcesStatus") == "Provisioned"
                      and _status(o).get("deploymentRuntimeStatus") is not None
                      and _status(o).get("deploymentRuntimeStatus") == _status(o).get("deploymentRuntimeDesiredStatus"),
                      "Provisioned, runtime at its desired status")
    if action == "stop":
        return Change({"desiredStatus": "Stopped", "stopMode": "Force" if force else "Graceful"}, {}, None,
                      lambda o: _status(o).get("deploymentResourcesStatus") == "Stopped", "Stopped")
    if action in ("pause", "resume"):
        target = "Paused" if action == "pause" else "Running"
        return Change({"runtimeDesiredStatus": target}, {}, None,
                      lambda o: _status(o).get("deploymentRuntimeStatus") == target, f"runtime {target}")
    if action == "clear":
        return Change({}, {ANNOTATION_CLEAR_STORAGE: nonce}, "clearStorage",
                      lambda o: _status(o).get("storageStatus") == "Cleared", "storage Cleared")
    if action == "dismiss-error":
        return Change({}, {ANNOTATION_DISMISS_ERROR: nonce}, "dismissError",
                      lambda o: not _status(o).get("deploymentError"), "no error latched")
    return Change({}, {ANNOTATION_APPROVE: nonce}, "approve",
                  lambda o: _status(o).get("deploymentRuntimeStatus") != "AwaitingApproval",
                  "runtime no longer AwaitingApproval")


def describe(obj: dict[str, Any]) -> str:
    st = _status(obj)
    text = (f"{st.get('deploymentStatus') or '-'}: resources {st.get('deploymentResourcesStatus') or '-'} "
            f"(desired {st.get('deploymentResourcesDesiredStatus') or '-'}), runtime "
            f"{st.get('deploymentRuntimeStatus') or '-'}, storage {st.get('storageStatus') or '-'}")
    error = st.get("deploymentError")
    return text + (f", error {error.get('errorCode')}" if error else "")


class Progress:
    """One progress line on stderr: rewritten in place on a terminal, else a line per change."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        if text == self.last:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self.last = text

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def wait_for(connection: Connection, name: str, updated: dict[str, Any], change: Change, value: str | None,
             timeout: float) -> None:
    """Until the operator observed the new generation, recorded the one-shot annotation as handled
    (a refusal ends the wait with its reason), and the status shows the goal."""
    generation = updated["metadata"].get("generation") or 1
    progress = Progress()

    def check(obj: dict[str, Any]) -> bool:
        st = _status(obj)
        progress.show(f"waiting for {name} ({change.goal}): {describe(obj)}")
        if (st.get("observedGeneration") or 0) < generation:
            return False
        if change.handled is not None:
            handled = (st.get("handledActions") or {}).get(change.handled) or {}
            if handled.get("value") != value:
                return False
            if handled.get("outcome") == "Refused":
                progress.done()
                raise PluginError(f"the operator refused it: {handled.get('errorCode') or 'Refused'}: "
                                  f"{handled.get('message')}")
        if change.target(obj):
            return True
        # A pipeline that was to run but stopped with an error will not get there by waiting; clearing
        # storage and dismissing the error are for a Stopped pipeline, error or not.
        error = st.get("deploymentError")
        if error and change.handled not in ("dismissError", "clearStorage") \
                and st.get("deploymentResourcesStatus") == "Stopped":
            progress.done()
            raise PluginError(f"pipeline \"{name}\" stopped with an error: {error.get('errorCode')}: "
                              f"{error.get('message')}")
        return False

    if not check(updated):
        for obj in connection.watch(name, updated["metadata"]["resourceVersion"], timeout):
            if check(obj):
                break
        else:
            progress.done()
            raise PluginError(f"timed out after {timeout:g}s waiting for {name} ({change.goal}); "
                              f"now {describe(connection.get(name))}")
    progress.done()
    print(f"pipeline.{API_GROUP}/{name} {describe(connection.get(name))}")


def cmd_action(args: argparse.Namespace, connection: Connection) -> int:
    before = connection.get(args.name)
    change = change_for(args.command, getattr(args, "force", False), before)
    body: dict[str, Any] = {}
    if change.spec:
        body["spec"] = change.spec
    if change.annotations:
        body["metadata"] = {"annotations": change.annotations}
    updated = connection.merge_patch(args.name, body)
    spec_before = before.get("spec") or {}
    changed = [f"spec.{k}: {spec_before.get(k, '(unset)')} -> {v}" for k, v in change.spec.items()
               if spec_before.get(k) != v]
    changed += [f"annotation {k}={v}" for k, v in change.annotations.items()]
    print(f"pipeline.{API_GROUP}/{args.name} {args.command}: "
          + ("; ".join(changed) if changed else "unchanged (the spec already asks for it)"))
    if args.wait:
        value = next(iter(change.annotations.values()), None)  # the handled one comes first
        wait_for(connection, args.name, updated, change, value, args.timeout)
    return 0


# -- status --------------------------------------------------------------------------------------------


def object_state(kind: str, obj: Any) -> str:
    if kind == "StatefulSet":
        return f"{obj.status.ready_replicas or 0}/{obj.spec.replicas} ready"
    if kind == "Pod":
        ready = next((c.status for c in obj.status.conditions or [] if c.type == "Ready"), "False")
        return f"{obj.status.phase}, Ready {ready}"
    if kind == "PersistentVolumeClaim":
        return str(obj.status.phase or "-")
    if kind == "Service":
        return f"clusterIP {obj.spec.cluster_ip or '-'}"
    return "-"


def kubernetes_objects(connection: Connection, uid: str) -> list[str]:
    """The objects the Kubernetes backend made for the pipeline (none with the local backend);
    a kind the user may not list is said so, not fatal."""
    core = kubernetes.client.CoreV1Api(connection.client)
    apps = kubernetes.client.AppsV1Api(connection.client)
    listers: dict[str, Callable[..., Any]] = {
        "StatefulSet": apps.list_namespaced_stateful_set, "Service": core.list_namespaced_service,
        "ConfigMap": core.list_namespaced_config_map,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim, "Pod": core.list_namespaced_pod}
    rows: list[tuple[str, ...]] = []
    for kind, list_them in listers.items():
        try:
            listed = list_them(connection.namespace, label_selector=f"{UID_LABEL}={uid}",
                                   _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 403:
                raise api_error(exc, kind, connection.namespace) from None
            rows.append((kind, "(forbidden: you may not list them)", ""))
            continue
        rows.extend((kind, item.metadata.name, object_state(kind, item)) for item in listed.items)
    if not rows:
        return ["  none (the local backend runs the pipeline as a process of the operator)"]
    widths = [max(len(r[i]) for r in [("KIND", "NAME", "STATE"), *rows]) for i in range(3)]
    return ["  " + "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [("KIND", "NAME", "STATE"), *rows]]


def cmd_status(args: argparse.Namespace, connection: Connection) -> int:
    obj = connection.get(args.name)
    meta, st = obj["metadata"], _status(obj)
    spec = obj.get("spec") or {}

    def pair(status: str, desired: str) -> str:
        return f"{st.get(status) or '-'} (desired {st.get(desired) or '-'})"

    lines = [
        f"Pipeline:    {connection.namespace}/{meta['name']} (uid {meta['uid']})",
        f"Generation:  {meta.get('generation')} (observed {st.get('observedGeneration') or '-'})",
        f"Status:      {pair('deploymentStatus', 'deploymentDesiredStatus')}",
        f"Resources:   {pair('deploymentResourcesStatus', 'deploymentResourcesDesiredStatus')}"
        f" since {st.get('deploymentResourcesStatusSince') or '-'} (spec asks {spec.get('desiredStatus', 'Stopped')})",
        f"Runtime:     {pair('deploymentRuntimeStatus', 'deploymentRuntimeDesiredStatus')}",
        f"Program:     {st.get('programStatus') or '-'} (version {st.get('programVersion') or 0})",
        f"Storage:     {st.get('storageStatus') or '-'}",
    ]
    error = st.get("deploymentError")
    lines.append(f"Error:       {error.get('errorCode')}: {error.get('message')}" if error else "Error:       -")
    lines.append("Conditions:")
    conditions = [(c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""))
                  for c in st.get("conditions") or []]
    widths = [max(len(r[i]) for r in [("TYPE", "STATUS", "REASON", ""), *conditions]) for i in range(3)]
    for c in [("TYPE", "STATUS", "REASON", "MESSAGE"), *conditions]:
        lines.append("  " + "   ".join([*(v.ljust(w) for v, w in zip(c[:3], widths, strict=True)), c[3]]).rstrip())
    handled = st.get("handledActions") or {}
    if handled:
        lines.append("Handled actions:")
        lines += [f"  {key}: {h.get('outcome')} ({h.get('message') or '-'}), value {h.get('value')}"
                  for key, h in handled.items() if h]
    lines.append(f"Events (last {LAST_EVENTS} of status.history):")
    lines += ["  " + line for line in events_table(history_events(obj)[:LAST_EVENTS], dt.datetime.now(dt.UTC))
              .splitlines()]
    lines.append(f"Kubernetes objects ({UID_LABEL}={meta['uid']}):")
    lines += kubernetes_objects(connection, meta["uid"])
    print("\n".join(lines))
    return 0


# -- shell completion ---------------------------------------------------------------------------------


BASH_COMPLETION = """\
# kubectl pipeline / kubectl-pipeline completion (bash): source <(kubectl-pipeline completion bash)
_kubectl_pipeline() {
    local cur=${COMP_WORDS[COMP_CWORD]} i=1 ns=()
    [[ ${COMP_WORDS[0]} == kubectl ]] && i=2
    for ((j = 1; j < COMP_CWORD; j++)); do
        case ${COMP_WORDS[j]} in -n|--namespace) ns=(-n "${COMP_WORDS[j+1]}");; esac
    done
    if ((COMP_CWORD == i)); then
        COMPREPLY=($(compgen -W "%(commands)s" -- "$cur"))
    elif [[ ${COMP_WORDS[i]} == completion ]]; then
        COMPREPLY=($(compgen -W "bash zsh" -- "$cur"))
    else
        local names=$(kubectl get pipelines "${ns[@]}" -o name 2>/dev/null | sed 's|.*/||')
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
    fi
}
complete -F _kubectl_pipeline kubectl-pipeline
"""

ZSH_COMPLETION = """\
#compdef kubectl-pipeline
# kubectl pipeline / kubectl-pipeline completion (zsh): source <(kubectl-pipeline completion zsh)
_kubectl_pipeline() {
    local -a ns names
    local i=${words[(I)-n]}
    (( i > 0 )) && ns=(-n ${words[i+1]})
    if (( CURRENT == 2 )); then
        compadd -- %(commands)s
    elif [[ ${words[2]} == completion ]]; then
        compadd -- bash zsh
    else
        names=(${(f)"$(kubectl get pipelines $ns -o name 2>/dev/null | sed 's|.*/||')"})
        compadd -- $names
    fi
}
compdef _kubectl_pipeline kubectl-pipeline
"""


def cmd_completion(args: argparse.Namespace) -> int:
    script = BASH_COMPLETION if args.shell == "bash" else ZSH_COMPLETION
    print(script % {"commands": " ".join(COMMANDS)}, end="")
    return 0


def complete_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl_complete-pipeline``: kubectl (1.26+) runs it to complete ``kubectl pipeline ...``,
    with the words typed after ``pipeline``, the last one being completed; it answers one candidate
    a line and Cobra's directive line (``:4``: no file names)."""
    words = list(sys.argv[1:] if argv is None else argv) or [""]
    typed, current = words[:-1], words[-1]
    positional = [w for i, w in enumerate(typed) if not w.startswith("-")
                  and not (i > 0 and typed[i - 1] in ("-n", "--namespace", "--context", "--kubeconfig"))]
    candidates: list[str] = []
    if not positional:
        candidates = list(COMMANDS)
    elif positional[0] == "completion":
        candidates = ["bash", "zsh"] if len(positional) == 1 else []
    elif positional[0] in COMMANDS and len(positional) == 1:
        options = {typed[i - 1]: w for i, w in enumerate(typed) if i > 0}
        try:
            connection = connect(options.get("--kubeconfig"), options.get("--context"),
                                 options.get("-n") or options.get("--namespace"))
            candidates = connection.names()
        except (PluginError, ApiException, urllib3.exceptions.HTTPError):
            candidates = []
    for candidate in candidates:
        if candidate.startswith(current):
            print(candidate)
    print(":4")
    return 0


# -- the command line ---------------------------------------------------------------------------------


def connection_options(default: Any) -> argparse.ArgumentParser:
    """``-n``, ``--context`` and ``--kubeconfig``, accepted before and after the command."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-n", "--namespace", default=default, help="The Pipeline's namespace (default: the "
                                                                     "context's).")
    options.add_argument("--context", default=default, help="The kubeconfig context to use (default: the current "
                                                            "context).")
    options.add_argument("--kubeconfig", default=default, help="Path to the kubeconfig (default: $KUBECONFIG, "
                                                               "~/.kube/config).")
    return options


def parser() -> argparse.ArgumentParser:
    # A command's own default must not undo an option given before the command.
    common = connection_options(argparse.SUPPRESS)
    top = argparse.ArgumentParser(
        prog="kubectl pipeline", parents=[connection_options(None)],
        description="Monitor events, lifecycle actions and status of Pipelines (dataflow.dev), as the user "
                    "of the kubeconfig: RBAC applies.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    events = commands.add_parser("events", parents=[common], help="A pipeline's monitor events, newest first.")
    events.add_argument("name", metavar="NAME")
    events.add_argument("--selector", choices=("all", "status"), default="all",
                        help="Feldera's selector: all (with the error text, from the API) or status.")
    events.add_argument("--follow", "-f", action="store_true", help="Print new events as they are recorded "
                                                                    "(until Ctrl-C).")
    events.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    events.add_argument("--api", help=f"The operator's HTTP API (https://, or http:// to a loopback address such as "
                                      f"http://127.0.0.1:8080; also ${API_ENV}) for the full retained history "
                                      "instead of status.history. The kubeconfig's token is sent to it; a redirect "
                                      "is not followed.")

    status = commands.add_parser("status", parents=[common], help="A pipeline on one screen.")
    status.add_argument("name", metavar="NAME")

    helps = {"start": "Start (desiredStatus Provisioned and the start annotation).",
             "stop": "Stop (desiredStatus Stopped), gracefully unless --force.",
             "pause": "Pause the runtime (runtimeDesiredStatus Paused).",
             "resume": "Resume the runtime (runtimeDesiredStatus Running).",
             "clear": "Clear the storage (the clear-storage annotation; only when Stopped).",
             "dismiss-error": "Dismiss the latched error (the dismiss-error annotation).",
             "approve": "Approve a pipeline that is AwaitingApproval (the approve annotation)."}
    for action in ACTIONS:
        sub = commands.add_parser(action, parents=[common], help=helps[action])
        sub.add_argument("name", metavar="NAME")
        if action == "stop":
            sub.add_argument("--force", action="store_true", help="Stop without a checkpoint (stopMode Force).")
        sub.add_argument("--wait", action="store_true", help="Wait until the status shows the action done.")
        sub.add_argument("--timeout", type=float, default=300.0, help="Seconds --wait waits (default 300).")

    completion = commands.add_parser("completion", help="Print a shell completion script.")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "completion":
            return cmd_completion(args)
        connection = connect(args.kubeconfig, args.context, args.namespace)
        if args.command == "events":
            return cmd_events(args, connection)
        if args.command == "status":
            return cmd_status(args, connection)
        return cmd_action(args, connection)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", exc)
        print(f"error: the Kubernetes API server cannot be reached: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends --follow and --wait: nothing went wrong
        return 0
    except BrokenPipeError:  # `kubectl pipeline events x | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
