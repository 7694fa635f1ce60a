"""Feldera's ``runtime_config`` and ``program_config``, typed.

The models follow Feldera's OpenAPI schemas ``RuntimeConfig`` and ``ProgramConfig`` and every schema
they reference (``ResourceConfig``, ``FtConfig``, ``StorageOptions``, ``StorageBackendConfig``,
``DevTweaks``, ``CompilationProfile``, ...) of the Feldera version this operator follows (v0.305), with
their types, defaults, enums and limits. The limits are those of Feldera's Rust types behind the
OpenAPI (``u8``, ``u16``, ``u32``: their maxima); strings, maps and lists get bounds of their own, so
that the CRD generated from these models (see :mod:`pipeline_operator.controller.crd`) leaves no field free-form:
the API server rejects unknown fields (with strict field validation, kubectl's default) and malformed
ones, naming the field, and no value nests deeper than the schema.

Keys are Feldera's, in snake_case: these objects are Feldera's, kept as Feldera writes them.

Decoding is Feldera's (serde's): a key Feldera does not know is ignored (``extra="ignore"``), the
legacy forms Feldera still reads are read (``storage: true|false``, ``fault_tolerance: null`` or
``"initial_state"``), and a missing field takes Feldera's default. Where Feldera's own schema is open,
it is closed or bounded here, and the description says how:

- ``dev_tweaks`` takes the tweaks this Feldera version knows (Feldera also passes any other key on to
  the runtime: such a key is not accepted here, since its value could be anything, at any depth);
- ``env`` is a map of strings, at most :data:`MAX_ENV` of them, Feldera's reserved names refused;
- the object-storage backend's options are the ones Feldera documents, each a string;
- ``init_containers`` (Feldera Enterprise's sidecars, any JSON in Feldera's schema) are Kubernetes
  containers with the fields a sidecar needs (:class:`SidecarContainer`).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.config import JsonValue
from pydantic_core import to_jsonable_python

# Limits of Feldera's Rust integer types (u64 and usize: Kubernetes' integers are int64 anyway).
U8, U16, U32 = 2**8 - 1, 2**16 - 1, 2**32 - 1
MAX_STRING = 4096  # a string setting with no natural bound of its own (a URL, a log filter, a key)
MAX_NAME = 253  # a Kubernetes object name
MAX_ENV = 64
MAX_ENV_NAME = 256
MAX_PIN_CPUS = 1024
MAX_FLAGS = 64
MAX_SIDECARS = 8
MAX_LIST = 64  # a sidecar's command, args, env, ports, volume mounts

# Feldera's pipeline_env.rs: names the platform sets itself.
RESERVED_ENV = ("HOSTNAME", "RUST_LOG", "TOKIO_WORKER_THREADS")
RESERVED_ENV_PREFIXES = ("FELDERA_", "KUBERNETES_", "TOKIO_")

Text = Annotated[str, Field(max_length=MAX_STRING)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
UInt8 = Annotated[int, Field(ge=0, le=U8)]
UInt16 = Annotated[int, Field(ge=0, le=U16)]
UInt32 = Annotated[int, Field(ge=0, le=U32)]
UInt64 = Annotated[int, Field(ge=0)]
# uuid::Uuid::parse_str's forms (hyphenated, simple, braced, urn), or "latest".
START_FROM_CHECKPOINT_PATTERN = (r"^(latest|(urn:uuid:)?\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                                 r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\}?)$")


def _nullable(**extra: Any) -> dict[str, Any]:
    """The CRD keeps an explicit null (Feldera reads it as "none", unlike a missing field, which takes
    the default)."""
    return {"nullable": True, **extra}


def _rules(rules: list[dict[str, str]]) -> JsonValue:
    """CEL rules of the CRD (x-kubernetes-validations), as pydantic's schema extras take them."""
    return cast(JsonValue, rules)


class FelderaModel(BaseModel):
    """Feldera's serde: unknown keys are ignored, missing ones take their defaults."""
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------

CompilationProfile = Literal["dev", "unoptimized", "optimized", "optimized_symbols"]
StorageCompression = Literal["default", "none", "snappy"]
BufferCacheStrategy = Literal["s3_fifo", "lru"]
BufferCacheAllocationStrategy = Literal["shared_per_worker_pair", "per_thread", "global"]
MergerType = Literal["push_merger", "list_merger"]


