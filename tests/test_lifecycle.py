"""The lifecycle core, pass by pass: each of Feldera's transitions and what triggers it."""

from __future__ import annotations

import pytest

from pipeline_operator.core.lifecycle import (
    NOT_JSON,
    ActionKind,
    ComputeState,
    Desired,
    LifecycleConfig,
    Observation,
    RuntimeProbe,
    graceful_stop_refused,
    parse_status_response,
)
from pipeline_operator.core.resource import conditions
from pipeline_operator.models import ActionOutcome, ErrorResponse, StopMode
from pipeline_operator.models import InitialRuntimeStatus as Init
from pipeline_operator.models import ProgramStatus as P
from pipeline_operator.models import ResourcesDesiredStatus as D
from pipeline_operator.models import ResourcesStatus as R
from pipeline_operator.models import RuntimeDesiredStatus as RDS
from pipeline_operator.models import RuntimeStatus as RS
from pipeline_operator.models import SpecRuntimeDesiredStatus as SRD
from pipeline_operator.models import StorageStatus as S

from .lifecycle_sim import Sim, compiled, compute, kinds, ok, running, storage, summary


def test_stopped_with_desired_stopped_remains_and_compiles():
    sim = Sim()
    d = sim.step()
    assert summary(d) == [] and kinds(d) == ["Compile"]
    assert sim.state.observed_generation == 1


def test_a_change_of_the_udfs_or_the_program_config_is_a_new_program_compiled_again():
    sim = Sim(Desired(program_digest="p1", program_settings_digest="u1"))
    sim.step(compiled("p1"))
    assert (sim.state.program_status, sim.state.program_version) == (P.SUCCESS, 1)
    sim.spec(program_settings_digest="u2")  # same SQL, another udf_rust, udf_toml or program_config
    d = sim.step(compiled("p1"))
    assert [s[3] for s in summary(d)] == ["Pending", "CompilingSql", "SqlCompiled", "CompilingRust", "Success"]
    assert sim.state.program_version == 2
    # A pipeline recorded before the settings were kept takes them as they are.
    sim = Sim(Desired(program_digest="p1", program_settings_digest="u1"),
              PipelineState(program_digest="p1", program_status=P.SUCCESS, program_version=5))
    assert summary(sim.step(compiled("p1"))) == [] and sim.state.program_version == 5


def test_feldera_version_counts_edits_not_starts_and_stops():
    sim = Sim(Desired(program_digest="p1", edit_digest="e1"))
    sim.step(compiled("p1"))
    assert sim.state.version == 1
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    sim.step()
    assert sim.state.version == 1 and sim.desired.generation == 3
    sim.spec(edit_digest="e2")
    sim.step()
    assert sim.state.version == 2


def test_start_compiles_then_uses_storage_then_provisions_in_feldera_order():
    sim = Sim()
    sim.spec(resources_desired_status=D.PROVISIONED)
    d = sim.step()
    assert summary(d) == [("Stopped", "Provisioned", None, "Pending", "Cleared", False)]
    assert kinds(d) == ["Compile"]  # early start: waits for compilation
    d = sim.step(compiled("p1"))
    assert summary(d) == [
        ("Stopped", "Provisioned", None, "CompilingSql", "Cleared", False),
        ("Stopped", "Provisioned", None, "SqlCompiled", "Cleared", False),
        ("Stopped", "Provisioned", None, "CompilingRust", "Cleared", False),
        ("Stopped", "Provisioned", None, "Success", "Cleared", False),
        ("Stopped", "Provisioned", None, "Success", "InUse", False),
        ("Provisioning", "Provisioned", None, "Success", "InUse", False),
    ]
    assert kinds(d) == ["Provision"]
    assert d.actions[0].initial is RDS.RUNNING and d.actions[0].program_digest == "p1"


def test_a_multihost_pipeline_fails_its_provisioning_as_in_feldera_community_edition():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, hosts=2))
    d = sim.step(compiled("p1"))
    assert [s[0] for s in summary(d)][-2:] == ["Provisioning", "Stopping"] and "Provision" not in kinds(d)
    assert sim.state.deployment_error.error_code == "RunnerProvisionError"
    assert sim.state.deployment_error.details == {"error": "multihost deployment is not supported "
                                                           "(runtime_config.hosts is 2; set it to 1)"}


def test_provisioning_waits_then_becomes_provisioned_with_initializing_first():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, initial=Init.PAUSED))
    sim.step(compiled("p1"))
    d = sim.step(Observation(compute=compute(ComputeState.PENDING)))
    assert summary(d) == [] and kinds(d) == ["Provision"]
    d = sim.step(running(RS.PAUSED))
    assert summary(d) == [("Provisioned", "Provisioned", "Initializing", "Success", "InUse", False),
                          ("Provisioned", "Provisioned", "Paused", "Success", "InUse", False)]
    assert sim.state.deployment_initial is RDS.PAUSED


