"""Feldera's pipeline lifecycle as one pure function.

:func:`decide` takes what the user wants (:class:`Desired`, from the Pipeline's spec and
annotations), what the operator last recorded (:class:`PipelineState`, from the Pipeline's
status), what the edges just observed (:class:`Observation`: compute, storage, program,
runtime) and the time, and returns the status steps to commit, in order, and the actions
the edges must take. It encodes Feldera's three machines (resources, storage, program), the
runtime status contract, the latched error and the one-shot actions.

Everything here is deterministic: no clock, no I/O, no randomness.

The package's rooms: ``model`` (what :func:`decide` takes and returns), ``bounds`` (what a pipeline says,
bounded), ``runtime_answer`` (a ``/status`` answer parsed), ``guards`` (may this happen now?), ``requests``
(the desired status and the one-shot requests), ``passes`` (one pass in the making) and ``machine``
(:func:`decide` and Feldera's machines).
"""

from __future__ import annotations

from .bounds import DETAILS_DEPTH_LIMIT, DETAILS_LIMIT, MAX_TEXT, cap_details, cap_error
from .guards import (
    ENTERPRISE_GRACEFUL_STOP,
    Refusal,
    clear_refusal,
    delete_refusal,
    dismiss_refusal,
    edit_refusal,
    interaction_refusal,
    start_refusal,
    update_refusal,
)
from .machine import decide
from .model import (
    Action,
    ActionKind,
    ComputeObservation,
    ComputeState,
    Decision,
    Desired,
    LifecycleConfig,
    Observation,
    PipelineState,
    ProgramObservation,
    RuntimeObservation,
    RuntimeProbe,
    StorageObservation,
)
from .requests import current_desired, dismissal_pending, effective_desired, graceful_stop_refused
from .runtime_answer import NOT_JSON, parse_status_response

__all__ = [
    "DETAILS_DEPTH_LIMIT", "DETAILS_LIMIT", "ENTERPRISE_GRACEFUL_STOP", "MAX_TEXT", "NOT_JSON", "Action", "ActionKind",
    "ComputeObservation", "ComputeState", "Decision", "Desired", "LifecycleConfig", "Observation", "PipelineState",
    "ProgramObservation", "Refusal", "RuntimeObservation", "RuntimeProbe", "StorageObservation", "cap_details",
    "cap_error", "clear_refusal", "current_desired", "decide", "delete_refusal", "dismiss_refusal",
    "dismissal_pending", "edit_refusal", "effective_desired", "graceful_stop_refused", "interaction_refusal",
    "parse_status_response", "start_refusal", "update_refusal",
]
