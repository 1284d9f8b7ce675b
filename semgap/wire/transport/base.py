"""The transport boundary every transport implements, its errors, and what tcp and rpc share."""
from __future__ import annotations

import ipaddress
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

Handler = Callable[[str, bytes], bytes]
DEFAULT_TRANSPORT = "tcp"


class ServerUnreachable(ConnectionError):
    """No semgap server answered at the given address in time."""


class AuthenticationFailed(ConnectionError):
    """One side did not prove the shared secret, or the other demanded one it does not have."""


class ServerBusy(ConnectionError):
    """The server refused the connection: it serves as many as its cap allows."""


class ServerError(RuntimeError):
    """The server refused or failed a request; it goes on serving."""


class BindRefused(ValueError):
    """A server was asked to listen where its transport cannot do so safely."""


class Transport(Protocol):
    broken: bool  # the connection was lost: every later call would fail

    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytes: ...

    def post(self, op: str, request: bytes) -> None:
        """Send a request whose answer nobody waits for; the server runs it before any later request
        of this connection, and a failure surfaces as ServerError on a later `call`."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class FramingBound:
    """What a transport may add to the payload per request on the wire (kernel TCP bytes), per direction.

    Set from the framing measured per call (tests/test_wire_truth.py measures it again and fails
    if a bound is exceeded or looser than the measurement plus a small margin). A post is one
    request sent; only where posts wait for their answer (rpc) is it also one received.
    """

    sent_bytes_per_request: int
    received_bytes_per_request: int
    posts_answered: bool = False

    def sent(self, calls: int, posts: int) -> int:
        return self.sent_bytes_per_request * (calls + posts)

    def received(self, calls: int, posts: int) -> int:
        return self.received_bytes_per_request * (calls + (posts if self.posts_answered else 0))


@dataclass(frozen=True)
class ServerLimits:
    """What a server takes from a peer before and after it proved anything: nothing grows without bound.

    `max_frame_bytes` refuses a larger request at once, before reading its body (a model server sets it
    from its model: the weight upload with a margin); `max_connections` refuses any connection beyond it
    with a clear answer; `handshake_timeout_s` bounds the whole handshake, `idle_timeout_s` each wait for
    a peer's bytes afterwards (a stalled frame, a client that sends nothing, one that reads no answers).
    """

    max_frame_bytes: int = 1 << 26  # 64 MiB: the calibration's 25 MB with room to spare
    max_connections: int = 64
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 3600.0  # a run's connection idles while its local modes run


class TransportKind(Protocol):
    """A registered transport: a client class that connects in its constructor, and its server."""

    name: ClassVar[str]
    framing: ClassVar[FramingBound]
    authenticates: ClassVar[bool]  # proves a shared secret at connect
    ipv6: ClassVar[bool]  # can listen on an IPv6 address, and only there

    def __call__(self, host: str, port: int, *, timeout_s: float, connect_timeout_s: float,
                 secret: bytes | None) -> Transport: ...

    @staticmethod
    def serve(host: str, port: int, handler: Handler, stop: threading.Event, on_ready: Callable[[int], None],
              secret: bytes | None, *, limits: ServerLimits | None = None) -> None: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def unreachable(host: str, port: int, transport_name: str, error: OSError) -> ServerUnreachable:
    """The error for a server that does not answer, with the command that would start one."""
    return ServerUnreachable(
        f"no semgap server answers at {host}:{port} ({error}); start one with `python -m semgap.server "
        f"--transport {transport_name} --host {host} --port {port}` or leave out --semgap-server to let the "
        "suite start its own"
    )


def describe(error: BaseException) -> str:
    """An exception as the one line a client sees in its ServerError."""
    return f"{type(error).__name__}: {error.args[0] if len(error.args) == 1 else error}"


def log_failure(peer: str, op: str, error: BaseException) -> None:
    """A handler's exception with its traceback, on the server's log: its client sees only `describe`'s line."""
    trace = "".join(traceback.format_exception(error)).rstrip()
    print(f"semgap server: {op!r} from {peer} failed:\n{trace}", file=sys.stderr, flush=True)