def test_provisioned_once_the_compute_is_ready_without_waiting_for_a_status_answer():
    """Feldera's runner: Provisioned when the compute is, Initializing with the start's desired status and empty
    details; a pipeline that never answers is then Unavailable after the grace period, and is not stopped."""
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, initial=Init.PAUSED,
                      provisioning_timeout=30))
    sim.step(compiled("p1"))
    unreachable = Observation(compute=compute(ComputeState.READY),
                              runtime=parse_status_response(None, None, "connection refused"))
    d = sim.step(unreachable)
    assert summary(d) == [("Provisioned", "Provisioned", "Initializing", "Success", "InUse", False)]
    state = sim.state
    assert (state.deployment_runtime_desired_status, state.deployment_runtime_status_details) == (RDS.PAUSED, "")
    assert sim.step(Observation(compute=compute(ComputeState.READY)), after=5).state.deployment_runtime_status \
        is RS.INITIALIZING  # not probed (or not answering) within the grace period
    for _ in range(3):
        state = sim.step(unreachable, after=20).state
        assert (state.deployment_resources_status, state.deployment_runtime_status) == (R.PROVISIONED, RS.UNAVAILABLE)
        assert state.deployment_error is None


def test_provisioned_on_a_503_answer_is_unavailable_not_an_error():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED))
    sim.step(compiled("p1"))
    d = sim.step(Observation(compute=compute(ComputeState.READY),
                             runtime=parse_status_response(503, {"message": "busy", "error_code": "X",
                                                                 "details": None})))
    assert summary(d)[-1][:3] == ("Provisioned", "Provisioned", "Unavailable")
    assert sim.state.deployment_error is None


def test_provisioning_timeout_stops_with_an_error_naming_the_cause():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, provisioning_timeout=30))
    sim.step(compiled("p1"))
    pending = Observation(compute=compute(ComputeState.PENDING, "PersistentVolumeClaim is Pending: no StorageClass"))
    assert summary(sim.step(pending, after=30)) == []  # 30 s is not more than 30 s
    d = sim.step(pending, after=0.5)
    assert summary(d) == [("Provisioning", "Stopped", None, "Success", "InUse", False),
                          ("Stopping", "Stopped", None, "Success", "InUse", True)]
    err = sim.state.deployment_error
    assert err.error_code == "AutomatonProvisioningTimeout"
    assert "no StorageClass" in err.message and "30s" in err.message
    assert kinds(d) == ["Deprovision"]


def test_provisioning_timeout_defaults_to_the_operator_setting():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED),
              config=LifecycleConfig(default_provisioning_timeout=5))
    sim.step(compiled("p1"))
    sim.step(Observation(compute=compute(ComputeState.PENDING)), after=6)
    assert sim.state.deployment_resources_status is R.STOPPING


def test_failed_compute_while_provisioning_stops_with_the_backend_message():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED))
    sim.step(compiled("p1"))
    sim.step(Observation(compute=compute(ComputeState.FAILED, "process exited with code 3")))
    assert sim.state.deployment_resources_status is R.STOPPING
    assert "exited with code 3" in sim.state.deployment_error.message


def test_desired_stopped_while_provisioning_stops_without_error():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED))
    sim.step(compiled("p1"))
    sim.spec(resources_desired_status=D.STOPPED)
    d = sim.step(Observation(compute=compute(ComputeState.PENDING)))
    assert summary(d) == [("Provisioning", "Stopped", None, "Success", "InUse", False),
                          ("Stopping", "Stopped", None, "Success", "InUse", False)]


def test_graceful_stop_suspends_then_stops_keeping_storage_and_checkpoint_details():
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED)
    d = sim.step(running())
    # Feldera: the desired status stays Provisioned while the pipeline suspends (its runtime desired status,
    # Suspended, says it): the combined desired status is Suspended.
    assert summary(d) == [] and kinds(d) == ["Suspend"]
    d = sim.step(running(RS.RUNNING, RDS.SUSPENDED))
    assert kinds(d) == []  # the pipeline took the request; no second /suspend
    assert summary(d) == [("Provisioned", "Provisioned", "Running", "Success", "InUse", False)]
    assert sim.state.deployment_runtime_desired_status is RDS.SUSPENDED
    checkpoints = {"checkpoints": [{"uuid": "c1"}]}
    d = sim.step(running(RS.SUSPENDED, RDS.SUSPENDED, storage_status_details=checkpoints))
    assert summary(d)[-1] == ("Stopping", "Stopped", None, "Success", "InUse", False)
    assert sim.state.storage_status_details == checkpoints
    d = sim.step(Observation(compute=compute(ComputeState.TERMINATING)))
    assert summary(d) == [] and kinds(d) == ["Deprovision"]
    d = sim.step(Observation())
    assert summary(d) == [("Stopped", "Stopped", None, "Success", "InUse", False)]
    assert sim.state.storage_status_details == checkpoints and sim.state.deployment_error is None


def _suspending() -> Sim:
    """A running pipeline stopped gracefully: it was asked to suspend, and said it will."""
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED)
    sim.step(running())
    sim.step(running(RS.RUNNING, RDS.SUSPENDED))
    return sim


