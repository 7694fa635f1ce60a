"""The durable monitor-event store: the system of record for every pipeline's events.

Two backends behind one interface (:class:`.base.EventStorage`), chosen by ``--event-store`` through
:func:`open_event_store`: an SQLite file (:mod:`.sqlite`; the embedded default, for one replica), or a
PostgreSQL database (:mod:`.postgres`, given as a ``postgresql://`` URL; what Feldera itself keeps
its events in, and what several replicas share: any replica reads it, the leader writes). Both queue
writes the same way (:class:`.base.QueuedEventStore`), keep the same retention and order, and seed from
``status.history`` without duplicating; a read that cannot be served raises :class:`.base.StoreUnavailable`.
The backends do not import each other. :mod:`.sweep` is the leader's sweep of the events of Pipelines
that no longer exist.
"""

from __future__ import annotations

from pathlib import Path

from ..settings import is_database_url
from .base import DEFAULT_QUEUE_LIMIT, PRUNE_INTERVAL, EventStorage


def open_event_store(target: Path | str, retention: int = 720, prune_interval: float = PRUNE_INTERVAL,
                     queue_limit: int = DEFAULT_QUEUE_LIMIT) -> EventStorage:
    """The event store ``--event-store`` names: a PostgreSQL database for a ``postgresql://`` URL (its
    password from the environment, as libpq reads it), else an SQLite file at that path. Blocking."""
    if is_database_url(target):
        from .postgres import PostgresEventStore  # psycopg is loaded only when a database is named
        return PostgresEventStore(str(target), retention, prune_interval, queue_limit)
    from .sqlite import SqliteEventStore
    return SqliteEventStore(Path(target), retention, prune_interval, queue_limit)
