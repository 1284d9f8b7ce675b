"""PyTorch RPC (TensorPipe over TCP) as a semgap transport.

PyTorch RPC is in maintenance mode upstream and TensorPipe is archived, but both ship and work in
torch 2.13. The server is rank 0 of a dynamic group and hosts its rendezvous store. That store is
built here, on a socket bound to the server's address only: torch's own `tcp://` rendezvous would
listen on every interface. It cannot authenticate peers and unpickles what it receives, so it
serves beyond loopback only when explicitly allowed, and IPv4 only (TensorPipe listens on the first
address of an interface).
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import threading
from datetime import timedelta
from typing import Callable
from urllib.parse import parse_qs, urlparse

from semgap.wire.transport.base import FramingBound, Handler, ServerError, ServerLimits, describe, log_failure, unreachable

SERVER_NAME = "semgap_server"
SHUTDOWN_GRACE_S = 15.0
INTERFACE_VARIABLES = ("TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
RENDEZVOUS_SCHEME = "semgap-rpc"

# The server process's request handler; PyTorch RPC calls `_dispatch` by reference, so it must be
# a module-level function and the handler a module-level slot.
_handler: Handler | None = None
# The store's listening socket, bound by `serve` before the rendezvous handler hands it to the store.
_store_listener: socket.socket | None = None


def _dispatch(op: str, request: bytes) -> tuple[str, bytes | str]:
    # Errors come back as values: PyTorch RPC would wrap a raised exception in its remote traceback.
    if _handler is None:
        return "error", "this RPC worker is not a semgap server"
    try:
        return "ok", _handler(op, request)
    except Exception as error:
        log_failure("an rpc client", op, error)
        return "error", describe(error)


def _rendezvous(url: str, timeout: timedelta = timedelta(seconds=60), **_):
    """The rendezvous of `semgap-rpc://HOST:PORT`: rank 0 hosts the store on the socket `serve` bound."""
    import torch.distributed as dist

    global _store_listener
    parsed = urlparse(url)
    rank = int(parse_qs(parsed.query)["rank"][0])
    if rank == 0:
        if _store_listener is None:
            raise RuntimeError("the semgap RPC server's store socket was not bound")
        listen_fd, _store_listener = _store_listener.detach(), None  # the store closes it when it goes
        store = dist.TCPStore(parsed.hostname, parsed.port, -1, True, timeout, master_listen_fd=listen_fd,
                              multi_tenant=False)
    else:
        store = dist.TCPStore(parsed.hostname, parsed.port, -1, False, timeout)
    yield store, rank, -1  # -1: a dynamic group (world_size=None)
    raise RuntimeError(f"{RENDEZVOUS_SCHEME}:// cannot rendezvous again")


def _register_rendezvous() -> None:
    from torch.distributed.rendezvous import register_rendezvous_handler

    try:
        register_rendezvous_handler(RENDEZVOUS_SCHEME, _rendezvous)
    except RuntimeError:
        pass  # registered earlier in this process


def _backend_options(host: str, port: int, timeout_s: float):
    import torch.distributed.rpc as rpc

    _register_rendezvous()
    # TensorPipe prefers shared memory between processes on one host, and then no byte would cross a
    # socket: force its TCP transport ("uv") and the basic channel, so every byte is on the wire.
    # CUDA tensors never reach this layer: codec.encode copies everything to the CPU first.
    return rpc.TensorPipeRpcBackendOptions(
        init_method=f"{RENDEZVOUS_SCHEME}://{host}:{port}",
        rpc_timeout=timeout_s,
        num_worker_threads=8,
        _transports=["uv"],
        _channels=["basic"],
    )


class RpcTransport:
    """A client connection to a semgap server over PyTorch RPC; one per process, as RPC allows."""

    name = "rpc"
    # Measured on loopback and across the netns veth (tests/test_wire_truth.py): TensorPipe's message
    # descriptor plus the pickled (op, bytes) call (whose module path counts), 247-273 B per request (it grows with the op name
    # and by 16 B from 64 KiB of payload) and 149-165 B per answer. A post waits for its answer.
    framing = FramingBound(sent_bytes_per_request=277, received_bytes_per_request=176, posts_answered=True)
    authenticates = False
    ipv6 = False

    def __init__(self, host: str, port: int, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0,
                 secret: bytes | None = None):
        import torch.distributed.rpc as rpc

        del secret  # PyTorch RPC has no authentication: serve() keeps it on loopback instead
        self._rpc = rpc
        self.host, self.port, self.timeout_s = host, port, timeout_s
        _probe(host, port, connect_timeout_s)
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

    @staticmethod
    def serve(host: str, port: int, handler: Handler, stop: threading.Event,
              on_ready: Callable[[int], None] = lambda port: None, secret: bytes | None = None,
              timeout_s: float = 600.0, limits: ServerLimits | None = None) -> None:
        """Serve `handler` as rank 0 of a dynamic RPC group (it hosts the rendezvous store) until `stop` is set.

        With `world_size=None` PyTorch RPC admits clients one after another, so one server serves many
        benchmark sessions in a row.
        """
        import torch.distributed.rpc as rpc

        global _handler, _store_listener
        del secret  # nothing to prove it with: check_bind kept this server where that is acceptable
        del limits  # TensorPipe reads and allocates as it sees fit: rpc serves on loopback only
        _handler = handler
        _store_listener = socket.create_server((host, port), backlog=128)
        port = _store_listener.getsockname()[1]  # the kernel's pick when asked for 0
        pin_interface(host)
        rpc.init_rpc(SERVER_NAME, rank=0, world_size=None, rpc_backend_options=_backend_options(host, port, timeout_s))
        try:
            on_ready(port)
            stop.wait()
        finally:
            # A client that vanished mid-call can leave the agent's shutdown waiting forever: bound it.
            deadline = threading.Timer(SHUTDOWN_GRACE_S, os._exit, (3,))
            deadline.daemon = True
            deadline.start()
            rpc.shutdown(graceful=False)
            deadline.cancel()
            _handler = None


def pin_interface(local_address: str) -> None:
    """Make TensorPipe and Gloo announce the interface holding `local_address`.

    Unpinned, TensorPipe announces the address the host name resolves to, which need not be the one
    the server was bound to: it would listen there, and the kernel counters looked up by the
    server's address would miss the data connection. Variables already set (the netns link sets
    them) are kept.
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


def _probe(host: str, port: int, timeout_s: float) -> None:
    """Fail fast, with a message that says what to do, when nothing listens at host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise unreachable(host, port, RpcTransport.name, error) from None


def _is_connection_failure(error: Exception) -> bool:
    text = str(error).lower()
    return any(
        marker in text
        for marker in ("connection reset", "eof", "connection refused", "pipe closed", "broken pipe", "timed out")
    )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
