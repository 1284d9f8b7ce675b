"""Moving request/response bytes between client and server, and counting what the modes send.

Every transport sits behind one boundary: `call(op, request) -> response`, `post(op, request)` (one
way) and `close()`. Two are registered in TRANSPORTS:

- `tcp` (semgap/wire/transport/tcp.py, the default): one persistent TCP connection per client,
  length-prefixed frames, a shared secret proven by HMAC at connect and a MAC on every frame after,
  limits on what any peer can make the server hold (ServerLimits), no pickle.
- `rpc` (semgap/wire/transport/rpc.py): PyTorch RPC over TensorPipe, which the seed names. It cannot
  authenticate its peers and unpickles what it receives, so it serves on loopback only unless told
  otherwise, and IPv4 only.

`connect(name, ...)` opens a client connection and `serve(name, ...)` runs a server; both check
the name against the registry.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from semgap.wire import timing
from semgap.wire.transport.base import (  # noqa: F401 (the boundary's names, for callers of semgap.wire.transport)
    DEFAULT_TRANSPORT, AuthenticationFailed, BindRefused, FramingBound, Handler, ServerBusy, ServerError, ServerLimits,
    ServerUnreachable, Transport, TransportKind, describe, is_ipv6, is_loopback, unreachable,
)
from semgap.wire.transport.rpc import RpcTransport
from semgap.wire.transport.tcp import TcpTransport


def transport_kind(name: str) -> TransportKind:
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r}; choose from {', '.join(TRANSPORTS)}")
    return TRANSPORTS[name]


def connect(name: str, host: str, port: int, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0,
            secret: bytes | None = None) -> Transport:
    """A client connection to the semgap server at host:port over transport `name`."""
    return transport_kind(name)(host, port, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, secret=secret)


def serve(name: str, host: str, port: int, handler: Handler, stop: threading.Event, *,
          on_ready: Callable[[int], None] = lambda port: None, secret: bytes | None = None,
          allow_unauthenticated: bool = False, limits: ServerLimits | None = None) -> None:
    """Serve `handler` on host:port over transport `name` until `stop` is set, once binding there is safe."""
    kind = transport_kind(name)
    check_bind(kind, host, secret is not None, allow_unauthenticated)
    kind.serve(host, port, handler, stop, on_ready, secret, limits=limits)


def check_bind(kind: TransportKind, host: str, has_secret: bool, allow_unauthenticated: bool = False) -> None:
    """Refuse an address the transport cannot serve on safely, saying what would make it safe."""
    if is_ipv6(host) and not kind.ipv6:
        raise BindRefused(
            f"the {kind.name} transport cannot serve on the IPv6 address {host}: TensorPipe listens on the first "
            "address of the interface, IPv4 on lo, not on the address asked for; use --transport tcp"
        )
    if is_loopback(host):
        return
    if kind.authenticates and not has_secret:
        raise BindRefused(
            f"refusing to serve {kind.name} on {host}, beyond loopback, without a shared secret: set SEMGAP_SECRET "
            "or pass --secret-file (any client must then prove the same secret)"
        )
    if not kind.authenticates and not allow_unauthenticated:
        raise BindRefused(
            f"refusing to serve {kind.name} on {host}, beyond loopback: PyTorch RPC cannot authenticate its peers "
            "and unpickles what they send, so anyone who reaches the port can run code here. Bind 127.0.0.1 and "
            "tunnel the port over SSH, use --transport tcp with a secret, or pass --allow-unauthenticated-rpc "
            "on a network only trusted hosts can reach"
        )


@dataclass
class PayloadCounter:
    """What the modes serialised and handed to the transport, per direction, and how often."""

    bytes_sent: int = 0
    bytes_received: int = 0
    round_trips: int = 0  # calls: requests the client waited for
    posts: int = 0  # requests sent without waiting for an answer
    server_compute_ms: float = 0.0
    encode_ms: float = 0.0
    decode_ms: float = 0.0
    wait_ms: float = 0.0  # inside the transport: sending, and waiting for and reading the answers

    def snapshot(self) -> "PayloadCounter":
        return PayloadCounter(**vars(self))

    def since(self, before: "PayloadCounter") -> "PayloadCounter":
        return PayloadCounter(**{name: value - getattr(before, name) for name, value in vars(self).items()})


@dataclass
class CountingTransport:
    """Wraps a transport and counts the payload bytes of every call at the transport boundary."""

    inner: Transport
    counter: PayloadCounter = field(default_factory=PayloadCounter)

    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytes:
        start = time.perf_counter()
        response = self.inner.call(op, request, timeout_s)
        self.counter.wait_ms += (time.perf_counter() - start) * 1e3
        self.counter.bytes_sent += len(request)
        self.counter.bytes_received += len(response)
        self.counter.round_trips += 1
        return response

    def post(self, op: str, request: bytes) -> None:
        start = time.perf_counter()
        self.inner.post(op, request)
        self.counter.wait_ms += (time.perf_counter() - start) * 1e3
        self.counter.bytes_sent += len(request)
        self.counter.posts += 1

    def server_time(self) -> timing.ServerTime | None:
        """The server's own time on this connection since the last ask (None where the transport cannot
        say). Its bytes are not counted: ask between rounds, outside any round's counters."""
        if not getattr(self.inner, "reports_server_time", False):
            return None
        return timing.ServerTime(**json.loads(bytes(self.inner.call(timing.SERVER_TIME_OP, b""))))

    def close(self) -> None:
        self.inner.close()


TRANSPORTS: dict[str, TransportKind] = {
    TcpTransport.name: TcpTransport,
    RpcTransport.name: RpcTransport,
}
