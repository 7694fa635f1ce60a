"""Exponential backoff: the one helper for the operator's own retry loops (the monitoring loop
after a failed pass, the event store's writer, the Kubernetes Event poster). Kopf's handlers use
Kopf's own backoff and errors settings instead."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """``initial``, then doubling up to ``maximum``; ``attempts`` (if set) failures in a row give up."""
    initial: float
    maximum: float
    attempts: int | None = None
    _next: float = field(init=False)
    _failures: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._next = self.initial

    def failure(self) -> float | None:
        """Seconds to wait before the next try, or None when the attempts are used up."""
        self._failures += 1
        if self.attempts is not None and self._failures >= self.attempts:
            return None
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay

    def success(self) -> None:
        self._next, self._failures = self.initial, 0
