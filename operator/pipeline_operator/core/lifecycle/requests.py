"""What the user asks of the lifecycle: the desired status (Feldera's ``deployment_resources_desired_status``,
with the graceful stop and the system's hold on Stopped), the start parameters, and the one-shot requests
(start, dismiss the error), each handled once."""

from __future__ import annotations

from ...models import (
    ActionOutcome,
    ErrorResponse,
    HandledAction,
    InitialRuntimeStatus,
    ResourcesDesiredStatus,
    RuntimeDesiredStatus,
    StopMode,
)
from .guards import Refusal, dismiss_refusal, start_refusal
from .model import RDS, RS, Desired, PipelineState, R
from .passes import _Pass

# A graceful stop waits for Suspended from these runtime statuses; from the others there is
# no state worth a checkpoint yet (Initializing, Standby, AwaitingApproval) and it stops at once.
_SUSPENDABLE = frozenset({RS.RUNNING, RS.PAUSED, RS.REPLAYING, RS.BOOTSTRAPPING, RS.UNAVAILABLE,
                          RS.COORDINATION})


def effective_desired(desired: Desired, state: PipelineState) -> ResourcesDesiredStatus:
    """Stopped while the system holds the pipeline stopped (after any move to Stopping, or a start
    that failed) or an error is latched; otherwise what the spec asks."""
    if state.system_stop_generation is not None or state.deployment_error is not None:
        return ResourcesDesiredStatus.STOPPED
    return desired.resources_desired_status


def graceful_stop_refused(desired: Desired, state: PipelineState) -> bool:
    """A graceful stop the spec asks of a community-edition pipeline that runs (or is being provisioned): it is
    not done, as Feldera's open-source manager refuses ``/stop?force=false`` (a suspend there writes no
    checkpoint, so the stop would lose the state while looking graceful). The pipeline goes on as it is until
    the spec asks for a forced stop. A stop the system makes (an error, a hold) is forced and not concerned."""
    return desired.community_edition and desired.resources_desired_status is ResourcesDesiredStatus.STOPPED \
        and desired.stop_mode is StopMode.GRACEFUL \
        and state.deployment_resources_status in (R.PROVISIONING, R.PROVISIONED) \
        and state.deployment_resources_desired_status is ResourcesDesiredStatus.PROVISIONED \
        and state.system_stop_generation is None and state.deployment_error is None


def suspending(desired: Desired, state: PipelineState) -> bool:
    """Feldera's graceful stop (``/stop?force=false``) of a pipeline that can checkpoint: it is asked to suspend,
    and its desired status stays Provisioned (its runtime desired status Suspended) until it has suspended;
    then it stops. Once asked, it goes on whatever the spec says next (a ``/start`` meanwhile changes nothing,
    as in Feldera), unless a forced stop cancels it."""
    if state.deployment_resources_status is not R.PROVISIONED or state.system_stop_generation is not None \
            or state.deployment_error is not None:
        return False
    stop = desired.resources_desired_status is ResourcesDesiredStatus.STOPPED
    if stop and desired.stop_mode is StopMode.FORCE or desired.community_edition:
        return False
    if state.suspend_requested_at is not None or state.deployment_runtime_desired_status is RDS.SUSPENDED:
        return True
    return stop and state.deployment_runtime_status in _SUSPENDABLE


def current_desired(desired: Desired, state: PipelineState) -> ResourcesDesiredStatus:
    """Feldera's ``deployment_resources_desired_status`` for this spec and state: :func:`effective_desired`,
    except that a graceful stop keeps Provisioned while the pipeline suspends (:func:`suspending`) and a
    pipeline that is Stopping stays desired Stopped until it is Stopped (a start while Stopping is illegal), and a
    graceful stop of a community-edition pipeline is not done (:func:`graceful_stop_refused`)."""
    if suspending(desired, state) or graceful_stop_refused(desired, state):
        return ResourcesDesiredStatus.PROVISIONED
    if state.deployment_resources_status is R.STOPPING:
        return ResourcesDesiredStatus.STOPPED
    return effective_desired(desired, state)


def _handled(value: str, outcome: ActionOutcome, message: str = "", refusal: Refusal | None = None) -> HandledAction:
    if refusal is not None:
        return HandledAction(value=value, outcome=ActionOutcome.REFUSED, message=refusal.message[:1024],
                             error_code=refusal.error_code)
    return HandledAction(value=value, outcome=outcome, message=message)


def _is_new(request: str | None, handled: HandledAction | None) -> bool:
    return request is not None and (handled is None or handled.value != request)


def dismissal_pending(desired: Desired, state: PipelineState) -> bool:
    """A dismiss request the operator has not handled yet, that it will apply (fully Stopped)."""
    return _is_new(desired.dismiss_error, state.handled_dismiss_error) and dismiss_refusal(state) is None


