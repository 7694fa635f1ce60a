"""What a Pipeline object asks for, read as the monitoring loop reads it: its one-shot and API annotations, the
digests of its spec, and its :class:`~pipeline_operator.core.lifecycle.Desired` state, or why it cannot be read
(:class:`InvalidPipeline`). The HTTP API reads Pipelines the same way, from here, without the loop itself."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..core.lifecycle import Desired
from ..identity import PipelineKey
from ..models import PipelineSpec, program_digest

ANNOTATION_START = "dataflow.dev/start"
ANNOTATION_CLEAR_STORAGE = "dataflow.dev/clear-storage"
ANNOTATION_DISMISS_ERROR = "dataflow.dev/dismiss-error"
ANNOTATION_APPROVE = "dataflow.dev/approve"
ONE_SHOT_ANNOTATIONS = (ANNOTATION_START, ANNOTATION_CLEAR_STORAGE, ANNOTATION_DISMISS_ERROR, ANNOTATION_APPROVE)
# The spec the HTTP API wrote last (its spec_digest), in the same write as the change: by the actions' merge
# patches, and by the CRUD's server-side apply (a key of its own: an apply conflicts with a field the same
# manager wrote by an update). A spec that one of them names was changed through the API (Desired.spec_by_api).
ANNOTATION_API_SPEC = "dataflow.dev/api-spec"
ANNOTATION_API_APPLIED_SPEC = "dataflow.dev/api-applied-spec"
API_SPEC_ANNOTATIONS = (ANNOTATION_API_SPEC, ANNOTATION_API_APPLIED_SPEC)


def key_of(body: Mapping[str, Any]) -> PipelineKey:
    meta = body["metadata"]
    return PipelineKey(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])


def _digest_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


def _config_given(config: BaseModel | None) -> dict[str, Any] | None:
    """A Feldera configuration by what it says: a field at its default is the same as a field left out
    (the API server fills in defaults)."""
    given = config.model_dump(mode="json", exclude_defaults=True) if config is not None else None
    return given or None


def spec_digest(spec: PipelineSpec) -> str:
    """The spec without its client metadata (description, tags). Feldera's configurations count by what
    they say: a field at its default is the same as a field left out (the API server fills in defaults)."""
    lifecycle = spec.model_dump(mode="json", exclude={"description", "tags", "runtime_config", "program_config"},
                                exclude_none=True)
    program = lifecycle.get("program") or {}
    for empty in [k for k in ("udfRust", "udf_rust", "udfToml", "udf_toml") if program.get(k) == ""]:
        del program[empty]  # Feldera's empty values are the same as none
    for name in ("runtime_config", "program_config"):
        given = _config_given(getattr(spec, name))
        if given:
            lifecycle[name] = given
    return _digest_of(lifecycle)


def program_settings_digest(spec: PipelineSpec) -> str:
    """Feldera's program besides its SQL: ``udf_rust``, ``udf_toml`` and ``program_config`` (a change of
    any is a new program version, compiled again)."""
    return _digest_of([spec.program.udf_rust or "", spec.program.udf_toml or "", _config_given(spec.program_config)])


def edit_digest(spec: PipelineSpec) -> str:
    """The fields whose edits Feldera's ``version`` counts: the program, the configurations, the description
    and the tags (not the lifecycle fields that /start, /stop and /pause write)."""
    return _digest_of([spec.program.sql, program_settings_digest(spec), _config_given(spec.runtime_config),
                       spec.description or "", spec.tags or []])


def spec_marker(spec: Mapping[str, Any]) -> str | None:
    """The value of an :data:`API_SPEC_ANNOTATIONS` annotation for a Pipeline whose spec will be ``spec``
    (None if it is not a valid spec: then no marker, and the change counts as made outside the API)."""
    try:
        return spec_digest(PipelineSpec.model_validate(spec))
    except ValidationError:
        return None


def _standby_allowed(spec: PipelineSpec) -> bool:
    """Feldera: Standby needs a file storage backend with sync configured."""
    storage = spec.runtime_config.storage if spec.runtime_config is not None else None
    backend = storage.backend if storage is not None else None
    return backend is not None and backend.name == "file" and backend.config is not None \
        and backend.config.sync is not None


def desired_of(body: dict[str, Any], community_edition: bool = False) -> tuple[Desired, PipelineSpec]:
    """What the Pipeline ``body`` asks for (``community_edition``: its binary is Feldera's community edition,
    as every pipeline of the ``feldera`` compiler mode)."""
    spec = PipelineSpec.model_validate(body.get("spec") or {})
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    digest = spec_digest(spec)
    timeout = spec.deployment.provisioning_timeout_seconds
    if timeout is None and spec.runtime_config is not None and spec.runtime_config.provisioning_timeout_secs:
        timeout = spec.runtime_config.provisioning_timeout_secs
    desired = Desired(
        generation=int(body["metadata"].get("generation") or 1),
        resources_desired_status=spec.desired_status,
        initial=spec.initial_runtime_status,
        runtime_desired_status=spec.runtime_desired_status,
        stop_mode=spec.stop_mode,
        program_digest=program_digest(spec.program.sql),
        program_settings_digest=program_settings_digest(spec),
        edit_digest=edit_digest(spec),
        provisioning_timeout=float(timeout) if timeout else None,
        hosts=spec.runtime_config.hosts if spec.runtime_config is not None else 1,
        bootstrap_policy=spec.bootstrap_policy,
        silent_bootstrap=spec.silent_bootstrap,
        standby_allowed=_standby_allowed(spec),
        community_edition=community_edition,
        spec_digest=digest,
        spec_by_api=any(annotations.get(k) == digest for k in API_SPEC_ANNOTATIONS),
        start=annotations.get(ANNOTATION_START),
        clear_storage=annotations.get(ANNOTATION_CLEAR_STORAGE),
        dismiss_error=annotations.get(ANNOTATION_DISMISS_ERROR),
        approve=annotations.get(ANNOTATION_APPROVE),
    )
    return desired, spec


class InvalidPipeline(Exception):
    """The Pipeline as the API server serves it cannot be read: nested deeper than the operator decodes, or
    its spec or status does not fit the schema (stored before the CRD bounded it, or with its validation
    bypassed). The loop reports it and leaves the pipeline as it is until it is corrected."""


def validation_problem(what: str, exc: ValidationError) -> str:
    said = "; ".join(f"{'.'.join((what, *(str(p) for p in e['loc'])))}: {e['msg'][:200]}" for e in exc.errors()[:5])
    return f"its {what} is not valid: {said}"