def test_a_start_while_suspending_is_accepted_and_the_pipeline_stops_as_in_feldera():
    sim = _suspending()
    refusal = start_refusal(sim.state, current_desired(sim.desired, sim.state), initial=RDS.RUNNING,
                            bootstrap_policy=BootstrapPolicy.AWAIT_APPROVAL, error_after_dismissal=False,
                            standby_allowed=False)
    assert refusal is None  # desired Provisioned: accepted, as Feldera's /start
    sim.spec(resources_desired_status=D.PROVISIONED, start="s1")
    d = sim.step(running(RS.RUNNING, RDS.SUSPENDED))
    assert sim.state.handled_start.outcome is ActionOutcome.APPLIED and kinds(d) == []
    d = sim.step(running(RS.SUSPENDED, RDS.SUSPENDED))
    # The suspension it asked for goes on; then the system stops it and holds it Stopped.
    assert summary(d)[-1] == ("Stopping", "Stopped", None, "Success", "InUse", False)
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED and sim.state.system_stop_generation is not None


def test_a_forced_stop_cancels_a_graceful_one():
    sim = _suspending()
    sim.spec(stop_mode=StopMode.FORCE)
    d = sim.step(running(RS.RUNNING, RDS.SUSPENDED))
    assert summary(d)[-1][0] == "Stopping" and kinds(d) == ["Deprovision"]


def test_a_spec_asking_provisioned_while_stopping_waits_for_stopped():
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    sim.step(running())
    assert sim.state.deployment_resources_status is R.STOPPING
    sim.spec(resources_desired_status=D.PROVISIONED)
    d = sim.step(Observation(compute=compute(ComputeState.TERMINATING)))
    assert summary(d) == [] and sim.state.deployment_resources_desired_status is D.STOPPED
    d = sim.step(Observation())
    assert [s[:2] for s in summary(d)] == [("Stopped", "Stopped")]
    d = sim.step(Observation())  # then the spec's Provisioned: it starts again
    assert [s[:2] for s in summary(d)] == [("Stopped", "Provisioned"), ("Provisioning", "Provisioned")]


def test_force_stop_deprovisions_at_once():
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    d = sim.step(running())
    assert summary(d)[-1][0] == "Stopping" and kinds(d) == ["Deprovision"]


def test_a_graceful_stop_of_a_community_pipeline_is_refused_as_felderas_open_source_manager_refuses_it():
    """Feldera's community edition writes no checkpoint, so its manager refuses /stop?force=false: a spec asking
    a graceful stop of a running community-edition pipeline leaves it running (no /suspend, no stop), says why
    (the Stalled condition: EnterpriseFeature, Feldera's message), until the spec asks a forced stop."""
    sim = Sim(Desired(program_digest="p1", community_edition=True))
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED)
    for _ in range(3):
        d = sim.step(running(), after=600)
        assert summary(d) == [] and kinds(d) == []
    assert sim.state.deployment_resources_status is R.PROVISIONED
    assert sim.state.deployment_resources_desired_status is D.PROVISIONED
    assert sim.state.deployment_runtime_desired_status is RDS.RUNNING
    stalled = {c.type: c for c in conditions(sim.desired, sim.state, [], sim.now)}["Stalled"]
    assert (stalled.status.value, stalled.reason) == ("True", "EnterpriseFeature")
    assert stalled.message.startswith("Cannot use enterprise-only feature (stop?force=false) in Feldera community "
                                      "edition.") and "stopMode to Force" in stalled.message
    sim.spec(stop_mode=StopMode.FORCE)
    d = sim.step(running())
    assert summary(d)[-1][:2] == ("Stopping", "Stopped") and kinds(d) == ["Deprovision"]
    assert {c.type: c for c in conditions(sim.desired, sim.state, [], sim.now)}["Stalled"].status.value == "False"


def test_a_community_pipeline_stopped_by_the_system_or_not_yet_started_stops_at_once():
    """What is refused is the graceful stop of a pipeline that runs: an error's stop is forced, and a graceful
    stop of a Stopped pipeline has nothing to do."""
    sim = Sim(Desired(program_digest="p1", community_edition=True))
    sim.start()
    d = sim.step(Observation(compute=compute(ComputeState.FAILED, "the process exited")))
    assert summary(d)[-1][:2] == ("Stopping", "Stopped")
    idle = Sim(Desired(program_digest="p1", community_edition=True))
    idle.step(compiled("p1"))
    assert idle.state.deployment_resources_status is R.STOPPED and not graceful_stop_refused(idle.desired, idle.state)


def test_a_graceful_stop_waits_for_the_suspension_without_a_time_limit():
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED)
    sim.step(running())
    d = sim.step(running(RS.RUNNING, RDS.SUSPENDED), after=3600)
    assert sim.state.deployment_resources_status is R.PROVISIONED and kinds(d) == []
    assert sim.state.deployment_error is None


def test_graceful_stop_from_standby_stops_at_once():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, initial=Init.STANDBY,
                      standby_allowed=True))
    sim.step(compiled("p1"))
    sim.step(running(RS.STANDBY))
    sim.spec(resources_desired_status=D.STOPPED)
    assert sim.step(running(RS.STANDBY)).state.deployment_resources_status is R.STOPPING


def test_pipeline_suspending_by_itself_stops_without_error():
    sim = Sim()
    sim.start()
    d = sim.step(running(RS.SUSPENDED, RDS.SUSPENDED))
    # Feldera sets the desired status to Stopped on every move to Stopping, error or not.
    assert summary(d)[-2:] == [("Provisioned", "Stopped", "Suspended", "Success", "InUse", False),
                               ("Stopping", "Stopped", None, "Success", "InUse", False)]
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED
    # No loop back to Provisioning although the spec still says Provisioned ...
    assert sim.step().state.deployment_resources_status is R.STOPPED
    assert sim.state.deployment_resources_desired_status is D.STOPPED
    # ... until a start request.
    sim.spec(start="s1")
    assert sim.step().state.deployment_resources_status is R.PROVISIONING
    assert sim.state.handled_start.outcome is ActionOutcome.APPLIED


