"""A server's own time, taken apart per request and added up per connection.

The transport's server opens a clock around each handler call (`request_clock`); the codec and the
model server add the parts they spend to the current clock (`part`, `add`), whichever thread runs
them (the model server carries the context onto its engine thread). Nothing goes on the wire with
an answer: a client asks for its connection's totals between rounds (`SERVER_TIME_OP`), so no
round's bytes change. A part outside any clock (the client's own codec) costs one lookup.
"""
from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator

SERVER_TIME_OP = "server_time"  # answered by the transport's server itself: the totals since the last ask, as JSON


@dataclass
class ServerTime:
    """What a server spent on requests, in milliseconds: the parts and the whole handler call."""

    queue_ms: float = 0.0  # waiting for the model while another request held it
    decode_ms: float = 0.0  # decoding requests (codec.decode)
    encode_ms: float = 0.0  # encoding answers (codec.encode), blind and semantic alike
    handler_ms: float = 0.0  # the whole handler call: the parts above, the compute and the dispatch around them
    requests: int = 0

    def add(self, other: "ServerTime") -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


_current: contextvars.ContextVar[ServerTime | None] = contextvars.ContextVar("semgap_server_time", default=None)


@contextmanager
def request_clock(clock: ServerTime) -> Iterator[None]:
    """Time one request into `clock`: its parts while it runs, the whole call (and the count) at the end."""
    token = _current.set(clock)
    start = time.perf_counter()
    try:
        yield
    finally:
        clock.handler_ms += (time.perf_counter() - start) * 1e3
        clock.requests += 1
        _current.reset(token)


def add(part: str, ms: float) -> None:
    """Add `ms` to the current request's `part` (queue_ms, decode_ms or encode_ms); nothing outside a request."""
    clock = _current.get()
    if clock is not None:
        setattr(clock, part, getattr(clock, part) + ms)


@contextmanager
def part(name: str) -> Iterator[None]:
    """Time the block into the current request's `name`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, (time.perf_counter() - start) * 1e3)
