"""The Pipeline custom resource's spec (:class:`PipelineSpec`), from which the CRD's schema is generated: the
resource's names, the bounds the schema enforces, and every field of the program, deployment (resources,
environment, ingress peers) and storage, camelCase (:class:`CamelModel`)."""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ..feldera_config import ProgramConfig, RuntimeConfig
from .feldera_api import (
    BootstrapPolicy,
    InitialRuntimeStatus,
    ResourcesDesiredStatus,
    SpecRuntimeDesiredStatus,
    StopMode,
)

API_GROUP = "dataflow.dev"
API_VERSION = "v1alpha1"
KIND = "Pipeline"
PLURAL = "pipelines"
SINGULAR = "pipeline"
SHORT_NAMES = ["pl", "fpl"]
CATEGORIES = ["all", "dataflow"]

# Bounds that the CRD schema enforces (and the operator respects when it writes status).
MAX_SQL_LENGTH = 128 * 1024  # the spec is also copied into kubectl's last-applied annotation (256 KiB in all)
MAX_HISTORY_ITEMS = 100
MAX_ENV_VARS = 64
MAX_CONDITION_MESSAGE = 32768
MAX_ERROR_MESSAGE = 8192
MAX_UDF_LENGTH = 32 * 1024
MAX_DESCRIPTION = 4096
MAX_TAGS = 50  # Feldera's maximum number of tags (the HTTP API checks its rules for each tag too)
MAX_TAG = 256


def program_digest(sql: str) -> str:
    """Identifies a program: the status records which program it compiled."""
    return hashlib.sha256(sql.encode()).hexdigest()[:32]


def camelize(obj: Any) -> Any:
    """snake_case keys to camelCase, recursively through dicts and lists (keys only)."""
    if isinstance(obj, dict):
        return {to_camel(k): camelize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camelize(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# The Pipeline custom resource
# --------------------------------------------------------------------------------------

# A Kubernetes resource quantity that is not negative (``10Gi``, ``500m``, ``1.5``).
QUANTITY_PATTERN = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

# A quantity as Kubernetes accepts it: an integer or a string (``cpu: 1`` or ``cpu: "500m"``).
Quantity = Annotated[int | str, Field(json_schema_extra={
    "x-kubernetes-int-or-string": True,
    "pattern": QUANTITY_PATTERN,  # applies to strings only
    "maxLength": 64,
    "x-kubernetes-validations": [{"rule": "type(self) != int || self >= 0",
                                  "message": "must not be negative"}],
})]
FreeForm = Annotated[Any, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


class CamelModel(BaseModel):
    """Fields are snake_case in Python and camelCase in the resource."""
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              use_enum_values=False)

    def to_resource(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ProgramSpec(CamelModel):
    sql: str = Field("", max_length=MAX_SQL_LENGTH,
                     description="The pipeline's SQL program. Changes while the pipeline is not "
                                 "Stopped are held until it is Stopped, then compiled.")
    udf_rust: str | None = Field(None, max_length=MAX_UDF_LENGTH,
                          description="Feldera's udf_rust: kept and served as given (this operator "
                                      "compiles no Rust).")
    udf_toml: str | None = Field(None, max_length=MAX_UDF_LENGTH, description="Feldera's udf_toml: kept and served.")


class ResourceList(CamelModel):
    cpu: Quantity | None = Field(None, description="CPU, e.g. 500m or 2.")
    memory: Quantity | None = Field(None, description="Memory, e.g. 512Mi or 4Gi.")


class ResourceRequirements(CamelModel):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class EnvVar(CamelModel):
    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    value: str = Field("", max_length=4096)


# Label selectors and IP blocks of NetworkPolicy peers, as Kubernetes spells them. The schema bounds
# every list and string so that the API server can check the CEL rules below within its cost budget.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
CIDR_PATTERN = (r"^(([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}"
                r"|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/[0-9]{1,3})$")
MAX_INGRESS_PEERS = 32
MAX_SELECTOR_ITEMS = 32

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
Cidr = Annotated[str, Field(min_length=1, max_length=64, pattern=CIDR_PATTERN)]


class LabelSelectorOperator(str, enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(CamelModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
         "message": "values must be non-empty for the operators In and NotIn and absent for Exists and "
                    "DoesNotExist"}]})
    key: str = Field(min_length=1, max_length=317, description="The label key.")
    operator: LabelSelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] | None = Field(None, max_length=MAX_SELECTOR_ITEMS,
                                            description="The label values (In and NotIn only).")


MAX_LABEL_KEY = 317  # a prefix (a DNS subdomain, 253) and "/" and a name (63)


class LabelSelector(CamelModel):
    match_labels: dict[str, LabelValue] | None = Field(
        None, max_length=MAX_SELECTOR_ITEMS, description="Labels an object must have (all of them).",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": f"self.all(k, size(k) >= 1 && size(k) <= {MAX_LABEL_KEY})",
             "message": f"label keys are 1 to {MAX_LABEL_KEY} characters"}]})
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, max_length=MAX_SELECTOR_ITEMS, description="Requirements an object's labels must meet (all of them).")


class IPBlock(CamelModel):
    cidr: Cidr = Field(description="The admitted addresses, e.g. 10.0.0.0/16.")
    except_: list[Cidr] | None = Field(None, alias="except", max_length=MAX_SELECTOR_ITEMS,
                                       description="Addresses within cidr that are not admitted.")