# --------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------


class SyncConfig(FelderaModel):
    """Feldera's ``SyncConfig``: checkpoints synchronised with an object store (rclone)."""
    endpoint: Text | None = Field(None, description="The endpoint URL of the storage service.")
    bucket: Text = Field(description="The bucket, possibly with a path inside it.")
    region: Text | None = None
    provider: Text | None = Field(None, description="The cloud storage provider (rclone's), e.g. AWS or Minio.")
    access_key: Text | None = None
    secret_key: Text | None = None
    start_from_checkpoint: str | None = Field(
        None, max_length=64, pattern=START_FROM_CHECKPOINT_PATTERN,
        description="'latest' or a checkpoint's UUID: fetch that checkpoint from the object store.")
    fail_if_no_checkpoint: bool = Field(False, description="Fail to start if the checkpoint cannot be fetched.")
    transfers: UInt8 | None = None
    checkers: UInt8 | None = None
    ignore_checksum: bool | None = None
    multi_thread_streams: UInt8 | None = None
    multi_thread_cutoff: str | None = Field(None, max_length=64)
    upload_concurrency: UInt8 | None = None
    standby: bool = Field(False, description="Start in standby mode, until activated.")
    pull_interval: UInt64 = Field(10, description="Seconds between fetches of the latest checkpoint in standby.")
    push_interval: UInt64 | None = Field(None, description="Seconds between pushes of checkpoints.")
    flags: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        None, max_length=MAX_FLAGS, description="Extra flags of rclone.")
    retention_min_count: UInt32 = 10
    retention_min_age: UInt32 = Field(30, description="Days.")
    read_bucket: Text | None = Field(None, description="A read-only bucket to fall back on for checkpoints.")


# Options of the object-storage backend (Feldera's ObjectStorageConfig: the URL, then string options
# of the object_store crate, as Feldera documents them).
OBJECT_STORE_OPTIONS = (
    # S3
    "access_key_id", "secret_access_key", "region", "default_region", "endpoint", "token", "session_token",
    "allow_http", "virtual_hosted_style_request", "skip_signature", "imdsv1_fallback", "metadata_endpoint",
    "aws_access_key_id", "aws_secret_access_key", "aws_region", "aws_default_region", "aws_endpoint",
    "aws_session_token", "aws_allow_http", "aws_virtual_hosted_style_request", "aws_skip_signature",
    # Google Cloud Storage
    "service_account", "service_account_key", "google_application_credentials",
    "google_service_account", "google_service_account_key",
    # Azure
    "access_key", "container_name", "account", "bearer_token_authorization", "client_id", "client_secret",
    "tenant_id", "azure_storage_account_name", "azure_storage_account_key", "azure_container_name",
    "azure_storage_client_id", "azure_storage_client_secret", "azure_storage_tenant_id",
    "azure_storage_token", "azure_storage_endpoint",
)

class _BackendOptions(FelderaModel):
    """Feldera's ``FileBackendConfig`` (``name: file``) and ``ObjectStorageConfig`` (``name: object``)
    in one object, since a Kubernetes schema cannot choose properties by a discriminator; the
    backend's rules say which fields go with which name."""
    async_threads: bool | None = Field(None, description="file: use background threads for file I/O.")
    ioop_delay: UInt64 | None = Field(None, description="file: milliseconds of sleep per I/O (tests only).")
    sync: SyncConfig | None = Field(None, description="file: synchronise checkpoints with an object store.")
    url: Text | None = Field(None, description="object: the URL (s3://, gs://, az://, https://...).")


BackendOptions: Any = create_model(  # type: ignore[call-overload]
    "BackendOptions", __base__=_BackendOptions, __doc__=_BackendOptions.__doc__,
    **{name: (Text | None, Field(None, description=f"object: object_store's {name} option."))
       for name in OBJECT_STORE_OPTIONS})

_FILE_ONLY = ("async_threads", "ioop_delay", "sync")
_BACKEND_RULES: list[dict[str, str]] = [
    {"rule": "self.name == 'default' ? !has(self.config) : has(self.config)",
     "message": "config is required for the file and object backends, and not allowed for the default backend"},
    {"rule": "self.name != 'object' || has(self.config.url)", "message": "the object backend needs config.url"},
    {"rule": "self.name != 'object' || !(" + " || ".join(f"has(self.config.{f})" for f in _FILE_ONLY) + ")",
     "message": f"{', '.join(_FILE_ONLY)} are options of the file backend, not of the object backend"},
    {"rule": "self.name != 'file' || !has(self.config.url)",
     "message": "url is an option of the object backend, not of the file backend"},
]