def test_fatal_runtime_error_latches_and_desired_becomes_stopped():
    sim = Sim()
    sim.start()
    panic = parse_status_response(500, {"message": "worker 0 panicked", "error_code": "WorkerPanic",
                                        "details": {"worker": 0}})
    d = sim.step(Observation(compute=compute(ComputeState.READY), runtime=panic))
    assert summary(d) == [("Provisioned", "Stopped", "Running", "Success", "InUse", False),
                          ("Stopping", "Stopped", None, "Success", "InUse", True)]
    assert sim.state.deployment_error == ErrorResponse(message="worker 0 panicked", error_code="WorkerPanic",
                                                       details={"worker": 0})
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED and sim.state.deployment_error is not None
    for _ in range(3):  # no restart: the spec still says Provisioned, but the error holds
        d = sim.step(Observation())
        assert summary(d) == [] and ActionKind.PROVISION not in [a.kind for a in d.actions]


def test_dead_process_is_a_resource_error():
    sim = Sim()
    sim.start()
    sim.step(Observation(compute=compute(ComputeState.FAILED, "process exited with signal 9")))
    assert sim.state.deployment_resources_status is R.STOPPING
    assert sim.state.deployment_error.error_code == "RunnerCheckError"
    assert "signal 9" in sim.state.deployment_error.message


def test_unreachable_is_initializing_in_the_grace_period_then_unavailable_and_never_stops():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED))
    sim.step(compiled("p1"))
    sim.step(running())
    unreachable = Observation(compute=compute(ComputeState.READY),
                              runtime=parse_status_response(None, None, "connection refused"))
    assert sim.step(unreachable, after=10).state.deployment_runtime_status is RS.INITIALIZING
    state = sim.step(unreachable, after=11).state
    assert state.deployment_runtime_status is RS.UNAVAILABLE
    assert "connection refused" in state.deployment_runtime_status_details["reason"]
    for _ in range(5):
        assert sim.step(unreachable, after=60).state.deployment_resources_status is R.PROVISIONED


def test_stopping_waits_until_compute_is_gone():
    sim = Sim()
    sim.start()
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    sim.step(running())
    for _ in range(3):
        assert kinds(sim.step(Observation(compute=compute(ComputeState.READY)))) == ["Deprovision"]
    assert sim.step(Observation()).state.deployment_resources_status is R.STOPPED


def test_clear_storage_only_when_stopped_and_desired_stopped():
    sim = Sim()
    sim.start()
    sim.spec(clear_storage="req-1")
    sim.step(running())
    handled = sim.state.handled_clear_storage
    assert handled.outcome is ActionOutcome.REFUSED and "StorageStatusImmutableUnlessStopped" in handled.message
    assert sim.state.storage_status is S.IN_USE
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    sim.step(running())
    sim.step(Observation())
    assert sim.state.storage_status is S.IN_USE  # the refused value is not retried
    sim.spec(clear_storage="req-2")
    d = sim.step(Observation())
    assert summary(d) == [("Stopped", "Stopped", None, "Success", "Clearing", False)]
    assert kinds(d) == ["ClearStorage"]
    assert kinds(sim.step(storage(True))) == ["ClearStorage"]
    d = sim.step(storage(False))
    assert summary(d) == [("Stopped", "Stopped", None, "Success", "Cleared", False)]
    assert sim.state.handled_clear_storage.value == "req-2"
    assert sim.step().steps == ()  # handled once per value


def test_start_requested_while_clearing_waits_for_cleared():
    sim = Sim(Desired(program_digest="p1"))
    sim.step(compiled("p1"))
    sim.state = sim.state.model_copy(update={"storage_status": S.IN_USE})
    sim.spec(clear_storage="c")
    sim.step()
    sim.spec(resources_desired_status=D.PROVISIONED)
    d = sim.step(storage(True))
    assert sim.state.deployment_resources_status is R.STOPPED and "storage to be cleared" in d.notes[0]
    d = sim.step(storage(False))
    assert summary(d) == [("Stopped", "Provisioned", None, "Success", "Cleared", False),
                          ("Stopped", "Provisioned", None, "Success", "InUse", False),
                          ("Provisioning", "Provisioned", None, "Success", "InUse", False)]


def test_sql_error_with_desired_provisioned_latches_start_failed():
    sim = Sim()
    sim.spec(resources_desired_status=D.PROVISIONED)
    error = {"line": 1, "column": 8, "message": "syntax error"}
    d = sim.step(compiled("p1", P.SQL_ERROR, error))
    assert summary(d) == [
        ("Stopped", "Provisioned", None, "Pending", "Cleared", False),
        ("Stopped", "Provisioned", None, "CompilingSql", "Cleared", False),
        ("Stopped", "Provisioned", None, "SqlError", "Cleared", False),
        ("Stopped", "Stopped", None, "SqlError", "Cleared", False),
        ("Stopped", "Stopped", None, "SqlError", "Cleared", True),
    ]
    assert sim.state.deployment_error.error_code == "StartFailedDueToFailedCompilation"
    assert sim.state.program_error == error
    assert sim.step().steps == ()