def _dismiss_error(p: _Pass, desired: Desired) -> None:
    cur = p.cur
    if _is_new(desired.dismiss_error, cur.handled_dismiss_error):
        assert desired.dismiss_error is not None
        refusal = dismiss_refusal(cur)
        if cur.deployment_error is None:
            p.set("dismiss requested; there is no error",
                  handled_dismiss_error=_handled(desired.dismiss_error, ActionOutcome.APPLIED,
                                                 "There was no error to dismiss"))
        elif refusal is not None:
            p.set("dismiss refused", handled_dismiss_error=_handled(desired.dismiss_error, ActionOutcome.REFUSED,
                                                                   refusal=refusal))
        else:
            p.set("error dismissed by request", deployment_error=None, error_generation=None,
                  handled_dismiss_error=_handled(desired.dismiss_error, ActionOutcome.APPLIED,
                                                 "Error dismissed"))
        return
    if (cur.deployment_error is not None and cur.deployment_resources_status is R.STOPPED
            and _spec_changed_since(desired, cur, cur.error_generation)):
        p.set(f"error dismissed by a new spec (generation {desired.generation})",
              deployment_error=None, error_generation=None)


def _start_request(p: _Pass, desired: Desired) -> None:
    """A start request (Feldera's ``/start``): releases the system's hold on Stopped, if allowed now."""
    cur = p.cur
    if not _is_new(desired.start, cur.handled_start):
        return
    assert desired.start is not None
    initial = initial_runtime_desired(desired)
    refusal = start_refusal(cur, cur.deployment_resources_desired_status, initial=initial,
                            bootstrap_policy=desired.bootstrap_policy, silent_bootstrap=desired.silent_bootstrap,
                            error_after_dismissal=cur.deployment_error is not None,
                            standby_allowed=desired.standby_allowed)
    if refusal is not None:
        p.set(f"start refused ({refusal.error_code})",
              handled_start=_handled(desired.start, ActionOutcome.REFUSED, refusal=refusal))
        return
    p.set("start requested", system_stop_generation=None,
          handled_start=_handled(desired.start, ActionOutcome.APPLIED, f"Starting as {initial.value}"))


def _desired_status(p: _Pass, desired: Desired) -> None:
    cur = p.cur
    if _spec_changed_since(desired, cur, cur.system_stop_generation):
        p.set(f"a new spec (generation {desired.generation}) releases the stop set by the system",
              system_stop_generation=None)
    target = current_desired(desired, p.cur)
    if target is not p.cur.deployment_resources_desired_status:
        p.set(f"desired status is {target.value}", deployment_resources_desired_status=target)
    if p.cur.deployment_resources_status is R.STOPPED:
        # Feldera sets the start parameters with the desired status; while Stopped they follow the spec.
        provisioned = target is ResourcesDesiredStatus.PROVISIONED
        initial = initial_runtime_desired(desired) if provisioned else None
        policy = desired.bootstrap_policy if provisioned else None
        silent = desired.silent_bootstrap and provisioned
        if (initial, policy, silent) != (p.cur.deployment_initial, p.cur.bootstrap_policy, p.cur.silent_bootstrap):
            p.set("start parameters", deployment_initial=initial, bootstrap_policy=policy, silent_bootstrap=silent)


def _spec_changed_since(desired: Desired, state: PipelineState, generation: int | None) -> bool:
    """A newer spec generation that changed more than the client metadata, not through the HTTP API (an edit
    or a /stop through the API leaves Feldera's desired status and error as they are)."""
    return generation is not None and desired.generation > generation and not desired.spec_by_api and (
        not desired.spec_digest or desired.spec_digest != state.stop_spec_digest)


def _hold_stopped(p: _Pass, desired: Desired, reason: str) -> None:
    """Feldera's "desired status set to Stopped by the system"."""
    hold = desired.resources_desired_status is ResourcesDesiredStatus.PROVISIONED
    if p.cur.deployment_resources_desired_status is not ResourcesDesiredStatus.STOPPED or (
            hold and p.cur.system_stop_generation is None):
        p.set(f"{reason}: desired status set to Stopped by the system",
              deployment_resources_desired_status=ResourcesDesiredStatus.STOPPED,
              system_stop_generation=desired.generation if hold else p.cur.system_stop_generation,
              stop_spec_digest=desired.spec_digest)


def _latch_error(p: _Pass, desired: Desired, error: ErrorResponse, reason: str) -> None:
    """A start that fails while Stopped: desired Stopped by the system, then the error."""
    _hold_stopped(p, desired, reason)
    p.set(reason, deployment_error=error, error_generation=desired.generation, deployment_initial=None,
          bootstrap_policy=None, silent_bootstrap=False, stop_spec_digest=desired.spec_digest)


def initial_runtime_desired(desired: Desired) -> RuntimeDesiredStatus:
    """The status a pipeline starts in: ``runtimeDesiredStatus`` when set, unless the spec
    asks for Standby (which only an activation leaves), else ``initialRuntimeStatus``."""
    if desired.runtime_desired_status is not None and desired.initial is not InitialRuntimeStatus.STANDBY:
        return RuntimeDesiredStatus(desired.runtime_desired_status.value)
    return RuntimeDesiredStatus(desired.initial.value)
