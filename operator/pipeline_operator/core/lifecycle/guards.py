"""May this happen now? The lifecycle's guards, asked by the decision and by the HTTP API before it
writes: Feldera's refusals (:class:`Refusal`), with its error codes, in its order."""

from __future__ import annotations

from typing import Any

from ...feldera_config import RuntimeConfig
from ...models import BootstrapPolicy, ErrorResponse, ResourcesDesiredStatus, RuntimeDesiredStatus
from .model import RDS, RS, PipelineState, R, S, _Frozen

# --------------------------------------------------------------------------------------
# May this happen now? (asked by the decision and by the HTTP API, before it writes)
# --------------------------------------------------------------------------------------


class Refusal(_Frozen):
    """Why an action cannot happen now: Feldera's error, with its HTTP status."""
    http_status: int
    error_code: str
    message: str
    details: Any = None

    def error(self) -> ErrorResponse:
        return ErrorResponse(message=self.message, error_code=self.error_code, details=self.details)


# Feldera's open-source manager's answer to /stop?force=false (CommonError::EnterpriseFeature).
ENTERPRISE_GRACEFUL_STOP = Refusal(
    http_status=501, error_code="EnterpriseFeature",
    message="Cannot use enterprise-only feature (stop?force=false) in Feldera community edition.",
    details={"feature": "stop?force=false"})


_STOPPING_HINT = ("Cannot restart the pipeline while it is stopping. Wait until it is stopped before starting "
                  "the pipeline again.")


def start_refusal(state: PipelineState, current_desired: ResourcesDesiredStatus, *,
                  initial: RuntimeDesiredStatus, bootstrap_policy: BootstrapPolicy, error_after_dismissal: bool,
                  standby_allowed: bool, silent_bootstrap: bool = False) -> Refusal | None:
    """Feldera's checks of ``/start`` (``validate_resources_desired_status_transition``, then the start
    parameters), in Feldera's order: Illegal, Undismissed, Clearing, Compilation, Initial,
    BootstrapPolicy, Standby. ``current_desired`` is the effective desired status before the start;
    ``error_after_dismissal`` whether an error remains once the dismissals asked for are done."""
    if current_desired is ResourcesDesiredStatus.STOPPED and state.deployment_resources_status is not R.STOPPED:
        return Refusal(
            http_status=400, error_code="IllegalPipelineAction",
            message=f"Deployment resources status (current: '{state.deployment_resources_status.value}', desired: "
                    f"'{current_desired.value}') cannot have desired changed to 'Provisioned'. {_STOPPING_HINT}",
            details={"status": state.deployment_resources_status.value, "current_desired_status": current_desired.value,
                     "new_desired_status": "Provisioned", "hint": _STOPPING_HINT})
    if error_after_dismissal:
        return Refusal(http_status=400, error_code="CannotStartWithUndismissedError", message=(
            "Cannot process `/start?dismiss_error=false` if the `deployment_error` is set. You can dismiss the "
            "error by calling `/start?dismiss_error=true`, or alternatively first call `/dismiss_error`, after "
            "which `/start?dismiss_error=false` is again possible."))
    if state.storage_status is S.CLEARING:
        return Refusal(http_status=400, error_code="CannotStartWhileClearingStorage", message=(
            "Cannot process `/start` if the `storage_status` is `Clearing`. Wait for the storage to become "
            "cleared before trying again."))
    if state.program_status.is_failed:
        return Refusal(http_status=400, error_code="CannotStartWithCompilationError", message=(
            "Cannot process `/start` if the `program_status` is `SqlError`, `RustError` or `SystemError`. "
            "Make changes to fix the error, which will trigger recompilation."))
    if state.deployment_initial is not None and state.deployment_initial is not initial:
        return Refusal(http_status=400, error_code="InitialImmutableUnlessStopped", message=(
            "Initial desired runtime status cannot be changed unless the pipeline is desired to become Stopped."))
    if state.bootstrap_policy is not None and (state.bootstrap_policy, state.silent_bootstrap) != (
            bootstrap_policy, silent_bootstrap):  # Feldera's bootstrap configuration: the policy and the flag
        return Refusal(http_status=400, error_code="BootstrapPolicyImmutableUnlessStopped", message=(
            "Bootstrap policy cannot be changed unless the pipeline is desired to become Stopped."))
    if initial is RDS.STANDBY and not standby_allowed:
        return _STANDBY_NOT_ALLOWED
    return None


_STANDBY_NOT_ALLOWED = Refusal(http_status=400, error_code="InitialStandbyNotAllowed", message=(
    "Initial desired runtime status can only be set to Standby if: (1) `runtime_config.storage.backend.name` "
    "is set to `file`, and (2) `runtime_config.storage.backend.config.sync` is configured."))


