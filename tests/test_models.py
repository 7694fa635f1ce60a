"""The domain model matches Feldera's API contract exactly."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import uuid
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from pipeline_operator import feldera_config as fc
from pipeline_operator import models as m
from pipeline_operator.core.emission import UuidV7

# Feldera c44a2456a's own openapi.json (v0.306.0, the version the API matches, as the API serves it): every
# schema check of the tests reads it.
OPENAPI = json.loads(resources.files("pipeline_operator").joinpath("data/feldera-openapi.json").read_text())
SCHEMAS = OPENAPI["components"]["schemas"]
# The subset of Feldera 0.337.0's document the project started from (lifecycle actions and monitor events).
SHARED_COPY = Path(__file__).resolve().parents[2] / "shared" / "reference" / "feldera-openapi-subset.json"


def _nullable_as_null_type(node):
    """Feldera's document (utoipa) writes "this type or null" as ``allOf: [$ref]`` plus
    ``nullable: true``; strict OAS 3.0 validators apply the enum inside ``allOf`` to null too.
    Rewritten as JSON Schema's ``anyOf: [..., {type: null}]``, it says what it means."""
    if isinstance(node, list):
        return [_nullable_as_null_type(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_as_null_type(v) for k, v in node.items()}
    if node.get("nullable") is True:  # the keyword (a property that is *named* nullable is a schema)
        del node["nullable"]
        return {"anyOf": [node, {"type": "null"}]}
    node.pop("nullable", None) if node.get("nullable") is False else None
    return node


# c44's document types SqlType by its Rust variants (utoipa's reading: "BigInt", {"Interval": "Day"}), but c44
# writes a column's type with its own Serialize (crates/feldera-types/src/program_schema.rs): these names.
SQL_TYPE_WIRE_NAMES = {
    "Boolean": "BOOLEAN", "TinyInt": "TINYINT", "SmallInt": "SMALLINT", "Int": "INTEGER", "BigInt": "BIGINT",
    "UTinyInt": "UTINYINT", "USmallInt": "USMALLINT", "UInt": "UINTEGER", "UBigInt": "UBIGINT", "Real": "REAL",
    "Double": "DOUBLE", "Decimal": "DECIMAL", "Char": "CHAR", "Varchar": "VARCHAR", "Binary": "BINARY",
    "Varbinary": "VARBINARY", "Time": "TIME", "Date": "DATE", "Timestamp": "TIMESTAMP", "Array": "ARRAY",
    "Struct": "STRUCT", "Map": "MAP", "Null": "NULL", "Uuid": "UUID", "Variant": "VARIANT",
    "Day": "INTERVAL_DAY", "DayToHour": "INTERVAL_DAY_HOUR", "DayToMinute": "INTERVAL_DAY_MINUTE",
    "DayToSecond": "INTERVAL_DAY_SECOND", "Hour": "INTERVAL_HOUR", "HourToMinute": "INTERVAL_HOUR_MINUTE",
    "HourToSecond": "INTERVAL_HOUR_SECOND", "Minute": "INTERVAL_MINUTE", "MinuteToSecond": "INTERVAL_MINUTE_SECOND",
    "Month": "INTERVAL_MONTH", "Second": "INTERVAL_SECOND", "Year": "INTERVAL_YEAR",
    "YearToMonth": "INTERVAL_YEAR_MONTH",
}


# Objects c44 answers with more fields than its document declares: left open.
OPEN_IN_C44 = {
    # PartialProgramInfo.schema is any JSON, passed on from the SQL compiler, which writes each table's
    # foreign_keys (sql-to-dbsp-compiler's CreateTableStatement.java); Relation does not declare them.
    "Relation",
}


def _closed(components: dict) -> dict:
    """The components with every object closed to the fields its schema declares (JSON Schema's
    ``unevaluatedProperties: false``): a field c44 does not have (one of a newer Feldera's) fails. An
    ``allOf`` of several schemas is closed as a whole, the schemas it is made of are not."""
    def refs(node) -> set[str]:
        return {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node, dict) and "$ref" in node else set()

    def composed(node) -> set[str]:
        if isinstance(node, list):
            return set().union(*map(composed, node)) if node else set()
        if not isinstance(node, dict):
            return set()
        found = set().union(*map(refs, node["allOf"])) if len(node.get("allOf", ())) > 1 else set()
        return found.union(*map(composed, node.values()))

    parts = composed(components) | OPEN_IN_C44

    def close(node, part: bool = False):
        if not isinstance(node, dict):
            return node
        whole = len(node.get("allOf", ())) > 1
        node = dict(node)
        for key in ("allOf", "anyOf", "oneOf"):
            if key in node:
                node[key] = [close(n, whole and key == "allOf") for n in node[key]]
        for key in ("items", "additionalProperties", "not"):
            if key in node:
                node[key] = close(node[key])
        if isinstance(node.get("properties"), dict):
            node["properties"] = {k: close(v) for k, v in node["properties"].items()}
        if (whole or "properties" in node) and not part and "additionalProperties" not in node:
            node["unevaluatedProperties"] = False
        return node

    schemas = {name: close(schema, name in parts) for name, schema in components["schemas"].items()}
    return {**components, "schemas": schemas}


# What c44's answers have that its document leaves out (its source is the truth): GET pipeline's answer
# flattens the pipeline's BootstrapConfig in (PipelineSelectedInfoInternal, crates/pipeline-manager/src/api/
# endpoints/pipeline_management.rs), with every selector.
C44_UNDOCUMENTED = {"PipelineSelectedInfo": {
    "bootstrap_policy": {"anyOf": [{"$ref": "#/components/schemas/BootstrapPolicy"}, {"type": "null"}]},
    "silent_bootstrap": {"type": "boolean"}}}
# What the operator adds to c44's answers (docs/api.md): a pipeline's tags (spec.tags; v0.306 has none).
OPERATOR_ADDITIONS = {name: {"tags": {"type": "array", "items": {"type": "string"}}}
                      for name in ("PipelineSelectedInfo", "PipelineInfo")}


def _as_c44_answers(components: dict) -> dict:
    schemas = {**components["schemas"], "SqlType": {"type": "string", "enum": list(SQL_TYPE_WIRE_NAMES.values())}}
    for name, fields in C44_UNDOCUMENTED.items():
        schema = schemas[name]
        schemas[name] = {**schema, "properties": {**schema["properties"], **fields},
                         "required": [*schema["required"], *fields]}
    for name, fields in OPERATOR_ADDITIONS.items():
        schemas[name] = {**schemas[name], "properties": {**schemas[name]["properties"], **fields}}
    return {**components, "schemas": schemas}


_COMPONENTS: dict[int, dict] = {}


def feldera_components(document: dict | None = None) -> dict:
    """The components of a Feldera document (c44's by default) as the checks read them: nullability as
    JSON Schema writes it, c44's answers where its document differs from them (SqlType, the bootstrap
    configuration), the operator's documented additions, every object closed to its declared fields."""
    document = document or OPENAPI
    if id(document) not in _COMPONENTS:  # the documents are module constants: converted once each
        components = _nullable_as_null_type(document["components"])
        _COMPONENTS[id(document)] = _closed(_as_c44_answers(components))
    return _COMPONENTS[id(document)]


def schema_validator(name: str, document: dict | None = None) -> Draft202012Validator:
    """A validator for one component schema, resolving its $refs within the document (Feldera
    c44a2456a's by default)."""
    components = feldera_components(document)
    return Draft202012Validator({**components["schemas"][name], "components": components})


def test_sql_type_names_are_c44s_variants_as_written():
    variants = [v["enum"][0] for v in SCHEMAS["SqlType"]["oneOf"] if "enum" in v] + SCHEMAS["IntervalUnit"]["enum"]
    assert sorted(variants) == sorted(SQL_TYPE_WIRE_NAMES)
    assert [v for v in SCHEMAS["SqlType"]["oneOf"] if "enum" not in v] == [
        {"type": "object", "required": ["Interval"],
         "properties": {"Interval": {"$ref": "#/components/schemas/IntervalUnit"}}}]


def test_the_checks_refuse_a_field_c44_does_not_have():
    """Closed objects: GlobalControllerMetrics with 0.337's concurrent_bootstrap_phase fails, and so does a
    program's field with an unknown key (an allOf of SqlIdentifier and the field's own properties)."""
    field = {"name": "x", "case_sensitive": False, "columntype": {"type": "INTEGER", "nullable": True},
             "unused": False, "lateness": None, "default": None, "watermark": None}
    schema_validator("Field").validate(field)
    assert not schema_validator("Field").is_valid({**field, "newer": 1})
    assert not schema_validator("CheckpointResponse").is_valid({"checkpoint_sequence_number": 1,
                                                                "incarnation_uuid": str(uuid.uuid4())})
    schema_validator("CheckpointResponse").validate({"checkpoint_sequence_number": 1})


# What Feldera 0.337.0 has that c44a2456a has not, in the reference subset's schemas: two runtime statuses
# (and so combined statuses), and the platform configuration's telemetry keys (c44: one `telemetry`).
NEWER_STATUSES = ["ConcurrentBootstrapping", "Synchronizing"]
NEWER_CONFIGURATION = {"posthog", "conceptualhq", "product_fruits"}


@pytest.mark.skipif(not SHARED_COPY.exists(), reason="the shared reference folder is not beside the checkout")
def test_the_reference_subset_differs_from_c44_only_where_known():
    """The reference subset (0.337.0) names paths and schemas that are all in c44's document, and its
    schemas are c44's but for the known differences, which the operator follows c44 in."""
    reference = json.loads(SHARED_COPY.read_text())
    assert reference["info"]["version"] == "0.337.0" and OPENAPI["info"]["version"] == "0.306.0"
    for path, item in reference["paths"].items():
        assert set(item) == set(OPENAPI["paths"][path]), path
    differ = {name for name, schema in reference["components"]["schemas"].items() if SCHEMAS[name] != schema}
    assert differ == {"RuntimeStatus", "CombinedStatus", "Configuration"}
    for name in ("RuntimeStatus", "CombinedStatus"):
        newer = reference["components"]["schemas"][name]["enum"]
        assert [v for v in newer if v not in NEWER_STATUSES] == SCHEMAS[name]["enum"]
        assert set(NEWER_STATUSES) <= set(newer)
    configuration = reference["components"]["schemas"]["Configuration"]
    assert set(configuration["properties"]) - set(SCHEMAS["Configuration"]["properties"]) == NEWER_CONFIGURATION
    assert set(SCHEMAS["Configuration"]["properties"]) - set(configuration["properties"]) == {"telemetry"}


@pytest.mark.parametrize(("enum", "schema"), [
    (m.ResourcesStatus, "ResourcesStatus"),
    (m.ResourcesDesiredStatus, "ResourcesDesiredStatus"),
    (m.RuntimeStatus, "RuntimeStatus"),
    (m.RuntimeDesiredStatus, "RuntimeDesiredStatus"),
    (m.ProgramStatus, "ProgramStatus"),
    (m.StorageStatus, "StorageStatus"),
    (m.CombinedStatus, "CombinedStatus"),
    (m.CombinedDesiredStatus, "CombinedDesiredStatus"),
    (m.PipelineMonitorEventFieldSelector, "PipelineMonitorEventFieldSelector"),
])
def test_enum_values_are_exactly_feldera_values(enum, schema):
    assert [e.value for e in enum] == SCHEMAS[schema]["enum"]


def test_runtime_status_has_c44s_ten_values_not_the_newer_ones():
    values = {e.value for e in m.RuntimeStatus} | {e.value for e in m.CombinedStatus}
    assert len(m.RuntimeStatus) == 10
    assert not set(NEWER_STATUSES) & values


def test_error_response_matches_the_schema():
    err = m.ErrorResponse(message="Unknown pipeline name 'x'", error_code="UnknownPipelineName",
                          details={"pipeline_name": "x"})
    body = err.model_dump(mode="json")
    schema_validator("ErrorResponse").validate(body)
    assert set(body) == set(SCHEMAS["ErrorResponse"]["required"])


def _event(**overrides) -> m.MonitorEvent:
    base = dict(
        event_id=UuidV7()(dt.datetime(2026, 11, 26, 7, 31, tzinfo=dt.UTC)),
        recorded_at=dt.datetime(2026, 11, 26, 7, 31, 0, 123456, tzinfo=dt.UTC),
        deployment_resources_status=m.ResourcesStatus.PROVISIONED,
        deployment_resources_desired_status=m.ResourcesDesiredStatus.PROVISIONED,
        deployment_runtime_status=m.RuntimeStatus.RUNNING,
        deployment_runtime_status_details={"connector_stats": {"num_errors": 0}},
        deployment_runtime_desired_status=m.RuntimeDesiredStatus.RUNNING,
        program_status=m.ProgramStatus.SUCCESS,
        storage_status=m.StorageStatus.IN_USE,
        storage_status_details={"checkpoints": [{"uuid": "x", "steps": 3}]},
    )
    base.update(overrides)
    return m.MonitorEvent(**base)


STATUS_KEYS = ["event_id", "recorded_at", "deployment_resources_status", "deployment_resources_desired_status",
               "deployment_runtime_status", "deployment_runtime_desired_status", "deployment_has_error",
               "program_status", "storage_status"]
ALL_KEYS = ["event_id", "recorded_at", "deployment_resources_status", "deployment_resources_status_details",
            "deployment_resources_desired_status", "deployment_runtime_status",
            "deployment_runtime_status_details", "deployment_runtime_desired_status", "deployment_has_error",
            "deployment_error", "program_status", "storage_status", "storage_status_details"]


def test_status_selector_omits_details_and_error_and_keeps_feldera_order():
    body = m.project_event(_event(), "status")
    assert list(body) == STATUS_KEYS
    schema_validator("PipelineMonitorEventSelectedInfo").validate(body)


def test_all_selector_includes_absent_details_as_null():
    body = m.project_event(_event(deployment_runtime_status_details=None, storage_status_details=None), "all")
    assert list(body) == ALL_KEYS
    assert body["deployment_resources_status_details"] is None
    assert body["deployment_runtime_status_details"] is None
    assert body["storage_status_details"] is None
    assert body["deployment_error"] is None
    assert body["deployment_has_error"] is False
    schema_validator("PipelineMonitorEventSelectedInfo").validate(body)


def test_has_error_is_derived_from_the_error():
    err = m.ErrorResponse(message="worker panicked", error_code="WorkerPanic", details={"worker": 1})
    stopped = _event(deployment_resources_status=m.ResourcesStatus.STOPPING, deployment_runtime_status=None,
                     deployment_runtime_desired_status=None, deployment_error=err)
    status = m.project_event(stopped, m.PipelineMonitorEventFieldSelector.STATUS)
    full = m.project_event(stopped, m.PipelineMonitorEventFieldSelector.ALL)
    assert status["deployment_has_error"] is True and "deployment_error" not in status
    assert full["deployment_error"] == {"message": "worker panicked", "error_code": "WorkerPanic",
                                        "details": {"worker": 1}}
    assert status["deployment_runtime_status"] is None  # null unless Provisioned, but present
    for body in (status, full):
        schema_validator("PipelineMonitorEventSelectedInfo").validate(body)


def test_projection_output_fails_the_schema_when_a_required_field_is_missing():
    """The schema check above can fail: a projection without storage_status is rejected."""
    body = m.project_event(_event(), "status")
    del body["storage_status"]
    with pytest.raises(Exception, match="storage_status"):
        schema_validator("PipelineMonitorEventSelectedInfo").validate(body)


def test_unknown_selector_is_rejected():
    with pytest.raises(ValueError):
        m.project_event(_event(), "everything")


@pytest.mark.parametrize(("micro", "text"), [
    (0, "2026-11-26T07:31:00Z"),
    (120000, "2026-11-26T07:31:00.120Z"),
    (123456, "2026-11-26T07:31:00.123456Z"),
    (100, "2026-11-26T07:31:00.000100Z"),
])
def test_recorded_at_is_rfc3339_utc_like_chrono(micro, text):
    t = dt.datetime(2026, 11, 26, 8, 31, 0, micro, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert m.format_timestamp(t) == text
    assert dt.datetime.fromisoformat(text.replace("Z", "+00:00")) == t


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError):
        m.format_timestamp(dt.datetime(2026, 1, 1))


def test_event_ids_are_uuidv7_and_time_ordered():
    gen = UuidV7()
    t0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    ids = [gen(t0) for _ in range(5000)] + [gen(t0 + dt.timedelta(milliseconds=1))] \
        + [gen(t0 - dt.timedelta(seconds=5))]  # the clock stepping back keeps order
    assert all(isinstance(i, uuid.UUID) and i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids, key=lambda u: u.int)
    assert len(set(ids)) == len(ids)
    assert (ids[0].int >> 80) == int(t0.timestamp() * 1000)


def test_crd_spec_defaults_and_camel_case_round_trip():
    spec = m.PipelineSpec.model_validate({"desiredStatus": "Provisioned", "program": {"sql": "SELECT 1"},
                                          "storage": {"size": "10Gi", "storageClassName": "fast"}})
    assert spec.initial_runtime_status is m.InitialRuntimeStatus.RUNNING
    assert spec.stop_mode is m.StopMode.GRACEFUL
    assert spec.to_resource()["storage"] == {"size": "10Gi", "storageClassName": "fast"}
    with pytest.raises(ValueError, match="desiredStatus"):
        m.PipelineSpec.model_validate({"desiredStatus": "Running"})


def test_camelize_is_the_one_mapping_to_resource_field_names():
    assert m.camelize({"deployment_resources_status": 1, "nested": [{"storage_status_details": 2}]}) == \
        {"deploymentResourcesStatus": 1, "nested": [{"storageStatusDetails": 2}]}
    assert set(m.HistoryEntry.model_json_schema(by_alias=True)["properties"]) == \
        {m.camelize({k: 0}).popitem()[0] for k in STATUS_KEYS}


def test_events_recovered_from_status_history_keep_deployment_has_error():
    """A store seeded from ``status.history`` (which keeps no error text) keeps ``deployment_has_error``:
    the newest entries with an error carry the error latched now, older episodes a marker."""
    import datetime as dt
    import uuid

    from pipeline_operator.models import ErrorResponse, HistoryEntry, project_event
    from pipeline_operator.reconcile.history import ERROR_NOT_RETAINED, history_events

    def entry(minute: int, has_error: bool) -> HistoryEntry:
        return HistoryEntry(event_id=uuid.uuid4(), recorded_at=dt.datetime(2026, 11, 28, 8, minute, tzinfo=dt.UTC),
                            deployment_resources_status="Stopped", deployment_resources_desired_status="Stopped",
                            deployment_has_error=has_error, program_status="Success", storage_status="InUse")

    latched = ErrorResponse(message="worker panicked", error_code="WorkerPanic", details={"worker": 0})
    history = [entry(5, True), entry(4, True), entry(3, False), entry(2, True)]  # newest first
    events = history_events(history, latched)
    assert [project_event(e, "status")["deployment_has_error"] for e in events] == [True, True, False, True]
    assert [e.deployment_error for e in events] == [latched, latched, None, ERROR_NOT_RETAINED]
    assert all(project_event(e, "all")["deployment_has_error"] == h.deployment_has_error
               for e, h in zip(history_events(history, None), history, strict=True))


def test_every_feldera_field_is_declared_once_and_reaches_every_projection():
    """PipelineDeployment declares Feldera's fields; the core's state, the resource's status (and
    its CRD schema), the monitor event and its history entry are derived from it."""
    from pydantic.alias_generators import to_camel

    from pipeline_operator.controller.crd import render
    from pipeline_operator.core.lifecycle import PipelineState
    from pipeline_operator.models import (
        EVENT_FIELDS,
        STATUS_FIELDS,
        EventStatus,
        HistoryEntry,
        PipelineDeployment,
        PipelineStatus,
    )
    declared = set(PipelineDeployment.model_fields)
    assert declared <= set(PipelineState.model_fields)
    assert declared <= set(PipelineStatus.model_fields)
    assert set(EVENT_FIELDS) == set(EventStatus.model_fields) and set(EVENT_FIELDS) <= declared
    assert {f for f in STATUS_FIELDS if f != "deployment_error"} | {"deployment_has_error"} <= set(
        HistoryEntry.model_fields)
    schema = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {to_camel(f) for f in declared} <= set(schema)
    for name, info in PipelineDeployment.model_fields.items():  # types carry over, made optional
        status_info = PipelineStatus.model_fields[name]
        assert status_info.default is None and status_info.description == info.description, name


def test_network_policy_peers_round_trip_with_kubernetes_spelling():
    given = [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
             {"podSelector": {"matchLabels": {"app": "x"},
                              "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}}]
    spec = m.PipelineSpec.model_validate({"deployment": {"allowIngressFrom": given}})
    assert spec.to_resource()["deployment"]["allowIngressFrom"] == given
    with pytest.raises(ValueError, match="operator"):
        m.PipelineSpec.model_validate({"deployment": {"allowIngressFrom": [
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}})


# -- Feldera's runtime_config and program_config ---------------------------------------------------------

CONFIG_SCHEMAS = SCHEMAS  # RuntimeConfig, ProgramConfig and the schemas they reference
# Where the CRD says more than Feldera's OpenAPI, from Feldera's Rust types (crates/feldera-types/src/config.rs).
RUST_DEFAULTS = {"RuntimeConfig.fault_tolerance.checkpoint_interval_secs": 60}


def _feldera_node(node: dict) -> dict:
    """A property's schema with utoipa's ``allOf: [$ref]`` resolved (its siblings kept)."""
    if "allOf" in node:
        (ref,) = node["allOf"]
        target = CONFIG_SCHEMAS[ref["$ref"].rsplit("/", 1)[-1]]
        return {**target, **{k: v for k, v in node.items() if k != "allOf"}}
    if "$ref" in node:
        return {**CONFIG_SCHEMAS[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _compare_schema(feldera: dict, ours: dict, path: str) -> list[str]:
    """Differences between one of Feldera's schemas and the CRD's node for it: properties, types, enums,
    defaults, minima, nullability (an explicit null Feldera reads differently from a missing field)."""
    feldera = _feldera_node(feldera)
    problems = []
    if "oneOf" in feldera:  # StorageBackendConfig and FtConfig.model are checked on their own
        return problems
    kind = feldera.get("type")
    if kind is not None and ours.get("type") != kind and not (kind == "integer" and ours.get("type") == "integer"):
        problems.append(f"{path}: type {ours.get('type')} instead of Feldera's {kind}")
    if "enum" in feldera and ours.get("enum") != feldera["enum"]:
        problems.append(f"{path}: enum {ours.get('enum')} instead of Feldera's {feldera['enum']}")
    if feldera.get("minimum") is not None and ours.get("minimum") != feldera["minimum"]:
        problems.append(f"{path}: minimum {ours.get('minimum')} instead of Feldera's {feldera['minimum']}")
    default = _without_nulls(feldera.get("default"))
    expected_default = RUST_DEFAULTS.get(path, default)
    if expected_default is not None and ours.get("default") != expected_default:
        problems.append(f"{path}: default {ours.get('default')!r} instead of Feldera's {expected_default!r}")
    if expected_default is not None and feldera.get("nullable") and not ours.get("nullable"):
        problems.append(f"{path}: not nullable (Feldera reads null as 'none', unlike the default)")
    if kind == "array" and "items" in feldera:
        problems += _compare_schema(feldera["items"], ours.get("items") or {}, f"{path}[]")
    for name, prop in (feldera.get("properties") or {}).items():
        if name not in (ours.get("properties") or {}):
            problems.append(f"{path}.{name}: missing")
            continue
        problems += _compare_schema(prop, ours["properties"][name], f"{path}.{name}")
    for name in (ours.get("properties") or {}):
        if name not in (feldera.get("properties") or {}) and feldera.get("properties") is not None:
            problems.append(f"{path}.{name}: not a field of Feldera's")
    if set(feldera.get("required") or []) != set(ours.get("required") or []):
        problems.append(f"{path}: required {ours.get('required')} instead of Feldera's {feldera.get('required')}")
    return problems


def _crd_spec() -> dict:
    from pipeline_operator.controller import crd
    return crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


@pytest.mark.parametrize(("schema", "field"), [("RuntimeConfig", "runtimeConfig"), ("ProgramConfig", "programConfig")])
def test_crd_configurations_are_feldera_schemas(schema, field):
    """The CRD's runtimeConfig and programConfig against Feldera's OpenAPI (v0.305): a field Feldera adds,
    drops or changes fails here. Known differences, each checked below: storage backends in one object,
    dev_tweaks closed, init_containers typed."""
    ours = copy.deepcopy(_crd_spec()[field])
    if schema == "RuntimeConfig":
        ours["properties"].pop("init_containers")
        ours["properties"]["storage"]["properties"].pop("backend")
    problems = _compare_schema(CONFIG_SCHEMAS[schema], ours, schema)
    if schema == "RuntimeConfig":  # init_containers: any JSON in Feldera's OpenAPI
        problems = [p for p in problems if not p.startswith(("RuntimeConfig.init_containers",
                                                            "RuntimeConfig.storage.backend"))]
    assert problems == []


def test_crd_storage_backends_are_feldera_backends():
    backend = _crd_spec()["runtimeConfig"]["properties"]["storage"]["properties"]["backend"]
    variants = CONFIG_SCHEMAS["StorageBackendConfig"]["oneOf"]
    assert backend["properties"]["name"]["enum"] == [v["properties"]["name"]["enum"][0] for v in variants]
    assert backend["default"] == CONFIG_SCHEMAS["StorageOptions"]["properties"]["backend"]["default"]
    options = backend["properties"]["config"]
    file_options = copy.deepcopy(options)
    file_options["properties"] = {k: v for k, v in options["properties"].items()
                                  if k in CONFIG_SCHEMAS["FileBackendConfig"]["properties"]}
    assert _compare_schema(CONFIG_SCHEMAS["FileBackendConfig"], file_options, "FileBackendConfig") == []
    # The object store: Feldera's url and string options (its additionalProperties), each bounded.
    objects = CONFIG_SCHEMAS["ObjectStorageConfig"]
    assert objects["additionalProperties"]["type"] == "string" and objects["required"] == ["url"]
    for name in ("url", *fc.OBJECT_STORE_OPTIONS):
        assert options["properties"][name]["type"] == "string" and options["properties"][name]["maxLength"], name
    documented = set(re.findall(r"`([a-z_]+)`: ", objects["additionalProperties"]["description"]))
    assert documented <= set(fc.OBJECT_STORE_OPTIONS)


def test_crd_fault_tolerance_model_is_feldera_none_as_string():
    model = _crd_spec()["runtimeConfig"]["properties"]["fault_tolerance"]["properties"]["model"]
    feldera = CONFIG_SCHEMAS["FtConfig"]["properties"]["model"]
    assert model["enum"] == CONFIG_SCHEMAS["FtModel"]["enum"] + feldera["oneOf"][1]["enum"]
    assert model["default"] == feldera["default"]


def test_crd_dev_tweaks_are_this_versions_and_closed():
    """Feldera's DevTweaks also passes any other key on to the runtime (any JSON): the CRD does not."""
    ours = _crd_spec()["runtimeConfig"]["properties"]["dev_tweaks"]
    assert set(ours["properties"]) == set(CONFIG_SCHEMAS["DevTweaks"]["properties"])
    assert "additionalProperties" not in ours and not ours.get("x-kubernetes-preserve-unknown-fields")


@pytest.mark.parametrize(("given", "read"), [
    ({"storage": True}, {"storage": {}}),
    ({"storage": False}, {"storage": None}),
    ({"fault_tolerance": None}, {"fault_tolerance": fc.FT_DISABLED}),
    ({"fault_tolerance": "initial_state"}, {"fault_tolerance": {}}),
    ({"fault_tolerance": {"model": "NONE"}}, {"fault_tolerance": {"model": "none"}}),
    ({"workers": 4, "unknown_to_feldera": {"a": 1}}, {"workers": 4}),
])
def test_runtime_config_reads_what_feldera_reads(given, read):
    assert fc.RuntimeConfig.model_validate(given).model_dump(mode="json", exclude_unset=True) == read


@pytest.mark.parametrize(("given", "field"), [
    ({"workers": 70000}, "workers"),
    ({"workers": "many"}, "workers"),
    ({"storage": {"compression": "zstd"}}, "storage.compression"),
    ({"storage": {"backend": {"name": "object", "config": {"url": "s3://b", "sync": {"bucket": "b"}}}}},
     "storage.backend"),
    ({"storage": {"backend": {"name": "file"}}}, "storage.backend"),
    ({"env": {"FELDERA_X": "1"}}, "env"),
    ({"fault_tolerance": {"model": "twice"}}, "fault_tolerance.model"),
    ({"storage": {"backend": {"name": "file", "config": {"sync": {"bucket": "b", "transfers": 300}}}}},
     "storage.backend.config.sync.transfers"),
])
def test_runtime_config_refuses_what_feldera_refuses(given, field):
    with pytest.raises(ValidationError) as caught:
        fc.RuntimeConfig.model_validate(given)
    assert field in {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}


@pytest.mark.parametrize(("kept", "read"), [
    ("18446744073709551615", 18446744073709551615),
    ("0", 0),
    ("18446744073709551616", "18446744073709551616"),  # beyond u64: not a fingerprint, left as it is
    ("-1", "-1"), ("１２", "１２"), ("1e3", "1e3"), ("", ""), (12, 12), (None, None),
])
def test_a_fingerprint_the_status_keeps_as_text_is_read_back_as_the_u64_only(kept, read):
    from pipeline_operator.core.resource import storage_details_from_status, storage_details_to_status
    back = storage_details_from_status({"checkpoints": [{"uuid": "u", "fingerprint": kept}, "not a checkpoint"]})
    assert back["checkpoints"][0]["fingerprint"] == read and back["checkpoints"][1] == "not a checkpoint"
    assert back["checkpoints"][0]["identifier"] is None  # the nulls the API server dropped
    assert storage_details_to_status({"checkpoints": [{"fingerprint": 2**64 - 1}]}) == {
        "checkpoints": [{"fingerprint": "18446744073709551615"}]}
    assert storage_details_from_status(["free", "form"]) == ["free", "form"]
