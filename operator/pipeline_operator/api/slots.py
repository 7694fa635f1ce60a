"""Bounded slots for open-ended streams, overall and per client address (429 beyond either bound):
the live event streams and the data plane's log, egress and query streams each have their own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import ApiError


class StreamSlots:
    """The streams of one kind open now. ``what`` names them and ``advice`` says what to do instead,
    in the 429's message."""

    def __init__(self, streams: int, per_client: int, what: str, advice: str) -> None:
        self.streams, self.per_client = streams, per_client
        self.what, self.advice = what, advice
        self.open = 0
        self.by_client: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, client: str) -> Iterator[None]:
        mine = self.by_client.get(client, 0)
        if self.open >= self.streams or mine >= self.per_client:
            limit, where = (self.streams, "in all") if self.open >= self.streams else (self.per_client,
                                                                                       f"from {client}")
            raise ApiError(429, "TooManyStreams", f"Too many {self.what} are open {where}: at most {limit}; "
                                                  f"{self.advice}", {"limit": limit}, retry_after=5)
        self.open += 1
        self.by_client[client] = mine + 1
        try:
            yield
        finally:
            self.open -= 1
            left = self.by_client[client] - 1
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]