class StorageBackendConfig(FelderaModel):
    """Feldera's ``StorageBackendConfig``: ``{"name": "default"}``, ``{"name": "file", "config":
    FileBackendConfig}`` or ``{"name": "object", "config": ObjectStorageConfig}``."""
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _rules(_BACKEND_RULES)})
    name: Literal["default", "file", "object"] = Field("default", description="default, file or object.")
    config: BackendOptions | None = Field(None, description="The file or object backend's options.")

    @model_validator(mode="after")
    def _options_match_the_backend(self) -> StorageBackendConfig:
        given = set() if self.config is None else self.config.model_fields_set
        if (self.name == "default") != (self.config is None):
            raise ValueError(_BACKEND_RULES[0]["message"])
        if self.name == "object" and "url" not in given:
            raise ValueError(_BACKEND_RULES[1]["message"])
        if self.name == "object" and given & set(_FILE_ONLY):
            raise ValueError(_BACKEND_RULES[2]["message"])
        if self.name == "file" and "url" in given:
            raise ValueError(_BACKEND_RULES[3]["message"])
        return self


class StorageOptions(FelderaModel):
    """Feldera's ``StorageOptions``."""
    backend: StorageBackendConfig = Field(
        default_factory=StorageBackendConfig, json_schema_extra={"default": {"name": "default"}},
        description="How to connect to the underlying storage.")
    min_storage_bytes: UInt64 | None = None
    min_step_storage_bytes: UInt64 | None = None
    compression: StorageCompression = "default"
    cache_mib: UInt64 | None = Field(None, description="The in-memory storage cache, in MiB.")


# --------------------------------------------------------------------------------------
# Resources, fault tolerance, tweaks
# --------------------------------------------------------------------------------------


class ResourceConfig(FelderaModel):
    """Feldera's ``ResourceConfig``."""
    cpu_cores_min: float | None = Field(None, ge=0)
    cpu_cores_max: float | None = Field(None, ge=0)
    memory_mb_min: UInt64 | None = None
    memory_mb_max: UInt64 | None = None
    storage_mb_max: UInt64 | None = None
    storage_class: Annotated[str, Field(max_length=MAX_NAME)] | None = None
    service_account_name: Annotated[str, Field(max_length=MAX_NAME)] | None = None
    namespace: Annotated[str, Field(max_length=63)] | None = None


class FtConfig(FelderaModel):
    """Feldera's ``FtConfig``. ``{}`` enables fault tolerance (exactly once), as in Feldera."""
    model: Literal["at_least_once", "exactly_once", "none"] = Field(
        "exactly_once", description="at_least_once, exactly_once or none (fault tolerance off).")
    checkpoint_interval_secs: UInt64 | None = Field(
        60, json_schema_extra=_nullable(),
        description="Seconds between automatic checkpoints (null: none); forced into 1..3600.")

    @field_validator("model", mode="before")
    @classmethod
    def _none_in_any_case(cls, value: Any) -> Any:
        return "none" if isinstance(value, str) and value.lower() == "none" else value


FT_DISABLED: dict[str, Any] = {"model": "none", "checkpoint_interval_secs": 60}


class DevTweaks(FelderaModel):
    """Feldera's ``DevTweaks``: the tweaks of this Feldera version (Feldera passes any other key on to
    the runtime; this schema does not accept one)."""
    adaptive_joins: bool | None = None
    balancer_balance_tax: float | None = None
    balancer_key_distribution_refresh_threshold: float | None = None
    balancer_min_absolute_improvement_threshold: UInt64 | None = None
    balancer_min_relative_improvement_threshold: float | None = None
    bloom_false_positive_rate: float | None = None
    buffer_cache_allocation_strategy: BufferCacheAllocationStrategy | None = None
    buffer_cache_strategy: BufferCacheStrategy | None = None
    buffer_max_buckets: UInt64 | None = None
    disable_auto_transaction: bool | None = None
    eager_evict: bool | None = None
    enable_roaring: bool | None = None
    fbuf_slab_bytes_per_class: UInt64 | None = None
    fetch_distinct: bool | None = None
    fetch_join: bool | None = None
    max_level0_batch_size_records: UInt32 | None = None
    merger: MergerType | None = None
    merger_threads: UInt32 | None = None
    negative_weight_multiplier: UInt32 | None = None
    now_http_driven: bool | None = None
    now_offset: dt.datetime | None = Field(None, json_schema_extra={"maxLength": 64},
                                           description="RFC 3339: SQL NOW() at the first start.")
    splitter_chunk_size_records: UInt64 | None = None
    stack_overflow_backtrace: bool | None = None
    storage_mb_max: UInt64 | None = None
    streaming_exchange: bool | None = None