def test_new_spec_generation_dismisses_the_error_and_recompiles():
    sim = Sim()
    sim.spec(resources_desired_status=D.PROVISIONED)
    sim.step(compiled("p1", P.SQL_ERROR, {"message": "bad"}))
    sim.spec(program_digest="p2")
    d = sim.step()
    assert sim.state.deployment_error is None and sim.state.program_status is P.PENDING
    assert sim.state.deployment_resources_desired_status is D.PROVISIONED
    assert kinds(d) == ["Compile"] and d.actions[0].program_digest == "p2"
    sim.step(compiled("p2"))
    assert sim.state.deployment_resources_status is R.PROVISIONING


def test_dismiss_annotation_is_refused_until_stopped_then_applies():
    sim = Sim()
    sim.start()
    sim.step(Observation(compute=compute(ComputeState.FAILED, "gone")))
    assert sim.state.deployment_resources_status is R.STOPPING
    sim.spec(dismiss_error="d1")
    sim.step(Observation(compute=compute(ComputeState.TERMINATING)))
    assert sim.state.handled_dismiss_error.outcome is ActionOutcome.REFUSED
    assert sim.state.deployment_error is not None
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED and sim.state.deployment_error is not None
    sim.spec(dismiss_error="d2")
    d = sim.step(Observation())
    assert sim.state.deployment_error is None and sim.state.handled_dismiss_error.value == "d2"
    assert summary(d)[0][5] is False
    # Dismissing starts nothing: the system set the desired status to Stopped (as Feldera does).
    assert sim.step().state.deployment_resources_status is R.STOPPED
    assert sim.state.deployment_resources_desired_status is D.STOPPED


def test_dismiss_without_error_is_recorded_as_a_no_op():
    sim = Sim()
    sim.spec(dismiss_error="x")
    d = sim.step()
    assert d.steps == () and sim.state.handled_dismiss_error.outcome is ActionOutcome.APPLIED


def test_program_change_while_provisioned_is_held_until_stopped():
    sim = Sim()
    sim.start()
    sim.spec(program_digest="p2")
    d = sim.step(running())
    assert sim.state.program_change_held and sim.state.program_digest == "p1"
    assert "held" in d.notes[0] and kinds(d) == []
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    sim.step(running())
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED and sim.state.program_digest == "p1"
    d = sim.step()
    assert sim.state.program_digest == "p2" and sim.state.program_status is P.PENDING
    assert not sim.state.program_change_held and kinds(d) == ["Compile"]


def test_a_rust_error_is_left_when_the_compiler_compiles_the_program_again_by_itself():
    """The binary store's missing binary appeared: the compiler started over, and the status follows it from
    RustError through Pending (Feldera's RustError -> Pending), one event each."""
    sim = Sim()
    sim.step(compiled("p1", P.RUST_ERROR, {"rust_compilation": {"stderr": "missing"}}))
    assert sim.state.program_status is P.RUST_ERROR
    assert sim.step(compiled("p1", P.RUST_ERROR)).steps == ()
    d = sim.step(compiled("p1", P.COMPILING_SQL))
    assert [s.state.program_status for s in d.steps] == [P.PENDING, P.COMPILING_SQL]
    assert sim.state.program_error is None
    sim.step(compiled("p1", P.SUCCESS))
    assert sim.state.program_status is P.SUCCESS


def test_missing_compiled_program_is_compiled_again_while_stopped():
    sim = Sim()
    sim.step(compiled("p1"))
    assert sim.state.program_status is P.SUCCESS
    sim.step(compiled("p1", P.PENDING))
    assert sim.state.program_status is P.PENDING


def test_runtime_desired_status_is_forwarded_while_provisioned():
    sim = Sim()
    sim.start()
    sim.spec(runtime_desired_status=SRD.PAUSED)
    d = sim.step(running())
    assert [(a.kind, a.target, a.activate) for a in d.actions] == [(ActionKind.SET_RUNTIME_DESIRED, SRD.PAUSED, False)]
    d = sim.step(running(RS.PAUSED, RDS.PAUSED))
    assert kinds(d) == [] and sim.state.deployment_runtime_status is RS.PAUSED
    d = sim.step(running(RS.RUNNING, RDS.RUNNING))  # resumed behind our back: paused again
    assert kinds(d) == ["SetRuntimeDesired"]


def test_runtime_desired_status_is_the_initial_status_unless_standby():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED,
                      runtime_desired_status=SRD.PAUSED))
    d = sim.step(compiled("p1"))
    assert d.actions[-1].initial is RDS.PAUSED


def test_standby_is_activated_only_when_the_runtime_desired_status_changes():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, initial=Init.STANDBY,
                      standby_allowed=True, runtime_desired_status=SRD.RUNNING))
    sim.step(compiled("p1"))
    assert sim.state.deployment_initial is RDS.STANDBY
    assert kinds(sim.step(running(RS.STANDBY, RDS.STANDBY))) == []
    sim.spec(runtime_desired_status=SRD.PAUSED)
    d = sim.step(running(RS.STANDBY, RDS.STANDBY))
    assert [(a.kind, a.target, a.activate) for a in d.actions] == [(ActionKind.SET_RUNTIME_DESIRED, SRD.PAUSED, True)]
    assert kinds(sim.step(running(RS.PAUSED, RDS.PAUSED))) == []