def dismiss_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``dismiss_deployment_error``: an error is dismissed only when fully Stopped."""
    if state.deployment_error is not None and (
            state.deployment_resources_status is not R.STOPPED
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED):
        return Refusal(http_status=400, error_code="DismissErrorRestrictedToFullyStopped", message=(
            "The pipeline must have both status `Stopped` and desired status `Stopped` to dismiss the "
            "`deployment_error` if it is set."))
    return None


def clear_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``transit_storage_status_to_clearing_if_not_cleared`` (Cleared is a no-op)."""
    if state.storage_status is S.CLEARED:
        return None
    if state.deployment_resources_status is not R.STOPPED \
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED:
        current, new = state.storage_status.value, S.CLEARING.value
        return Refusal(
            http_status=400, error_code="StorageStatusImmutableUnlessStopped",
            message=f"Cannot transition storage status from '{current}' to '{new}' with resources status "
                    f"'{state.deployment_resources_status.value}' and desired status "
                    f"'{state.deployment_resources_desired_status.value}'. "
                    "Storage status cannot be changed unless the pipeline is fully stopped.",
            details={"resources_status": state.deployment_resources_status.value,
                     "resources_desired_status": state.deployment_resources_desired_status.value,
                     "current_status": current, "new_status": new})
    return None


def interaction_refusal(state: PipelineState, name: str) -> Refusal | None:
    """Whether a request may be forwarded to the pipeline (Feldera's ``deployment_location_based_on_status``)."""
    if state.deployment_resources_status is not R.PROVISIONED:
        return Refusal(
            http_status=503, error_code="PipelineInteractionNotDeployed",
            message=f"Unable to interact with pipeline because the deployment status "
                    f"({state.deployment_resources_status.value.lower()}) indicates it is not (yet) fully provisioned "
                    f"(pipeline: '{name}')",
            details={"pipeline_name": name, "status": state.deployment_resources_status.value,
                     "desired_status": state.deployment_resources_desired_status.value})
    if state.deployment_runtime_status is RS.UNAVAILABLE:
        return Refusal(http_status=503, error_code="PipelineUnavailable", details={"pipeline_name": name},
                       message=f"Unable to interact with pipeline because its status is currently "
                               f"'unavailable' (pipeline: '{name}')")
    return None


def delete_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``delete_pipeline``: only fully Stopped, with storage Cleared."""
    if state.deployment_resources_status is not R.STOPPED \
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED:
        return Refusal(http_status=400, error_code="DeleteRestrictedToFullyStopped", message=(
            "Cannot delete a pipeline which is not fully stopped. Stop the pipeline first fully by invoking the "
            "'/stop' endpoint."))
    if state.storage_status is not S.CLEARED:
        return Refusal(http_status=400, error_code="DeleteRestrictedToClearedStorage", message=(
            "Cannot delete pipeline unless its storage is cleared. Clear storage first using `/clear`."))
    return None


def update_refusal(state: PipelineState) -> Refusal | None:
    """Feldera's ``update_pipeline`` for changes of the program or configuration: only while Stopped."""
    if state.deployment_resources_status is not R.STOPPED \
            or state.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED:
        return Refusal(http_status=400, error_code="UpdateRestrictedToStopped", message=(
            "Pipeline can only be updated while stopped. Stop it first by invoking '/stop'."))
    return None


def _storage_bound(config: RuntimeConfig) -> dict[str, Any]:
    """The settings of ``runtime_config`` that Feldera keeps while storage is in use (its
    ``update_pipeline``), by the names its error gives them."""
    return {"`runtime_config.workers`": config.workers, "`runtime_config.hosts`": config.hosts,
            "`runtime_config.fault_tolerance`": config.fault_tolerance,
            "`runtime_config.resources.storage_mb_max`": config.resources.storage_mb_max,
            "`runtime_config.resources.namespace`": config.resources.namespace,
            "`runtime_config.resources.storage_class`": config.resources.storage_class}


def edit_refusal(state: PipelineState, current: RuntimeConfig, new: RuntimeConfig) -> Refusal | None:
    """Feldera's ``update_pipeline`` for edits that the pipeline's storage depends on: refused unless its
    storage is Cleared (``EditRestrictedToClearedStorage``, naming each setting)."""
    if state.storage_status is S.CLEARED:
        return None
    before, after = _storage_bound(current), _storage_bound(new)
    not_allowed = [name for name in before if before[name] != after[name]]
    if not not_allowed:
        return None
    return Refusal(http_status=400, error_code="EditRestrictedToClearedStorage",
                   message="The following pipeline edits are not allowed while storage is not cleared: "
                           + ", ".join(not_allowed), details={"not_allowed": not_allowed})