class PipelineTemplateConfig(FelderaModel):
    """Feldera's ``PipelineTemplateConfig`` (Feldera Enterprise): a ConfigMap holding a StatefulSet
    template."""
    name: Name = Field(description="The ConfigMap's name.")
    key: Annotated[str, Field(min_length=1, max_length=MAX_NAME)] = "pipelineTemplate"


# Sidecars (``init_containers``): Kubernetes containers, camelCase as Kubernetes spells them.


class SidecarEnvVar(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1, max_length=MAX_ENV_NAME)]
    value: Text | None = None


class SidecarPort(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(max_length=15)] | None = None
    containerPort: int = Field(ge=1, le=65535)  # noqa: N815 (Kubernetes' name)
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None


class SidecarVolumeMount(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Name
    mountPath: Text  # noqa: N815
    readOnly: bool | None = None  # noqa: N815
    subPath: Text | None = None  # noqa: N815


_Quantity = Annotated[str, Field(max_length=64)]


class SidecarResourceList(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    cpu: _Quantity | None = None
    memory: _Quantity | None = None
    ephemeral_storage: _Quantity | None = Field(None, alias="ephemeral-storage")


class SidecarResources(BaseModel):
    model_config = ConfigDict(extra="ignore")
    requests: SidecarResourceList | None = None
    limits: SidecarResourceList | None = None


class SidecarContainer(BaseModel):
    """A Kubernetes container, with the fields a sidecar needs."""
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1, max_length=63)]
    image: Annotated[str, Field(max_length=512)] | None = None
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = None  # noqa: N815
    command: list[Text] | None = Field(None, max_length=MAX_LIST)
    args: list[Text] | None = Field(None, max_length=MAX_LIST)
    workingDir: Text | None = None  # noqa: N815
    env: list[SidecarEnvVar] | None = Field(None, max_length=MAX_LIST)
    ports: list[SidecarPort] | None = Field(None, max_length=MAX_LIST)
    resources: SidecarResources | None = None
    volumeMounts: list[SidecarVolumeMount] | None = Field(None, max_length=MAX_LIST)  # noqa: N815


# --------------------------------------------------------------------------------------
# RuntimeConfig and ProgramConfig
# --------------------------------------------------------------------------------------

