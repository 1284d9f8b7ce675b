"""Moving request/response bytes between client and server, and counting what the modes send.

Everything specific to PyTorch RPC lives here, behind `Transport.call(op, request) -> response`:
a second transport only has to move bytes. PyTorch RPC is in maintenance mode upstream and
TensorPipe is archived, but both ship and work in torch 2.13.
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

SERVER_NAME = "semgap_server"
SHUTDOWN_GRACE_S = 15.0
INTERFACE_VARIABLES = ("TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
Handler = Callable[[str, bytes], bytes]

# The server process's request handler; PyTorch RPC calls `_dispatch` by reference, so it must be
# a module-level function and the handler a module-level slot.
_handler: Handler | None = None


class ServerUnreachable(ConnectionError):
    """No semgap server answered at the given address in time."""


class Transport(Protocol):
    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytes: ...

    def post(self, op: str, request: bytes) -> None:
        """Send a request whose answer nobody waits for; the server runs it before any later request
        of this connection, and a failure surfaces as ServerError on a later `call`."""

    def close(self) -> None: ...


class ServerError(RuntimeError):
    """The server refused or failed a request; it goes on serving."""


def _dispatch(op: str, request: bytes) -> tuple[str, bytes | str]:
    # Errors come back as values: PyTorch RPC would wrap a raised exception in its remote traceback.
    if _handler is None:
        return "error", "this RPC worker is not a semgap server"
    try:
        return "ok", _handler(op, request)
    except Exception as error:
        return "error", f"{type(error).__name__}: {error.args[0] if len(error.args) == 1 else error}"


def _backend_options(host: str, port: int, timeout_s: float):
    import torch.distributed.rpc as rpc

    # TensorPipe prefers shared memory between processes on one host, and then no byte would cross a
    # socket: force its TCP transport ("uv") and the basic channel, so every byte is on the wire.
    # CUDA tensors never reach this layer: codec.encode copies everything to the CPU first.
    return rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://{host}:{port}",
        rpc_timeout=timeout_s,
        num_worker_threads=8,
        _transports=["uv"],
        _channels=["basic"],
    )


def serve(
    host: str,
    port: int,
    handler: Handler,
    stop: threading.Event,
    on_ready: Callable[[], None] = lambda: None,
    timeout_s: float = 600.0,
) -> None:
    """Serve `handler` as rank 0 of a dynamic RPC group (it hosts the rendezvous store) until `stop` is set.

    With `world_size=None` PyTorch RPC admits clients one after another, so one server serves many
    benchmark sessions in a row.
    """
    import torch.distributed.rpc as rpc

    global _handler
    _handler = handler
    pin_interface(host)
    rpc.init_rpc(SERVER_NAME, rank=0, world_size=None, rpc_backend_options=_backend_options(host, port, timeout_s))
    try:
        on_ready()
        stop.wait()
    finally:
        # A client that vanished mid-call can leave the agent's shutdown waiting forever: bound it.
        deadline = threading.Timer(SHUTDOWN_GRACE_S, os._exit, (3,))
        deadline.daemon = True
        deadline.start()
        rpc.shutdown(graceful=False)
        deadline.cancel()
        _handler = None


class RpcTransport:
    """A client connection to a semgap server over PyTorch RPC (TensorPipe, TCP)."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0, connect_timeout_s: float = 10.0):
        import torch.distributed.rpc as rpc

        self._rpc = rpc
        self.host, self.port, self.timeout_s = host, port, timeout_s
        probe_server(host, port, connect_timeout_s)
        self._environment = {name: os.environ.get(name) for name in INTERFACE_VARIABLES}
        pin_interface(_source_address(host, port))
        # Ranks only need to be unique among the clients connected at the same time.
        rank = random.SystemRandom().randint(1, 32767)  # RPC worker ids are int16
        options = _backend_options(host, port, connect_timeout_s)
        rpc.init_rpc(f"semgap_client_{rank}", rank=rank, world_size=None, rpc_backend_options=options)
        self.broken = False
        self.closed = False

    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytes:
        try:
            status, response = self._rpc.rpc_sync(
                SERVER_NAME, _dispatch, args=(op, request), timeout=timeout_s or self.timeout_s
            )
        except Exception as error:
            if _is_connection_failure(error):
                self.broken = True
                raise ConnectionError(
                    f"lost the semgap server at {self.host}:{self.port} during {op!r}: {_first_line(error)}"
                ) from error
            raise
        if status != "ok":
            raise ServerError(f"semgap server at {self.host}:{self.port} refused {op!r}: {response}")
        return response

    def post(self, op: str, request: bytes) -> None:
        # PyTorch RPC runs requests on a pool of threads, so only a finished call keeps them in order:
        # on this transport a post waits for its answer like a call (and costs a round trip).
        self.call(op, request)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # A graceful shutdown waits for the server's acknowledgement, which a dead server never sends.
        self._rpc.shutdown(graceful=not self.broken)
        for name, value in self._environment.items():  # what pin_interface set is this connection's only
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pin_interface(local_address: str) -> None:
    """Make TensorPipe and Gloo announce the interface holding `local_address`.

    Unpinned, TensorPipe announces the address the host name resolves to, which need not be the one
    the server was bound to, and the kernel counters looked up by the server's address would then
    miss the data connection. Variables already set (the netns link sets them) are kept.
    """
    if "TP_SOCKET_IFNAME" in os.environ:
        return
    interface = _interface_of(local_address)
    if interface is not None:
        os.environ["TP_SOCKET_IFNAME"] = interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)


def _interface_of(address: str) -> str | None:
    """The interface whose IPv4 address is `address` (SIOCGIFADDR on each), or None."""
    SIOCGIFADDR = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(answer[20:24]) == address:
                return name
    return None


def _source_address(host: str, port: int) -> str:
    """The local address the kernel would use towards host:port (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return probe.getsockname()[0]
    except OSError:
        return ""


def probe_server(host: str, port: int, timeout_s: float) -> None:
    """Fail fast, with a message that says what to do, when nothing listens at host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise ServerUnreachable(
            f"no semgap server answers at {host}:{port} ({error}); start one with "
            f"`python -m semgap.server --host {host} --port {port}` or leave out --semgap-server "
            "to let the suite start its own"
        ) from None


def _is_connection_failure(error: Exception) -> bool:
    text = str(error).lower()
    return any(
        marker in text
        for marker in ("connection reset", "eof", "connection refused", "pipe closed", "broken pipe", "timed out")
    )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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

    def snapshot(self) -> "PayloadCounter":
        return PayloadCounter(**vars(self))

    def since(self, before: "PayloadCounter") -> "PayloadCounter":
        return PayloadCounter(**{name: value - getattr(before, name) for name, value in vars(self).items()})


@dataclass
class CountingTransport:
    """Wraps a transport and counts the payload bytes of every call at the RPC boundary."""

    inner: Transport
    counter: PayloadCounter = field(default_factory=PayloadCounter)

    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytes:
        response = self.inner.call(op, request, timeout_s)
        self.counter.bytes_sent += len(request)
        self.counter.bytes_received += len(response)
        self.counter.round_trips += 1
        return response

    def post(self, op: str, request: bytes) -> None:
        self.inner.post(op, request)
        self.counter.bytes_sent += len(request)
        self.counter.posts += 1

    def close(self) -> None:
        self.inner.close()