def test_approve_is_forwarded_only_when_awaiting_approval():
    sim = Sim()
    sim.start()
    sim.spec(approve="a1")
    sim.step(running())
    assert sim.state.handled_approve.outcome is ActionOutcome.REFUSED
    sim.spec(approve="a2")
    d = sim.step(running(RS.AWAITING_APPROVAL, RDS.RUNNING))
    assert kinds(d) == ["Approve"] and sim.state.handled_approve.value == "a2"
    assert kinds(sim.step(running(RS.AWAITING_APPROVAL, RDS.RUNNING))) == []  # once per value


def test_leftover_compute_while_stopped_is_deleted():
    sim = Sim()
    assert kinds(sim.step(Observation(compute=compute(ComputeState.READY)))) == ["Compile", "Deprovision"]


def test_details_change_is_not_a_step_but_is_in_the_state():
    sim = Sim()
    sim.start()
    d = sim.step(running(runtime_status_details={"connector_stats": {"num_errors": 1}}))
    assert d.steps == () and sim.state.deployment_runtime_status_details == {"connector_stats": {"num_errors": 1}}


@pytest.mark.parametrize(("status", "body", "probe", "runtime"), [
    (200, {"runtime_status": "Running", "runtime_desired_status": "Running"}, RuntimeProbe.OK, RS.RUNNING),
    # Feldera 0.337's newer status is not c44's: its runner reads the answer as Unavailable
    (200, {"runtime_status": "Synchronizing", "runtime_desired_status": "Running"}, RuntimeProbe.UNAVAILABLE,
     RS.UNAVAILABLE),
    (200, "Paused", RuntimeProbe.OK, RS.PAUSED),
    (200, "Running", RuntimeProbe.OK, RS.RUNNING),
    (200, "Initializing", RuntimeProbe.OK, RS.INITIALIZING),
    (200, "Terminated", RuntimeProbe.FATAL, None),
    (200, {"runtime_status": "Sleeping"}, RuntimeProbe.UNAVAILABLE, RS.UNAVAILABLE),
    (200, [1, 2], RuntimeProbe.UNAVAILABLE, RS.UNAVAILABLE),
    (200, "Sleeping", RuntimeProbe.UNAVAILABLE, RS.UNAVAILABLE),
    (503, {"message": "m", "error_code": "Initializing", "details": None}, RuntimeProbe.UNAVAILABLE, RS.INITIALIZING),
    (503, {"message": "m", "error_code": "Suspended", "details": None}, RuntimeProbe.UNAVAILABLE, RS.SUSPENDED),
    (503, {"message": "m", "error_code": "Other", "details": None}, RuntimeProbe.UNAVAILABLE, RS.UNAVAILABLE),
    (500, {"message": "panic", "error_code": "WorkerPanic", "details": {}}, RuntimeProbe.FATAL, None),
    (404, "nope", RuntimeProbe.FATAL, None),
    (None, None, RuntimeProbe.UNREACHABLE, None),
    (200, NOT_JSON, RuntimeProbe.UNREACHABLE, None),
])
def test_status_answers_are_read_as_feldera_reads_them(status, body, probe, runtime):
    obs = parse_status_response(status, body, "")
    assert obs.probe is probe and obs.runtime_status is runtime
    if probe is RuntimeProbe.FATAL:
        assert obs.error is not None and obs.error.error_code
    if status == 500:
        assert obs.error == ErrorResponse(message="panic", error_code="WorkerPanic", details={})


# --------------------------------------------------------------------------------------------
# Feldera's "desired Stopped by the system", start requests and the guards the API shares
# --------------------------------------------------------------------------------------------

from pipeline_operator.core.lifecycle import (  # noqa: E402
    PipelineState,
    clear_refusal,
    current_desired,
    delete_refusal,
    dismiss_refusal,
    edit_refusal,
    interaction_refusal,
    start_refusal,
)
from pipeline_operator.feldera_config import RuntimeConfig  # noqa: E402
from pipeline_operator.models import BootstrapPolicy  # noqa: E402


def _crashed() -> Sim:
    sim = Sim()
    sim.start()
    sim.step(Observation(compute=compute(ComputeState.FAILED, "exited with code 70")))
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED and sim.state.deployment_error is not None
    return sim


def test_a_start_request_is_refused_while_stopping_after_a_fatal_error():
    sim = Sim()
    sim.start()
    sim.step(Observation(compute=compute(ComputeState.FAILED, "gone")))
    assert sim.state.deployment_resources_status is R.STOPPING
    sim.spec(start="s1", dismiss_error="d1")
    sim.step(Observation(compute=compute(ComputeState.TERMINATING)))
    assert sim.state.handled_start.outcome is ActionOutcome.REFUSED
    assert sim.state.handled_start.error_code == "IllegalPipelineAction"
    sim.step(Observation())
    # The refused start is not silently carried out later.
    assert sim.step().state.deployment_resources_status is R.STOPPED