class NetworkPolicyPeer(CamelModel):
    """A source the pipeline's NetworkPolicy admits, as in a Kubernetes NetworkPolicy: pods selected
    by podSelector (in the pipeline's namespace, or in the namespaces namespaceSelector selects), or
    the addresses of ipBlock."""
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))",
         "message": "set ipBlock alone, or podSelector and/or namespaceSelector"}]})
    pod_selector: LabelSelector | None = Field(None, description="Pods admitted (with namespaceSelector: in the "
                                                                 "namespaces it selects; else in the pipeline's).")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces whose pods are admitted.")
    ip_block: IPBlock | None = Field(None, description="Addresses admitted (outside the cluster's pod network).")


class DeploymentSpec(CamelModel):
    image: str | None = Field(None, min_length=1, max_length=512,
                              description="Container image of the pipeline process "
                                          "(Kubernetes backend). Defaults to the operator's.")
    resources: ResourceRequirements | None = Field(None, description="CPU and memory of the "
                                                   "pipeline process (Kubernetes backend).")
    env: list[EnvVar] = Field(default_factory=list, max_length=MAX_ENV_VARS,
                              description="Environment variables of the pipeline process.",
                              json_schema_extra={"x-kubernetes-list-type": "map",
                                                 "x-kubernetes-list-map-keys": ["name"]})
    provisioning_timeout_seconds: int | None = Field(
        None, ge=1, le=86400,
        description="How long Provisioning may take before the pipeline stops with an error. "
                    "Defaults to the operator's --provisioning-timeout.")
    allow_ingress_from: list[NetworkPolicyPeer] | None = Field(
        None, max_length=MAX_INGRESS_PEERS,
        description="Who else may reach the pipeline process on its port 8080 (Kubernetes backend with "
                    "--network-policies): NetworkPolicy peers, added to the operator's pods, which are always "
                    "admitted.")


class StorageDeletionPolicy(str, enum.Enum):
    """What deleting a Pipeline does to its storage (named after a PersistentVolume's reclaim policy)."""
    DELETE = "Delete"
    RETAIN = "Retain"


class StorageSpec(CamelModel):
    size: Quantity | None = Field(None, description="Size of the pipeline's storage volume, e.g. 10Gi.")
    storage_class_name: str | None = Field(None, min_length=1, max_length=253,
                                           description="StorageClass of the volume.")
    # Unset means Delete (as before the field existed), so that a spec written back is the spec as given.
    deletion_policy: StorageDeletionPolicy | None = Field(
        None,
        description="Delete (the default) removes the storage with the Pipeline; Retain leaves it in place, "
                    "released from the Pipeline and labelled dataflow.dev/retained-from=<name>, for the next "
                    "Pipeline of the same name in the namespace to adopt. Clearing storage deletes it under "
                    "either policy.")


class PipelineSpec(CamelModel):
    """What a pipeline should be. Written by people and GitOps tools; never by the operator."""

    desired_status: ResourcesDesiredStatus = Field(
        ResourcesDesiredStatus.STOPPED,
        description="Provisioned to run the pipeline (Feldera's /start), Stopped to stop it (/stop).")
    initial_runtime_status: InitialRuntimeStatus = Field(
        InitialRuntimeStatus.RUNNING,
        description="Runtime status the pipeline starts in (Feldera's /start?initial=).")
    runtime_desired_status: SpecRuntimeDesiredStatus | None = Field(
        None,
        description="Running or Paused: kept on the pipeline while it is Provisioned (Feldera's "
                    "/resume and /pause) and the status it starts in, unless initialRuntimeStatus "
                    "is Standby; then a change of this field activates it.")
    stop_mode: StopMode = Field(
        StopMode.GRACEFUL,
        description="Graceful suspends the pipeline (checkpoint) before stopping; Force "
                    "deprovisions at once (Feldera's /stop?force=false|true).")
    bootstrap_policy: BootstrapPolicy = Field(
        BootstrapPolicy.AWAIT_APPROVAL,
        description="When the program changed since the pipeline's checkpoint: AwaitApproval waits in "
                    "AwaitingApproval for an approval, Allow bootstraps at once, Reject fails the start "
                    "(Feldera's /start?bootstrap_policy=). Used at the next start.")
    silent_bootstrap: bool = Field(
        False, description="Bootstrap with the output connectors disabled (Feldera's "
                           "/start?silent_bootstrap=). Used at the next start.")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION, description="Feldera's pipeline description.")
    tags: list[Annotated[str, Field(max_length=MAX_TAG)]] | None = Field(
        None, max_length=MAX_TAGS, description="Feldera's pipeline tags (free-form labels).")
    runtime_config: RuntimeConfig | None = Field(
        None, description="Feldera's runtime_config, with Feldera's keys (snake_case), types and defaults. The "
                          "operator uses provisioning_timeout_secs (unless deployment.provisioningTimeoutSeconds is "
                          "set), storage.backend (Standby needs a file backend with sync configured), workers and "
                          "env (the pipeline process's), resources (Kubernetes backend: the container's requests "
                          "and limits and the storage's size and class, where deployment and storage say nothing) "
                          "and hosts (more than 1 fails the start).")
    program_config: ProgramConfig | None = Field(
        None, description="Feldera's program_config, with Feldera's keys (snake_case), types and defaults.")
    program: ProgramSpec = Field(default_factory=ProgramSpec)
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
