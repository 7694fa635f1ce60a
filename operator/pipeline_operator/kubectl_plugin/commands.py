"""The commands: ``events`` (from ``status.history`` or the operator's API, followed), the lifecycle
actions (spec fields and one-shot annotations as a merge patch, then waiting for their effect) and ``status``
(one screen: the Pipeline, its Kubernetes objects, its last events)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ..models import API_GROUP
from .connection import (
    API_ENV,
    API_TIMEOUT,
    REQUEST_TIMEOUT,
    Connection,
    PluginError,
    api_error,
    api_opener,
    api_url_refusal,
)
from .output import COLUMNS, events_table, format_rows, print_events, row, snake, to_yaml

LAST_EVENTS = 10  # events on the status screen
UID_LABEL = "dataflow.dev/pipeline-uid"  # the Kubernetes backend's label on every object of a pipeline
COMMANDS = ("events", "status", "start", "stop", "pause", "resume", "clear", "dismiss-error", "approve",
            "completion")
ACTIONS = ("start", "stop", "pause", "resume", "clear", "dismiss-error", "approve")


# -- monitor events ------------------------------------------------------------------------------------


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
    from ..reconcile.spec import (
        ANNOTATION_APPROVE,
        ANNOTATION_CLEAR_STORAGE,
        ANNOTATION_DISMISS_ERROR,
        ANNOTATION_START,
    )
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