def test_dismiss_then_start_request_restarts_a_crashed_pipeline():
    sim = _crashed()
    sim.spec(dismiss_error="d1")
    sim.step()
    assert sim.state.deployment_error is None and sim.state.deployment_resources_status is R.STOPPED
    sim.spec(start="s1")
    d = sim.step()
    assert sim.state.deployment_resources_status is R.PROVISIONING and kinds(d) == ["Provision"]


def test_a_start_request_with_the_error_undismissed_is_refused():
    sim = _crashed()
    sim.spec(start="s1")
    sim.step()
    assert sim.state.handled_start.error_code == "CannotStartWithUndismissedError"
    assert sim.state.deployment_resources_status is R.STOPPED


def test_a_new_spec_generation_releases_the_hold_and_dismisses_the_error():
    sim = _crashed()
    sim.spec(initial=Init.PAUSED)
    d = sim.step()
    assert sim.state.deployment_error is None
    assert sim.state.deployment_resources_status is R.PROVISIONING and d.actions[-1].initial is RDS.PAUSED


def test_a_new_spec_generation_made_through_the_api_releases_nothing():
    sim = _crashed()
    sim.spec(program_digest="p2", spec_digest="edited", spec_by_api=True)  # a PUT through the HTTP API
    sim.step(compiled("p2"))
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE, spec_digest="stopped", spec_by_api=True)
    d = sim.step()
    assert sim.state.deployment_error is not None and sim.state.deployment_resources_desired_status is D.STOPPED
    assert sim.state.deployment_resources_status is R.STOPPED and "Provision" not in kinds(d)
    sim.spec(resources_desired_status=D.PROVISIONED, spec_digest="kubectl", spec_by_api=False)  # kubectl's
    sim.step()
    assert sim.state.deployment_error is None and sim.state.deployment_resources_status is R.PROVISIONING


def test_edits_the_storage_depends_on_wait_for_cleared_storage_as_feldera():
    current = RuntimeConfig()
    changed = RuntimeConfig.model_validate({"workers": 2, "hosts": 2, "fault_tolerance": {}, "tracing": True,
                                            "resources": {"storage_mb_max": 10, "namespace": "x",
                                                          "storage_class": "fast", "cpu_cores_max": 2}})
    refusal = edit_refusal(PipelineState(storage_status=S.IN_USE), current, changed)
    assert refusal is not None and refusal.error_code == "EditRestrictedToClearedStorage"
    assert refusal.details == {"not_allowed": [
        "`runtime_config.workers`", "`runtime_config.hosts`", "`runtime_config.fault_tolerance`",
        "`runtime_config.resources.storage_mb_max`", "`runtime_config.resources.namespace`",
        "`runtime_config.resources.storage_class`"]}
    assert edit_refusal(PipelineState(storage_status=S.CLEARED), current, changed) is None
    assert edit_refusal(PipelineState(storage_status=S.IN_USE), current,
                        RuntimeConfig.model_validate({"workers": 8, "tracing": True})) is None


def test_start_parameters_are_kept_while_running_and_cleared_on_the_way_to_stopped():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED,
                      bootstrap_policy=BootstrapPolicy.ALLOW))
    d = sim.step(compiled("p1"))
    assert d.actions[-1].bootstrap_policy is BootstrapPolicy.ALLOW
    sim.step(running())
    assert (sim.state.deployment_initial, sim.state.bootstrap_policy) == (RDS.RUNNING, BootstrapPolicy.ALLOW)
    state = sim.state
    refusal = start_refusal(state, D.PROVISIONED, initial=RDS.PAUSED, bootstrap_policy=BootstrapPolicy.ALLOW,
                            error_after_dismissal=False, standby_allowed=False)
    assert refusal is not None and refusal.error_code == "InitialImmutableUnlessStopped"
    refusal = start_refusal(state, D.PROVISIONED, initial=RDS.RUNNING, bootstrap_policy=BootstrapPolicy.REJECT,
                            error_after_dismissal=False, standby_allowed=False)
    assert refusal is not None and refusal.error_code == "BootstrapPolicyImmutableUnlessStopped"
    assert start_refusal(state, D.PROVISIONED, initial=RDS.RUNNING, bootstrap_policy=BootstrapPolicy.ALLOW,
                         error_after_dismissal=False, standby_allowed=False) is None
    sim.spec(resources_desired_status=D.STOPPED, stop_mode=StopMode.FORCE)
    sim.step(running())
    assert sim.state.deployment_resources_status is R.STOPPING
    assert (sim.state.deployment_initial, sim.state.bootstrap_policy) == (None, None)


def test_start_checks_come_in_feldera_order():
    args = dict(initial=RDS.RUNNING, bootstrap_policy=BootstrapPolicy.AWAIT_APPROVAL, standby_allowed=False)
    # With every problem at once, the first check wins; fixing it reveals the next.
    # Each check alone, in order:
    base = PipelineState(program_status=P.SUCCESS, storage_status=S.IN_USE)
    assert start_refusal(base.model_copy(update={"deployment_resources_status": R.STOPPING}), D.STOPPED,
                         error_after_dismissal=True, **args).error_code == "IllegalPipelineAction"
    assert start_refusal(base.model_copy(update={"storage_status": S.CLEARING}), D.STOPPED,
                         error_after_dismissal=True, **args).error_code == "CannotStartWithUndismissedError"
    assert start_refusal(base.model_copy(update={"storage_status": S.CLEARING, "program_status": P.SQL_ERROR}),
                         D.STOPPED, error_after_dismissal=False, **args).error_code == "CannotStartWhileClearingStorage"
    assert start_refusal(base.model_copy(update={"program_status": P.SQL_ERROR}), D.STOPPED,
                         error_after_dismissal=False, **args).error_code == "CannotStartWithCompilationError"
    assert start_refusal(base, D.STOPPED, error_after_dismissal=False,
                         **{**args, "initial": RDS.STANDBY}).error_code == "InitialStandbyNotAllowed"
    assert start_refusal(base, D.STOPPED, error_after_dismissal=False, **{**args, "initial": RDS.STANDBY,
                                                                          "standby_allowed": True}) is None


