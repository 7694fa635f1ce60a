"""Every allowed and every forbidden transition of Feldera's three state machines.

The expected sets are written out here from Feldera's validation functions
(validate_resources_status_transition, validate_storage_status_transition,
validate_program_status_transition), independently of the tables in the core.
"""

from __future__ import annotations

import itertools

import pytest

from pipeline_operator.core import transitions as t
from pipeline_operator.models import ProgramStatus as P
from pipeline_operator.models import ResourcesStatus as R
from pipeline_operator.models import StorageStatus as S

FELDERA_RESOURCES = {
    ("Stopped", "Stopped"), ("Stopped", "Provisioning"),
    ("Provisioning", "Provisioning"), ("Provisioning", "Provisioned"), ("Provisioning", "Stopping"),
    ("Provisioned", "Provisioned"), ("Provisioned", "Stopping"),
    ("Stopping", "Stopping"), ("Stopping", "Stopped"),
}
FELDERA_STORAGE = {
    ("Cleared", "Cleared"), ("Cleared", "InUse"), ("InUse", "InUse"), ("InUse", "Clearing"),
    ("Clearing", "Clearing"), ("Clearing", "Cleared"),
}
FELDERA_PROGRAM = {
    ("Pending", "CompilingSql"), ("Pending", "SystemError"),
    ("CompilingSql", "Pending"), ("CompilingSql", "SqlCompiled"), ("CompilingSql", "SqlError"),
    ("CompilingSql", "SystemError"),
    ("SqlCompiled", "Pending"), ("SqlCompiled", "CompilingRust"),
    ("CompilingRust", "Pending"), ("CompilingRust", "SqlCompiled"), ("CompilingRust", "Success"),
    ("CompilingRust", "RustError"), ("CompilingRust", "SystemError"),
    ("Success", "Pending"), ("SqlError", "Pending"), ("RustError", "Pending"), ("SystemError", "Pending"),
} | {(p.value, p.value) for p in P}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(R, R)), ids=lambda s: s.value)
def test_resources_transition(old, new):
    if (old.value, new.value) in FELDERA_RESOURCES:
        t.check_resources(old, new)
    else:
        with pytest.raises(t.InvalidTransition, match=f"{old.value} -> {new.value}"):
            t.check_resources(old, new)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)), ids=lambda s: s.value)
def test_storage_transition_while_stopped(old, new):
    if (old.value, new.value) in FELDERA_STORAGE:
        t.check_storage(old, new, R.STOPPED)
    else:
        with pytest.raises(t.InvalidTransition, match="not allowed"):
            t.check_storage(old, new, R.STOPPED)


@pytest.mark.parametrize("resources", [R.PROVISIONING, R.PROVISIONED, R.STOPPING], ids=lambda s: s.value)
@pytest.mark.parametrize(("old", "new"), [(o, n) for o, n in itertools.product(S, S) if o is not n],
                         ids=lambda s: s.value)
def test_storage_never_changes_unless_stopped(resources, old, new):
    with pytest.raises(t.InvalidTransition, match="only while Stopped"):
        t.check_storage(old, new, resources)
    t.check_storage(old, old, resources)  # remaining is fine


@pytest.mark.parametrize(("old", "new"), list(itertools.product(P, P)), ids=lambda s: s.value)
def test_program_transition_while_stopped(old, new):
    if (old.value, new.value) in FELDERA_PROGRAM:
        t.check_program(old, new, R.STOPPED)
    else:
        with pytest.raises(t.InvalidTransition, match="not allowed"):
            t.check_program(old, new, R.STOPPED)


@pytest.mark.parametrize("resources", [R.PROVISIONING, R.PROVISIONED, R.STOPPING], ids=lambda s: s.value)
def test_program_never_changes_unless_stopped(resources):
    with pytest.raises(t.InvalidTransition, match="only while Stopped"):
        t.check_program(P.SUCCESS, P.PENDING, resources)


@pytest.mark.parametrize(("start", "goal", "path"), [
    (P.PENDING, P.SUCCESS, [P.COMPILING_SQL, P.SQL_COMPILED, P.COMPILING_RUST, P.SUCCESS]),
    (P.PENDING, P.SQL_ERROR, [P.COMPILING_SQL, P.SQL_ERROR]),
    (P.SQL_COMPILED, P.RUST_ERROR, [P.COMPILING_RUST, P.RUST_ERROR]),
    (P.COMPILING_SQL, P.COMPILING_SQL, []),
    (P.COMPILING_RUST, P.SQL_COMPILED, [P.SQL_COMPILED]),  # compiler restart: a direct step back
])
def test_program_path_walks_the_compiler_forward_path(start, goal, path):
    assert t.program_path(start, goal) == path
    prev = start
    for status in path:
        t.check_program(prev, status, R.STOPPED)
        prev = status