_RESERVED_LIST = "[" + ", ".join(f"'{n}'" for n in RESERVED_ENV) + "]"
_RESERVED_PREFIX = " || ".join(f"k.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
_ENV_RULES: list[dict[str, str]] = [
    {"rule": f"self.all(k, size(k) >= 1 && size(k) <= {MAX_ENV_NAME})",
     "message": f"names are 1 to {MAX_ENV_NAME} characters"},
    {"rule": f"self.all(k, !(k in {_RESERVED_LIST}) && !({_RESERVED_PREFIX}))",
     "message": "reserved names cannot be set: " + ", ".join(RESERVED_ENV) + " and names starting with "
                + ", ".join(RESERVED_ENV_PREFIXES)},
]


def env_problem(env: dict[str, str]) -> str | None:
    """Feldera's ``validate_pipeline_env``: the reserved names among ``env``'s, if any."""
    reserved = [k for k in env if k in RESERVED_ENV or k.startswith(RESERVED_ENV_PREFIXES)]
    if reserved:
        return ("the following environment variable(s) are reserved and cannot be overridden: "
                + ", ".join(sorted(reserved)))
    return None


class RuntimeConfig(FelderaModel):
    """Feldera's ``RuntimeConfig``: the pipeline's runtime configuration."""
    workers: UInt16 = Field(8, description="DBSP worker threads.")
    max_rss_mb: UInt64 | None = Field(None, description="Memory the pipeline may use on each host, in MB.")
    datafusion_memory_mb: UInt64 | None = None
    hosts: UInt64 = Field(1, description="DBSP hosts (Feldera Enterprise).")
    storage: StorageOptions | None = Field(
        default_factory=StorageOptions,
        json_schema_extra=_nullable(default={"backend": {"name": "default"}, "compression": "default"}),
        description="Storage configuration (null: state in memory only).")
    fault_tolerance: FtConfig = Field(
        default_factory=lambda: FtConfig.model_validate(FT_DISABLED), json_schema_extra={"default": FT_DISABLED},
        description="Fault tolerance (model none: off).")
    cpu_profiler: bool = True
    tracing: bool = False
    tracing_endpoint_jaeger: Annotated[str, Field(max_length=1024)] = "127.0.0.1:6831"
    min_batch_size_records: UInt64 = 0
    max_buffering_delay_usecs: UInt64 = 0
    resources: ResourceConfig = Field(default_factory=ResourceConfig, json_schema_extra={"default": {}})
    clock_resolution_usecs: UInt64 | None = Field(1_000_000, json_schema_extra=_nullable())
    pin_cpus: list[UInt64] = Field(default_factory=list, max_length=MAX_PIN_CPUS,
                                   json_schema_extra={"default": []})
    provisioning_timeout_secs: UInt64 | None = Field(
        None, description="Seconds Provisioning may take (unless deployment.provisioningTimeoutSeconds is set).")
    max_parallel_connector_init: UInt64 | None = None
    init_containers: list[SidecarContainer] | None = Field(
        None, max_length=MAX_SIDECARS, description="Sidecar containers (Feldera Enterprise; not run by this "
                                                   "operator).")
    checkpoint_during_suspend: bool = Field(True, description="Deprecated: no effect.")
    http_workers: UInt64 | None = None
    io_workers: UInt64 | None = None
    env: dict[str, Text] = Field(
        default_factory=dict, max_length=MAX_ENV,
        json_schema_extra={"default": {}, "x-kubernetes-validations": _rules(_ENV_RULES)},
        description="Environment variables of the pipeline process (Feldera's reserved names excluded).")
    dev_tweaks: DevTweaks = Field(default_factory=DevTweaks, json_schema_extra={"default": {}})
    logging: Text | None = Field(None, description="Log filtering directives.")
    pipeline_template_configmap: PipelineTemplateConfig | None = None

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_as_bool(cls, value: Any) -> Any:
        """Feldera still reads ``true`` (the default storage) and ``false`` (none)."""
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("fault_tolerance", mode="before")
    @classmethod
    def _legacy_fault_tolerance(cls, value: Any) -> Any:
        """Feldera reads null as "off" and the old ``initial_state``/``latest_checkpoint`` as "on"."""
        if value is None:
            return dict(FT_DISABLED)
        if value in ("initial_state", "latest_checkpoint"):
            return {}
        return value

    @field_validator("env")
    @classmethod
    def _env_not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not 1 <= len(name) <= MAX_ENV_NAME:
                raise ValueError(_ENV_RULES[0]["message"])
        problem = env_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def given(config: BaseModel) -> dict[str, Any]:
    """What a configuration read from a client says, as JSON to store: the fields it gave (keys Feldera does
    not know are gone, legacy forms are in the current form), without the nulls that say no more than a
    missing field (the API server would refuse them where the schema is not nullable)."""
    out: dict[str, Any] = {}
    fields = type(config).model_fields
    for name in sorted(config.model_fields_set, key=list(fields).index):
        info = fields[name]
        value = getattr(config, name)
        if value is None:
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("nullable"):
                out[info.alias or name] = None
            continue
        if isinstance(value, BaseModel):
            out[info.alias or name] = given(value)
        elif isinstance(value, list):
            out[info.alias or name] = [given(v) if isinstance(v, BaseModel) else to_jsonable_python(v) for v in value]
        else:
            out[info.alias or name] = to_jsonable_python(value)
    return out


class ProgramConfig(FelderaModel):
    """Feldera's ``ProgramConfig``."""
    profile: CompilationProfile | None = Field(None, description="The compilation profile (none: the compiler's).")
    cache: bool = Field(True, description="Reuse the output of an earlier compilation of the same program.")
    runtime_version: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="Another runtime version (Feldera's unstable feature).")
