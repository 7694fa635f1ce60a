"""Every setting of the operator, in one place.

Each setting has a command-line flag (``--monitor-interval``) and an environment variable
(``PIPELINE_OPERATOR_MONITOR_INTERVAL``); the flag wins. The table in the README is
generated from this class (``pipeline-operator settings --markdown``).
"""

from __future__ import annotations

import enum
import os
import urllib.parse
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .models import MAX_HISTORY_ITEMS

ENV_PREFIX = "PIPELINE_OPERATOR_"

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_database_url(target: object) -> bool:
    """``--event-store`` names a PostgreSQL database (``postgresql://`` or ``postgres://``), not a file."""
    return isinstance(target, str) and "://" in target and target.partition("://")[0].lower() in POSTGRES_SCHEMES


def check_database_url(url: str) -> None:
    """Refuse a database URL that holds a password: the command line and the Pod spec show it to anyone
    who may list processes or read Deployments; libpq takes it from the environment instead."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if userinfo.partition(":")[2] or query.get("password") or query.get("sslpassword"):
        raise ValueError("the --event-store URL (PIPELINE_OPERATOR_EVENT_STORE) must not contain a password, "
                         "it would be visible in the process list and the Pod spec: remove it from the URL and "
                         "pass it through the environment, PGPASSWORD or a PGPASSFILE (for example from a "
                         "Kubernetes Secret), as libpq reads them")



class BackendKind(str, enum.Enum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    backend: BackendKind = Field(default_factory=lambda: BackendKind.KUBERNETES if os.environ.get(
                             "KUBERNETES_SERVICE_HOST") else BackendKind.LOCAL,
                             description="Where pipelines run: `local` (child processes and directories of "
                             "the operator) or `kubernetes` (StatefulSet, Service, ConfigMap and "
                             "PersistentVolumeClaim). Default: `kubernetes` inside a cluster, else `local`.")
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch (repeatable "
                                          "flag `--namespace`); empty with `--all-namespaces`.")
    all_namespaces: bool = Field(False, description="Watch Pipelines in every namespace.")
    monitor_interval: float = Field(2.5, gt=0, le=3600, description="Seconds between monitoring passes "
                                    "while Stopped or Provisioned (Feldera: 2.5).")
    transition_monitor_interval: float = Field(1.0, gt=0, le=3600, description="Seconds between "
                                               "monitoring passes while Provisioning or Stopping (Feldera: 1).")
    details_min_interval: float = Field(10.0, ge=0, description="A details-only change is recorded as "
                                        "an event at most this often (seconds).")
    heartbeat_interval: float = Field(600.0, gt=0, description="With nothing changed for longer than "
                                      "this (seconds), a heartbeat event is recorded.")
    events_retention: int = Field(720, ge=1, le=100_000, description="Monitor events kept per pipeline "
                                  "in the event store (approximately, as Feldera).")
    events_prune_interval: float = Field(30.0, gt=0, le=3600, description="Seconds between prunings of "
                                         "the event store down to the retention.")
    events_sweep_interval: float = Field(300.0, gt=0, le=86400, description="Seconds between sweeps of the "
                                         "event store for the events of Pipelines that no longer exist (a "
                                         "deletion queues their removal and does not wait for the store; the "
                                         "sweep removes what such a removal missed). One sweep runs at start.")
    history_limit: int = Field(20, ge=0, le=MAX_HISTORY_ITEMS, description="Newest events kept in each "
                               "Pipeline's `status.history`.")
    provisioning_timeout: float = Field(300.0, gt=0, description="Seconds Provisioning may take when the "
                                        "spec sets no `deployment.provisioningTimeoutSeconds`.")
    status_timeout: float = Field(5.0, gt=0, description="Timeout of a pipeline's `GET /status` (seconds).")
    event_store: Path | str = Field(Path("pipeline-events.sqlite"), description="The durable monitor-event "
                                    "store: the path of an SQLite file (the embedded default, for one replica; "
                                    "a relative path is resolved against the working directory at start), or a "
                                    "PostgreSQL URL `postgresql://USER@HOST:PORT/DATABASE` (for more than one "
                                    "replica: any replica reads it, the leader writes). The URL holds no "
                                    "password: it comes from the environment, `PGPASSWORD` or a `PGPASSFILE` "
                                    "(e.g. from a Secret); libpq's other `PG*` variables apply as usual.")
    state_dir: Path = Field(Path("pipeline-operator-state"), description="Local backend: where pipeline "
                            "storage directories, compiled programs and process records live; a relative path "
                            "is resolved against the working directory at start.")
    pipeline_command: str = Field("", description="Local backend: the command that runs a pipeline "
                                  "process (default: this installation's reference pipeline process). "
                                  "Set on the operator only, never taken from a Pipeline.")
    compiler: str = Field("sqlglot", pattern="^(sqlglot|feldera)$", description="How programs are compiled: "
                          "`sqlglot` (the built-in stand-in: the SQL is parsed, pipelines run the reference "
                          "pipeline process) or `feldera` (Feldera's SQL compiler, `--feldera-sql-compiler`, "
                          "and pipeline binaries from `--program-binaries`).")
    feldera_sql_compiler: Path | None = Field(None, description="`--compiler feldera`: Feldera's SQL compiler, "
                                              "`sql2dbsp-jar-with-dependencies.jar` of `--feldera-version`.")
    java: str = Field("java", description="`--compiler feldera`: the Java runtime that runs the SQL compiler "
                      "(a path, or a command on `PATH`).")
    program_binaries: Path | None = Field(None, description="`--compiler feldera`: the binary store, a folder "
                                          "holding each program's pipeline binary, built elsewhere, as "
                                          "`<key>` (the key a program's `RustError` names).")
    feldera_version: str = Field("0.306.0", pattern=r"^[0-9A-Za-z.+-]{1,64}$", description="`--compiler "
                                 "feldera`: the Feldera version of the SQL compiler and the binaries (part of "
                                 "each binary's key).")
    operator_url: str = Field("", pattern=r"^(https?://[^\s/?#]+/?)?$", description="Kubernetes backend with "
                              "`--compiler feldera`: the operator's HTTP API as pipeline pods reach it, from which "
                              "each pod's launcher downloads its program binary with its pipeline's control token. "
                              "Default: `http://pipeline-operator.<operator namespace>.svc:<API port>` (the chart's "
                              "and `deploy/`'s Service; `https` with `--api-tls-cert`), else the API's own address.")
    pipeline_image: str = Field("ghcr.io/pipeline-operator/pipeline-operator:0.1.0", description="Kubernetes "
                                "backend: the pipeline container image when the spec gives none.")
    pipeline_image_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Kubernetes backend: the image prefixes a Pipeline's "
        "`deployment.image` may start with (repeatable flag `--pipeline-image-prefix`; `*` allows any image). "
        "Default: the repository of `--pipeline-image`. Whoever may create a Pipeline may run these images.")
    pipeline_image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$",
                                            description="Kubernetes backend: `imagePullPolicy` of pipeline "
                                            "containers.")
    pipeline_cpu_request: str = Field("250m", description="Kubernetes backend: CPU request of a pipeline "
                                      "container whose spec sets none (empty: no request).")
    pipeline_memory_request: str = Field("512Mi", description="Kubernetes backend: memory request of a "
                                         "pipeline container whose spec sets none (empty: no request).")
    pipeline_cpu_limit: str = Field("", description="Kubernetes backend: CPU limit of a pipeline container "
                                    "whose spec sets none (empty: no limit).")
    pipeline_memory_limit: str = Field("2Gi", description="Kubernetes backend: memory limit of a pipeline "
                                       "container whose spec sets none (empty: no limit).")
    network_policies: bool = Field(True, description="Kubernetes backend: give each pipeline a NetworkPolicy "
                                   "that admits only the operator's pods and the peers its spec lists.")
    operator_namespace: str = Field(default_factory=lambda: os.environ.get("POD_NAMESPACE", ""),
                                    description="The namespace of the operator's pods (the NetworkPolicy "
                                    "of each pipeline admits them). Default: `$POD_NAMESPACE` (the "
                                    "chart sets it from the downward API).")
    operator_pod_labels: str = Field("app.kubernetes.io/name=pipeline-operator", description="Labels of the "
                                     "operator's pods (`k=v,k=v`), admitted by each pipeline's NetworkPolicy.")
    pipeline_debug_routes: bool = Field(False, description="Serve the pipeline process's `/debug` routes "
                                        "(fault injection for tests). Off by default.")
    deletion_timeout: float = Field(600.0, gt=0, description="Seconds a deleted Pipeline's compute and "
                                    "storage may take to go away before the operator reports "
                                    "`DeletionStuck` (it keeps trying; an administrator may release the "
                                    "finalizer with the `dataflow.dev/release-finalizer: \"true\"` annotation).")
    leader_election: bool = Field(False, description="Run as one of several replicas: only the holder of "
                                  "a `coordination.k8s.io` Lease reconciles, the others stand by (not ready) "
                                  "and take over when it expires. Off: this replica acts alone (the chart "
                                  "and `deploy/` turn it on).")
    leader_election_namespace: str = Field("", description="Namespace of the leader-election Lease. Default: "
                                           "the operator's namespace (`--operator-namespace`, `$POD_NAMESPACE`).")
    leader_election_id: str = Field("pipeline-operator", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                    description="Name of the leader-election Lease: replicas with the same "
                                    "name and namespace elect one leader.")
    lease_duration: float = Field(15.0, gt=0, description="Seconds a standby waits, after it last saw the "
                                  "Lease renewed, before it takes it over.")
    lease_renew_deadline: float = Field(10.0, gt=0, description="Seconds the leader keeps acting without "
                                        "renewing the Lease; then it stops (shorter than --lease-duration).")
    lease_retry_period: float = Field(2.0, gt=0, description="Seconds between tries to take or renew the Lease.")
    shard_claims: bool = Field(True, description="With `--leader-election`: claim each watched namespace for "
                               "this installation (the Lease `pipeline-operator-shard` there) and leave alone "
                               "a namespace another installation claims, so two operators never act on one "
                               "namespace (docs/sharding.md).")
    event_store_queue_limit: int = Field(100_000, ge=100, description="Monitor events waiting to be "
                                         "written to the event store; beyond it new events are dropped "
                                         "(counted in `/metrics`) instead of growing memory without bound.")
    api_listen: str = Field(default_factory=lambda: "0.0.0.0:8080" if os.environ.get("KUBERNETES_SERVICE_HOST")
                            else "127.0.0.1:8080", pattern=r"^(off|[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5})$",
                            description="Address of the HTTP API (`host:port`), or `off`. Default: "
                            "`0.0.0.0:8080` inside a cluster, else `127.0.0.1:8080`.")
    api_auth: str = Field("kubernetes", pattern="^(kubernetes|none)$", description="`kubernetes`: bearer "
                          "tokens checked with TokenReview and SubjectAccessReview; `none`: no authentication "
                          "(local development only).")
    api_default_namespace: str = Field("default", description="The namespace of API requests without a "
                                       "`Feldera-Tenant` header, except a service account's (its own "
                                       "namespace).")
    api_audience: str = Field("pipeline-operator", description="The audience bearer tokens must be "
                              "minted for (`kubectl create token NAME --audience pipeline-operator`); "
                              "empty: the API server's default audiences.")
    api_tls_cert: Path | None = Field(None, description="Serve the HTTP API over TLS with this "
                                      "certificate (PEM; a mounted Secret).")
    api_tls_key: Path | None = Field(None, description="The private key of `--api-tls-cert` (PEM).")
    api_max_concurrency: int = Field(64, ge=1, le=10_000, description="API requests served at once "
                                     "(probes, metrics, streams and uploads are not counted); at most half of "
                                     "them may wait for a pipeline or for the monitoring loop (actions, writes, "
                                     "deletes, checkpoints, passed-through requests).")
    api_max_concurrency_per_identity: int = Field(0, ge=0, le=10_000, description="API requests one user may "
                                                  "have under way at once (0: a quarter of "
                                                  "`--api-max-concurrency`); more wait for one of theirs.")
    api_max_concurrency_per_namespace: int = Field(0, ge=0, le=10_000, description="API requests served at once "
                                                   "for one namespace (0: a quarter of `--api-max-concurrency`); "
                                                   "more wait for one of the namespace's.")
    api_queue_timeout: float = Field(10.0, gt=0, le=600, description="Seconds an API request (or an upload) "
                                     "waits for a slot; then 503 `ApiBusy` with `Retry-After`.")
    api_auth_concurrency: int = Field(8, ge=1, le=1000, description="TokenReviews and "
                                      "SubjectAccessReviews under way at once for the API.")
    api_auth_rate: float = Field(10.0, gt=0, description="Token checks per second one client address may "
                                 "cause (uncached tokens; a burst of twice as many is allowed).")
    metrics_auth: str = Field("kubernetes", pattern="^(kubernetes|none)$", description="`/metrics`: "
                              "`kubernetes` serves it to a bearer token (checked with a TokenReview for the API "
                              "server's audiences, e.g. Prometheus's service account token) that RBAC allows "
                              "`get` on the non-resource URL `/metrics` (the ClusterRole "
                              "`pipeline-operator-metrics-reader`); `none` serves it to anyone who reaches the port.")
    api_follow_streams: int = Field(100, ge=1, le=100_000, description="Live event streams "
                                    "(`events?follow=true`) open at once; beyond: 429 `TooManyStreams`.")
    api_follow_streams_per_client: int = Field(4, ge=1, le=10_000, description="Live event streams one "
                                               "client address may have open at once.")
    api_follow_queue: int = Field(1000, ge=1, le=1_000_000, description="Events a live stream holds for a "
                                  "client that has not read them yet; beyond, the stream ends with `StreamLagging` "
                                  "(the client resumes with `after=`).")
    api_ui: bool = Field(True, description="Serve `/ui`, a read-only page of the tenant's pipelines and "
                         "their status timelines, with the API's authentication (docs/api.md).")
    kube_workers: int = Field(16, ge=1, le=1000, description="Threads (and connections) of the Kubernetes "
                              "client of the monitoring loops, the backend and the deletions: its calls under way "
                              "at once.")
    kube_events_workers: int = Field(4, ge=1, le=1000, description="Threads of the Kubernetes client that posts "
                                     "Kubernetes Events (the poster keeps 4 posts under way at once).")
    kube_api_workers: int = Field(8, ge=1, le=1000, description="Threads of the Kubernetes client of the HTTP "
                                  "API (its TokenReviews, SubjectAccessReviews and writes).")
    kube_lease_workers: int = Field(2, ge=1, le=100, description="Threads of the Kubernetes client of leader "
                                    "election (its renewals never wait behind other calls).")
    kube_claims_workers: int = Field(2, ge=1, le=100, description="Threads of the Kubernetes client of the "
                                     "namespace claims (sharding; their renewals never wait behind other calls).")
    operator_name: str = Field("pipeline-operator", description="Reporting component of Kubernetes "
                               "Events and field manager of the operator's writes.")
    log_format: str = Field("plain", pattern="^(plain|json)$", description="Log lines as plain text "
                            "or JSON.")
    event_loop: str = Field("uvloop", pattern="^(uvloop|asyncio)$", description="The event loop: `uvloop` "
                            "(libuv's, as Kopf's own command uses when installed: a thousand pipelines' status "
                            "polls cost less CPU) or `asyncio` (the standard library's).")
    verbose: bool = Field(False, description="Debug logging.")

    @field_validator("namespaces", "pipeline_image_prefixes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v for v in value.replace(",", " ").split() if v]
        return value

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Made absolute once, at start: pipeline processes run in their own folders and get these paths."""
        return Path(os.path.abspath(value))

    @field_validator("event_store", mode="before")
    @classmethod
    def _event_store(cls, value: object) -> object:
        """A PostgreSQL URL is kept as given (never a password in it); anything else is a path, made
        absolute once, at start, like ``state_dir``."""
        if is_database_url(value):
            check_database_url(str(value))
            return value
        if isinstance(value, str | os.PathLike):
            return Path(os.path.abspath(value))
        return value

    @model_validator(mode="after")
    def _unauthenticated_api_is_local(self) -> OperatorSettings:
        """``--api-auth none`` binds to 127.0.0.1 unless an address was given explicitly."""
        if self.api_auth == "none" and "api_listen" not in self.model_fields_set and self.api_listen != "off":
            self.api_listen = "127.0.0.1:" + self.api_listen.rpartition(":")[2]
        return self

    @model_validator(mode="after")
    def _feldera_toolchain(self) -> OperatorSettings:
        """``--compiler feldera`` needs its SQL compiler, a Java runtime and a binary store, checked at start."""
        if self.compiler != "feldera":
            return self
        import shutil
        problems = []
        if self.backend is BackendKind.KUBERNETES and self.api_listen == "off":
            problems.append("on the Kubernetes backend pipeline pods download their binaries from the operator's "
                            "HTTP API: --api-listen cannot be off")
        if self.feldera_sql_compiler is None or not self.feldera_sql_compiler.is_file():
            problems.append(f"--feldera-sql-compiler must name Feldera's SQL compiler jar (given: "
                            f"{self.feldera_sql_compiler or 'nothing'})")
        if shutil.which(self.java) is None:
            problems.append(f"--java {self.java!r} is not an executable Java runtime")
        if self.program_binaries is None or not self.program_binaries.is_dir():
            problems.append(f"--program-binaries must name the folder of pipeline binaries (given: "
                            f"{self.program_binaries or 'nothing'})")
        if problems:
            raise ValueError("--compiler feldera: " + "; ".join(problems))
        return self

    def pipeline_binaries_url(self) -> str:
        """Where pipeline pods reach the operator's HTTP API (``--operator-url``, else its default)."""
        if self.operator_url:
            return self.operator_url.rstrip("/")
        scheme = "https" if self.api_tls_cert is not None else "http"
        host, _, port = self.api_listen.rpartition(":")
        if self.operator_namespace:
            return f"{scheme}://pipeline-operator.{self.operator_namespace}.svc:{port}"
        return f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    @model_validator(mode="after")
    def _tls_pair(self) -> OperatorSettings:
        if (self.api_tls_cert is None) != (self.api_tls_key is None):
            raise ValueError("--api-tls-cert and --api-tls-key go together")
        return self

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorSettings:
        if not self.lease_retry_period < self.lease_renew_deadline < self.lease_duration:
            raise ValueError("leader election needs --lease-retry-period < --lease-renew-deadline < "
                             "--lease-duration")
        return self

    def lease_namespace(self) -> str:
        """Where the leader-election Lease lives (empty when no namespace is known)."""
        return self.leader_election_namespace or self.operator_namespace

    def shard(self) -> str | None:
        """This installation's name in namespace claims, ``<Lease namespace>/<leader-election id>`` (the
        same for all its replicas), or None when it claims no namespace (no leader election, or
        ``--no-shard-claims``)."""
        if not (self.leader_election and self.shard_claims):
            return None
        return f"{self.lease_namespace()}/{self.leader_election_id}"

    def image_prefixes(self) -> list[str]:
        """The allowed image prefixes: the setting, or the repository of the default image."""
        if self.pipeline_image_prefixes:
            return list(self.pipeline_image_prefixes)
        image = self.pipeline_image.split("@", 1)[0]
        repository, _, tag = image.rpartition(":")
        if not repository or "/" in tag:  # no tag (the colon was a registry port)
            repository = image
        return [repository]

    def monitor_period(self, transitional: bool) -> float:
        return self.transition_monitor_interval if transitional else self.monitor_interval


def settings_table() -> str:
    """The configuration table in Markdown, from the fields above (README)."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, field in OperatorSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name == "namespaces":
            flag = "--namespace (repeatable)"
        if name == "pipeline_image_prefixes":
            flag = "--pipeline-image-prefix (repeatable)"
        default = field.get_default(call_default_factory=True)
        if isinstance(default, enum.Enum):
            default = default.value
        shown = f"`{default}`" if default not in ("", [], None) else ""
        rows.append(f"| `{flag}` | `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