def test_standby_without_a_synced_file_backend_fails_the_start():
    sim = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, initial=Init.STANDBY))
    sim.step(compiled("p1"))
    assert sim.state.deployment_resources_status is R.STOPPED
    assert sim.state.deployment_error.error_code == "InitialStandbyNotAllowed"
    assert sim.state.deployment_resources_desired_status is D.STOPPED


def test_storage_of_a_stopped_pipeline_with_a_latched_error_can_be_cleared():
    sim = _crashed()
    assert clear_refusal(sim.state) is None
    sim.spec(clear_storage="c1")
    sim.step()
    assert sim.state.storage_status is S.CLEARING
    running_state = Sim()
    running_state.start()
    assert clear_refusal(running_state.state).error_code == "StorageStatusImmutableUnlessStopped"


def test_dismiss_delete_and_interaction_guards():
    sim = _crashed()
    assert dismiss_refusal(sim.state) is None
    assert delete_refusal(sim.state).error_code == "DeleteRestrictedToClearedStorage"
    assert interaction_refusal(sim.state, "p").error_code == "PipelineInteractionNotDeployed"
    live = Sim()
    live.start()
    assert interaction_refusal(live.state, "p") is None
    assert delete_refusal(live.state).error_code == "DeleteRestrictedToFullyStopped"
    live.step(Observation(compute=compute(ComputeState.READY), runtime=parse_status_response(503, {
        "message": "busy", "error_code": "Busy", "details": None})))
    assert live.state.deployment_runtime_status is RS.UNAVAILABLE
    refusal = interaction_refusal(live.state, "p")
    assert (refusal.http_status, refusal.error_code) == (503, "PipelineUnavailable")


def test_unavailable_sets_the_runtime_desired_status_as_feldera_does():
    sim = Sim(config=LifecycleConfig(provisioned_grace_period=20))
    sim.start()
    unreachable = Observation(compute=compute(ComputeState.READY),
                              runtime=parse_status_response(None, None, "connection refused"))
    sim.step(unreachable, after=30)
    assert (sim.state.deployment_runtime_status, sim.state.deployment_runtime_desired_status) \
        == (RS.UNAVAILABLE, RDS.UNAVAILABLE)
    for answer in [(503, {"message": "m", "error_code": "Other", "details": None}), (200, "Sleeping"),
                   (200, {"runtime_status": "Running"})]:
        obs = parse_status_response(*answer)
        assert (obs.runtime_status, obs.runtime_desired_status) == (RS.UNAVAILABLE, RDS.UNAVAILABLE), answer
    # Within the grace period an unreachable pipeline is Initializing, desired its initial status.
    fresh = Sim(Desired(program_digest="p1", resources_desired_status=D.PROVISIONED, initial=Init.PAUSED))
    fresh.step(compiled("p1"))
    fresh.step(Observation(compute=compute(ComputeState.READY), runtime=ok(RS.INITIALIZING, RDS.PAUSED)))
    fresh.step(unreachable, after=2)
    assert (fresh.state.deployment_runtime_status, fresh.state.deployment_runtime_desired_status) \
        == (RS.INITIALIZING, RDS.PAUSED)


def test_legacy_answers_map_to_feldera_runtime_desired_statuses():
    assert parse_status_response(200, "Initializing").runtime_desired_status is RDS.PAUSED
    assert parse_status_response(503, {"message": "m", "error_code": "Suspended", "details": None}
                                 ).runtime_desired_status is RDS.SUSPENDED
    fatal = parse_status_response(200, "Terminated")
    assert fatal.error.error_code == "PipelineInteractionInvalidResponse"
    garbage = parse_status_response(500, "x" * 100_000)
    assert garbage.error.error_code == "PipelineInteractionInvalidResponse" and len(garbage.error.message) < 5000


def test_a_new_generation_that_changes_only_description_or_tags_starts_nothing():
    sim = Sim(Desired(program_digest="p1", spec_digest="spec-a"))
    sim.start()
    sim.step(Observation(compute=compute(ComputeState.FAILED, "gone")))
    sim.step(Observation())
    assert sim.state.deployment_resources_status is R.STOPPED and sim.state.deployment_error is not None
    sim.spec(spec_digest="spec-a")  # a new generation: only the description changed
    sim.step()
    assert sim.state.deployment_error is not None and sim.step().state.deployment_resources_status is R.STOPPED
    sim.spec(spec_digest="spec-b")  # the program or configuration changed: start again
    sim.step()
    assert sim.state.deployment_error is None and sim.state.deployment_resources_status is R.PROVISIONING
