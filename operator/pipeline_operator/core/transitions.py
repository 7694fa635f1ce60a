"""Every allowed transition of Feldera's state machines, as tables.

The lifecycle core checks each step it commits against these tables, and the tests read the
same tables to prove that every allowed transition is reachable and every other one is refused.
Self-transitions ("remain") are allowed for all three machines.
"""

from __future__ import annotations

from ..models import ProgramStatus as P
from ..models import ResourcesStatus as R
from ..models import StorageStatus as S

# validate_resources_status_transition: (current -> allowed next)
RESOURCES_TRANSITIONS: dict[R, frozenset[R]] = {
    R.STOPPED: frozenset({R.STOPPED, R.PROVISIONING}),
    R.PROVISIONING: frozenset({R.PROVISIONING, R.PROVISIONED, R.STOPPING}),
    R.PROVISIONED: frozenset({R.PROVISIONED, R.STOPPING}),
    R.STOPPING: frozenset({R.STOPPING, R.STOPPED}),
}

# validate_storage_status_transition. Storage changes only while resources are Stopped.
STORAGE_TRANSITIONS: dict[S, frozenset[S]] = {
    S.CLEARED: frozenset({S.CLEARED, S.IN_USE}),
    S.IN_USE: frozenset({S.IN_USE, S.CLEARING}),
    S.CLEARING: frozenset({S.CLEARING, S.CLEARED}),
}

# validate_program_status_transition. Program status changes only while resources are Stopped.
PROGRAM_TRANSITIONS: dict[P, frozenset[P]] = {
    P.PENDING: frozenset({P.PENDING, P.COMPILING_SQL, P.SYSTEM_ERROR}),
    P.COMPILING_SQL: frozenset({P.COMPILING_SQL, P.PENDING, P.SQL_COMPILED, P.SQL_ERROR, P.SYSTEM_ERROR}),
    P.SQL_COMPILED: frozenset({P.SQL_COMPILED, P.PENDING, P.COMPILING_RUST}),
    P.COMPILING_RUST: frozenset({P.COMPILING_RUST, P.PENDING, P.SQL_COMPILED, P.SUCCESS, P.RUST_ERROR,
                                 P.SYSTEM_ERROR}),
    P.SUCCESS: frozenset({P.SUCCESS, P.PENDING}),
    P.SQL_ERROR: frozenset({P.SQL_ERROR, P.PENDING}),
    P.RUST_ERROR: frozenset({P.RUST_ERROR, P.PENDING}),
    P.SYSTEM_ERROR: frozenset({P.SYSTEM_ERROR, P.PENDING}),
}

# The compiler's forward path. A compiler that moved several steps between two monitoring
# passes is recorded step by step along these edges, so that every status is one event.
PROGRAM_FORWARD: dict[P, tuple[P, ...]] = {
    P.PENDING: (P.COMPILING_SQL, P.SYSTEM_ERROR),
    P.COMPILING_SQL: (P.SQL_COMPILED, P.SQL_ERROR, P.SYSTEM_ERROR),
    P.SQL_COMPILED: (P.COMPILING_RUST,),
    P.COMPILING_RUST: (P.SUCCESS, P.RUST_ERROR, P.SYSTEM_ERROR),
}


class InvalidTransition(Exception):
    """A step outside the tables: a bug in the core, never a user error."""


def check_resources(old: R, new: R) -> None:
    if new not in RESOURCES_TRANSITIONS[old]:
        raise InvalidTransition(f"resources status {old.value} -> {new.value} is not allowed")


def check_storage(old: S, new: S, resources: R) -> None:
    if old is not new and resources is not R.STOPPED:
        raise InvalidTransition(f"storage status {old.value} -> {new.value} while {resources.value}: "
                                "storage changes only while Stopped")
    if new not in STORAGE_TRANSITIONS[old]:
        raise InvalidTransition(f"storage status {old.value} -> {new.value} is not allowed")


def check_program(old: P, new: P, resources: R) -> None:
    if old is not new and resources is not R.STOPPED:
        raise InvalidTransition(f"program status {old.value} -> {new.value} while {resources.value}: "
                                "program status changes only while Stopped")
    if new not in PROGRAM_TRANSITIONS[old]:
        raise InvalidTransition(f"program status {old.value} -> {new.value} is not allowed")


def program_path(start: P, goal: P) -> list[P]:
    """The statuses after ``start`` up to and including ``goal`` along the compiler's forward path.

    Empty when ``goal`` is ``start``; ``[goal]`` alone when ``goal`` is not ahead of ``start``
    on the forward path (it must then be an allowed direct transition, checked by the caller).
    """
    if start is goal:
        return []
    frontier: list[list[P]] = [[start]]
    while frontier:
        path = frontier.pop(0)
        for nxt in PROGRAM_FORWARD.get(path[-1], ()):
            if nxt is goal:
                return [*path[1:], nxt]
            frontier.append([*path, nxt])
    return [goal]
