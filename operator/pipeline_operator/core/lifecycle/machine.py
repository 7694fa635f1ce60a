"""The machine: :func:`decide`, one monitoring pass through Feldera's resources machine (Stopped,
Provisioning, Provisioned, Stopping), the program's and the storage's, the runtime status contract and the
forwarding of the runtime desired status."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from ...models import ActionOutcome, ErrorResponse, ResourcesDesiredStatus, StopMode
from .. import transitions
from .guards import _STANDBY_NOT_ALLOWED
from .model import (
    RDS,
    RS,
    ActionKind,
    ComputeState,
    Decision,
    Desired,
    LifecycleConfig,
    Observation,
    P,
    PipelineState,
    R,
    RuntimeObservation,
    RuntimeProbe,
    S,
)
from .passes import _DEPLOYMENT_IDS, _RUNTIME_CLEARED, _Pass
from .requests import (
    _desired_status,
    _dismiss_error,
    _handled,
    _hold_stopped,
    _is_new,
    _latch_error,
    _start_request,
    effective_desired,
    graceful_stop_refused,
    initial_runtime_desired,
    suspending,
)


def decide(desired: Desired, state: PipelineState, observation: Observation, now: dt.datetime,
           config: LifecycleConfig = LifecycleConfig(),  # noqa: B008 - frozen (immutable)
           new_id: Callable[[dt.datetime], uuid.UUID] | None = None) -> Decision:
    """One monitoring pass: the status steps to commit and the actions to take. ``new_id`` makes a deployment's
    id (Feldera's ``deployment_id``, a UUIDv7 of the pass's time) when the pass starts one."""
    p = _Pass(cur=state, now=now, new_id=new_id or _DEPLOYMENT_IDS)
    _dismiss_error(p, desired)
    _start_request(p, desired)
    _desired_status(p, desired)
    _program(p, desired, observation)
    _storage(p, desired, observation)
    {
        R.STOPPED: _stopped,
        R.PROVISIONING: _provisioning,
        R.PROVISIONED: _provisioned,
        R.STOPPING: _stopping,
    }[p.cur.deployment_resources_status](p, desired, observation, config)
    _approve(p, desired)
    if p.cur.observed_generation != desired.generation:
        p.cur = p.cur.model_copy(update={"observed_generation": desired.generation})
    if p.cur.version_digest != desired.edit_digest:
        # Feldera's version: one more for every edit of its fields (not for a start, a stop or a pause, which
        # change the generation too). Counted from the generation for a pipeline that had no count yet.
        version = desired.generation if p.cur.version is None else p.cur.version + 1
        p.cur = p.cur.model_copy(update={"version": version, "version_digest": desired.edit_digest})
    return Decision(steps=tuple(p.steps), state=p.cur, actions=tuple(p.actions), notes=tuple(p.notes))


def _program(p: _Pass, desired: Desired, observation: Observation) -> None:
    cur = p.cur
    # A pipeline recorded before the settings were (None) takes them as they are: no new program.
    settings_changed = cur.program_settings_digest not in (None, desired.program_settings_digest)
    if cur.program_digest != desired.program_digest or settings_changed:
        if cur.deployment_resources_status is not R.STOPPED:
            if not cur.program_change_held:
                p.note("program changed while the pipeline is not Stopped: held until it is Stopped")
            p.set("program change held", program_change_held=True)
            return
        p.set("program changed", program_status=P.PENDING, program_digest=desired.program_digest,
              program_settings_digest=desired.program_settings_digest,
              program_version=cur.program_version + 1, program_error=None, program_change_held=False)
    elif cur.program_change_held:
        p.set("program change reverted", program_change_held=False)
    if p.cur.program_settings_digest is None:
        p.set("program settings recorded", program_settings_digest=desired.program_settings_digest)
    cur = p.cur
    seen = observation.program
    if seen is None or seen.program_digest != cur.program_digest:
        if cur.program_status.is_compiling:
            p.act(ActionKind.COMPILE, program_digest=cur.program_digest)
        return
    if cur.program_status is P.SUCCESS and seen.status is P.PENDING and cur.deployment_resources_status is R.STOPPED:
        # Feldera's runner: Success -> Pending when the compiled artifacts are missing.
        p.set("compiled program missing: compiling again", program_status=P.PENDING, program_error=None)
        cur = p.cur
    elif cur.program_status is P.RUST_ERROR and seen.status is not P.RUST_ERROR \
            and cur.deployment_resources_status is R.STOPPED:
        # The compiler started over by itself (the missing binary of the Rust stage appeared): RustError -> Pending.
        p.set("the compiler compiles the program again", program_status=P.PENDING, program_error=None)
        cur = p.cur
    if cur.program_status.is_compiling and seen.status is not cur.program_status:
        path = transitions.program_path(cur.program_status, seen.status)
        if path and path[0] not in transitions.PROGRAM_TRANSITIONS[cur.program_status]:
            # Not reachable directly (the compiler started over): via Pending.
            path = [P.PENDING, *transitions.program_path(P.PENDING, seen.status)]
        for status in path:
            failed = status.is_failed
            p.set(f"program {status.value}", program_status=status,
                  program_error=seen.error if failed else None)
    if p.cur.program_status.is_compiling:
        p.act(ActionKind.COMPILE, program_digest=p.cur.program_digest)


def _storage(p: _Pass, desired: Desired, observation: Observation) -> None:
    cur = p.cur
    if _is_new(desired.clear_storage, cur.handled_clear_storage):
        assert desired.clear_storage is not None
        if cur.storage_status is not S.IN_USE:
            p.set("clear storage requested; nothing to clear",
                  handled_clear_storage=_handled(desired.clear_storage, ActionOutcome.APPLIED,
                                                 f"Storage is already {cur.storage_status.value}"))
        elif cur.deployment_resources_status is R.STOPPED \
                and cur.deployment_resources_desired_status is ResourcesDesiredStatus.STOPPED:
            p.set("clear storage requested", storage_status=S.CLEARING, storage_status_details=None,
                  handled_clear_storage=_handled(desired.clear_storage, ActionOutcome.APPLIED,
                                                 "Clearing storage"))
        else:
            p.set("clear storage refused",
                  handled_clear_storage=_handled(
                      desired.clear_storage, ActionOutcome.REFUSED,
                      "StorageStatusImmutableUnlessStopped: storage can be cleared only while the "
                      f"pipeline is Stopped and desired Stopped (it is {cur.deployment_resources_status.value}, "
                      f"desired {cur.deployment_resources_desired_status.value}); stop it, then set the "
                      "annotation to a new value"))
    if p.cur.storage_status is S.CLEARING:
        if observation.storage is not None and not observation.storage.exists:
            p.set("storage cleared", storage_status=S.CLEARED, storage_status_details=None)
        else:
            p.act(ActionKind.CLEAR_STORAGE)


def _stopped(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    cur = p.cur
    compute = observation.compute.state
    if compute is not ComputeState.ABSENT:
        # Left over (a process that died while Stopped, or an interrupted stop): it goes first.
        p.note(f"compute found while Stopped ({compute.value}): deleting it")
        p.act(ActionKind.DEPROVISION)
        return
    if cur.deployment_resources_desired_status is not ResourcesDesiredStatus.PROVISIONED:
        return
    if cur.storage_status is S.CLEARING:
        p.note("waiting for storage to be cleared before starting")
        return
    if cur.program_status.is_failed:
        _latch_error(p, desired, ErrorResponse(
            message=f"Pipeline cannot start: its program failed to compile ({cur.program_status.value})",
            error_code="StartFailedDueToFailedCompilation",
            details={"program_status": cur.program_status.value}), "start failed: program failed to compile")
        return
    if cur.program_status is not P.SUCCESS or cur.program_digest != desired.program_digest:
        p.note(f"waiting for compilation ({cur.program_status.value}) before provisioning")
        return
    initial = cur.deployment_initial or initial_runtime_desired(desired)
    policy = cur.bootstrap_policy or desired.bootstrap_policy
    silent = cur.silent_bootstrap if cur.bootstrap_policy is not None else desired.silent_bootstrap
    if initial is RDS.STANDBY and not desired.standby_allowed:
        _latch_error(p, desired, _STANDBY_NOT_ALLOWED.error(),
                     "start failed: Standby needs a file storage backend with sync")
        return
    if cur.storage_status is S.CLEARED:
        p.set("storage will be used by the pipeline", storage_status=S.IN_USE)
    p.set("provisioning compute and storage", deployment_resources_status=R.PROVISIONING,
          deployment_resources_status_details=None,
          deployment_initial=initial, bootstrap_policy=policy, silent_bootstrap=silent, deployment_error=None,
          error_generation=None, deployment_id=p.new_id(p.now),
          runtime_desired_adopted=desired.runtime_desired_status, runtime_desired_pending=None,
          **_RUNTIME_CLEARED)
    if desired.hosts > 1:
        # Feldera's community edition (its local runner) fails the provisioning so: multihost pipelines need
        # the enterprise edition's coordinator, which this operator does not have.
        cause = f"multihost deployment is not supported (runtime_config.hosts is {desired.hosts}; set it to 1)"
        _stop(p, desired, "provisioning failed", ErrorResponse(
            message=f"Pipeline provision failed: {cause}", error_code="RunnerProvisionError",
            details={"error": cause}))
        return
    p.act(ActionKind.PROVISION, program_digest=desired.program_digest, initial=initial, bootstrap_policy=policy,
          silent_bootstrap=silent, deployment_id=p.cur.deployment_id)


def _stop(p: _Pass, desired: Desired, reason: str, error: ErrorResponse | None = None,
          details: Any = None) -> None:
    """Feldera's transition to Stopping: desired Stopped by the system first (for any cause), then
    Stopping with the error, if any; the start parameters are cleared."""
    _hold_stopped(p, desired, reason)
    errors: dict[str, Any] = dict(deployment_error=error, error_generation=desired.generation,
                                  stop_spec_digest=desired.spec_digest) if error else {}
    p.set(reason, deployment_resources_status=R.STOPPING, deployment_resources_status_details=details,
          deployment_initial=None,
          bootstrap_policy=None, silent_bootstrap=False, **errors, **_RUNTIME_CLEARED)
    p.act(ActionKind.DEPROVISION)


def _provisioning(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    cur = p.cur
    compute = observation.compute
    runtime = observation.runtime
    if cur.deployment_resources_desired_status is ResourcesDesiredStatus.STOPPED:
        _stop(p, desired, "desired status is Stopped")
        return
    if compute.state is ComputeState.FAILED:
        _stop(p, desired, "provisioning failed", ErrorResponse(
            message=f"Provisioning failed: {compute.message or 'compute failed'}",
            error_code="RunnerProvisionError", details={"cause": compute.message}))
        return
    if runtime is not None and runtime.probe is RuntimeProbe.FATAL:
        assert runtime.error is not None
        _stop(p, desired, "pipeline reported a fatal error while starting", runtime.error)
        return
    if compute.state is ComputeState.READY:
        # Feldera's runner: Provisioned once the compute is (its local runner: once the pipeline wrote its port
        # file; here: the process listens, or its pod is Ready), Initializing with the start's desired status and
        # empty details, without waiting for a first /status answer: the grace period covers a pipeline that does
        # not answer yet. An answer this pass already has is taken over at once.
        p.set("compute is ready", deployment_resources_status=R.PROVISIONED,
              deployment_resources_status_details=None, deployment_runtime_status=RS.INITIALIZING,
              deployment_runtime_status_details="", deployment_runtime_desired_status=cur.deployment_initial)
        if runtime is not None and runtime.probe in (RuntimeProbe.OK, RuntimeProbe.UNAVAILABLE):
            _apply_runtime(p, runtime, config)
        return
    timeout = desired.provisioning_timeout or config.default_provisioning_timeout
    if p.elapsed(cur.deployment_resources_status_since) > timeout:
        cause = compute.message or f"compute is {compute.state.value}"
        _stop(p, desired, "provisioning timed out", ErrorResponse(
            message=f"Provisioning did not finish within {timeout:g}s: {cause}",
            error_code="AutomatonProvisioningTimeout",
            details={"timeout_secs": timeout, "cause": cause}))
        return
    if compute.state is ComputeState.PENDING and compute.message:
        p.set("compute is not ready", deployment_resources_status_details={"reason": compute.message})
    p.act(ActionKind.PROVISION, program_digest=desired.program_digest, initial=cur.deployment_initial,
          bootstrap_policy=cur.bootstrap_policy, silent_bootstrap=cur.silent_bootstrap,
          deployment_id=cur.deployment_id)


def _apply_runtime(p: _Pass, runtime: RuntimeObservation | None, config: LifecycleConfig,
                   compute_reason: str = "") -> None:
    """Take over what the pipeline says about itself (Feldera's observe step, after
    ``parse_status_result``)."""
    cur = p.cur
    if runtime is not None and runtime.probe in (RuntimeProbe.OK, RuntimeProbe.UNAVAILABLE):
        changes: dict[str, Any] = dict(deployment_runtime_status=runtime.runtime_status,
                                       deployment_runtime_desired_status=runtime.runtime_desired_status,
                                       deployment_runtime_status_details=runtime.runtime_status_details)
        if runtime.reason:
            changes["deployment_runtime_status_details"] = {"reason": runtime.reason}
        if runtime.storage_status_details is not None:
            changes["storage_status_details"] = runtime.storage_status_details
        shown = runtime.runtime_status.value if runtime.runtime_status else "nothing"
        p.set(f"pipeline reports {shown}" if runtime.probe is RuntimeProbe.OK else f"pipeline status is {shown}",
              **changes)
        return
    reason = runtime.reason if runtime is not None else "not probed"
    if p.elapsed(cur.deployment_resources_status_since) <= config.provisioned_grace_period:
        p.set("pipeline not reachable yet (grace period)", deployment_runtime_status=RS.INITIALIZING,
              deployment_runtime_desired_status=cur.deployment_initial,
              deployment_runtime_status_details={
                  "reason": "Still in the grace period for initializing. Pipeline status "
                            f"endpoint cannot yet be reached due to: {reason}"})
    else:
        p.set("pipeline not reachable", deployment_runtime_status=RS.UNAVAILABLE,
              deployment_runtime_desired_status=RDS.UNAVAILABLE,
              deployment_runtime_status_details={"reason": f"Pipeline status endpoint could not be reached: {reason}",
                                                 **({"compute": compute_reason} if compute_reason else {})})


def _provisioned(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    compute = observation.compute
    runtime = observation.runtime
    if compute.state in (ComputeState.FAILED, ComputeState.ABSENT, ComputeState.TERMINATING):
        cause = compute.message or f"compute is {compute.state.value}"
        _stop(p, desired, "resource error", ErrorResponse(
            message=f"Pipeline resources failed: {cause}", error_code="RunnerCheckError",
            details={"cause": cause}))
        return
    if runtime is not None and runtime.probe is RuntimeProbe.FATAL:
        assert runtime.error is not None
        _stop(p, desired, "pipeline reported a fatal error", runtime.error)
        return
    _apply_runtime(p, runtime, config, compute.message if compute.state is ComputeState.PENDING else "")
    cur = p.cur
    if cur.deployment_runtime_status is RS.SUSPENDED:
        _stop(p, desired, "pipeline suspended")
        return
    if suspending(desired, cur):
        # Asked until the pipeline says it suspends (no time limit, as in Feldera: a forced stop ends it).
        if cur.suspend_requested_at is None:
            p.set("graceful stop: suspending", suspend_requested_at=p.now)
        if cur.deployment_runtime_desired_status is not RDS.SUSPENDED:
            p.act(ActionKind.SUSPEND)
        return
    if effective_desired(desired, cur) is ResourcesDesiredStatus.STOPPED and not graceful_stop_refused(desired, cur):
        if desired.stop_mode is StopMode.FORCE:
            _stop(p, desired, "desired status is Stopped (force)")
        else:
            shown = cur.deployment_runtime_status.value if cur.deployment_runtime_status else "unknown"
            _stop(p, desired, f"desired status is Stopped; nothing to checkpoint while {shown}")
        return
    _forward_runtime_desired(p, desired)


def _forward_runtime_desired(p: _Pass, desired: Desired) -> None:
    """Keep the pipeline's runtime desired status at the spec's (Feldera's /pause and /resume).

    Running and Paused are kept level-based. A pipeline that started in Standby is activated
    only when ``runtimeDesiredStatus`` changes after it was provisioned.
    """
    cur = p.cur
    target = desired.runtime_desired_status
    if target != cur.runtime_desired_adopted:
        p.set("runtime desired status changed in the spec", runtime_desired_adopted=target,
              runtime_desired_pending=target)
        cur = p.cur
    observed = cur.deployment_runtime_desired_status
    if target is None or observed is None:
        return
    if observed in (RDS.RUNNING, RDS.PAUSED):
        if cur.runtime_desired_pending is not None:
            p.set("runtime desired status forwarded", runtime_desired_pending=None)
        if observed.value != target.value:
            p.act(ActionKind.SET_RUNTIME_DESIRED, target=target)
    elif observed is RDS.STANDBY and cur.runtime_desired_pending is not None:
        p.act(ActionKind.SET_RUNTIME_DESIRED, target=target, activate=True)


def _approve(p: _Pass, desired: Desired) -> None:
    cur = p.cur
    if not _is_new(desired.approve, cur.handled_approve):
        return
    assert desired.approve is not None
    if cur.deployment_resources_status is R.PROVISIONED and cur.deployment_runtime_status is RS.AWAITING_APPROVAL:
        p.set("approve requested", handled_approve=_handled(desired.approve, ActionOutcome.APPLIED,
                                                            "Approval forwarded to the pipeline"))
        p.act(ActionKind.APPROVE)
    else:
        shown = (cur.deployment_runtime_status.value if cur.deployment_runtime_status
                 else cur.deployment_resources_status.value)
        p.set("approve refused", handled_approve=_handled(
            desired.approve, ActionOutcome.REFUSED,
            f"The pipeline is not AwaitingApproval (it is {shown}); nothing to approve"))


def _stopping(p: _Pass, desired: Desired, observation: Observation, config: LifecycleConfig) -> None:
    if observation.compute.state is ComputeState.ABSENT:
        p.set("compute is gone", deployment_resources_status=R.STOPPED, deployment_resources_status_details=None,
              deployment_id=None, **_RUNTIME_CLEARED)
    else:
        p.act(ActionKind.DEPROVISION)
