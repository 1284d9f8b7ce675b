"""The lean transport: one persistent TCP connection per client, length-prefixed frames, no pickle.

Wire protocol, integers little-endian:

    connect: the handshake (semgap/wire/transport/handshake.py), the server speaks first
    then, per request
      client -> server  body_bytes:u64 flags:u8 op_bytes:u8 op(ASCII) body [tag]    flags bit 0: a post, no answer
      server -> client  body_bytes:u64 status:u8 body [tag]                          status 0: ok, 1: error (UTF-8 text)

Where a secret is in use, every frame ends with a 16-byte tag: HMAC-SHA256 under the connection's
session key of the frame's sequence number in its direction and its bytes (semgap/wire/transport/auth.py).
Framing is then 26 + len(op) bytes per request and 25 per answer (10 + len(op) and 9 without a
secret). The server reads a connection's frames in order, one thread per connection
(semgap/wire/transport/tcp_server.py); a failed post is remembered and the connection's later
requests are skipped until the next call, which answers with the post's error. The op `server_time`
is answered by the connection itself: the server's own time on its requests since the last ask, as
JSON (semgap/wire/timing.py).
"""
from __future__ import annotations

import socket
import threading
from typing import Callable

from semgap.wire.transport import tcp_server
from semgap.wire.transport.base import FramingBound, Handler, ServerError, ServerLimits, unreachable
from semgap.wire.transport.framed import (  # noqa: F401 (the protocol's names, for tests that speak it raw)
    ERROR, MAX_OP_BYTES, OK, POST, REQUEST, RESPONSE, TAG, FramedSocket, PeerClosed, ProtocolError, set_kernel_timeout,
)
from semgap.wire.transport.handshake import (  # noqa: F401
    ACCEPTED, ANSWER, BUSY, CLIENT_PROOF, HELLO, MAGIC, REFUSED, SECRET_DEMANDED, VERSION, prove,
)

HANDSHAKE_TIMEOUT_S = ServerLimits.handshake_timeout_s


class TcpTransport:
    """A client connection to a semgap server over the lean transport."""

    name = "tcp"
    # Measured on loopback and across the netns veth (tests/test_wire_truth.py), with a secret (as every
    # run has): exactly 26 + len(op) bytes per request, 40 for the longest op a server knows
    # (upload_weights), and 25 per answer: the frame's header and its 16-byte MAC.
    framing = FramingBound(sent_bytes_per_request=48, received_bytes_per_request=32)
    authenticates = True
    ipv6 = True
    reports_server_time = True  # its server answers timing.SERVER_TIME_OP

    def __init__(self, host: str, port: int, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0,
                 secret: bytes | None = None):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.broken = False
        self.closed = False
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as error:
            raise unreachable(host, port, self.name, error) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = FramedSocket(sock)
        try:
            prove(self.connection, secret, f"the semgap server at {host}:{port}")
        except BaseException:
            self.connection.close()
            raise
        sock.settimeout(None)  # blocking from here: per-call timeouts are the kernel's (_set_timeout)
        self._timeout_s: float | None = None
        self.lock = threading.Lock()

    def call(self, op: str, request: bytes, timeout_s: float | None = None) -> bytearray:
        """The server's answer, in a writable buffer of its own (codec.decode maps tensors onto it)."""
        with self.lock:
            self._send(op, request, 0, timeout_s or self.timeout_s)
            status, body = self._receive(op)
        if status != OK:
            raise ServerError(f"semgap server at {self.host}:{self.port} refused {op!r}: {body.decode(errors='replace')}")
        return body

    def post(self, op: str, request: bytes) -> None:
        with self.lock:
            self._send(op, request, POST, self.timeout_s)

    def _set_timeout(self, timeout_s: float) -> None:
        if timeout_s != self._timeout_s:
            set_kernel_timeout(self.connection.sock, timeout_s)
            self._timeout_s = timeout_s

    def _send(self, op: str, request: bytes, flags: int, timeout_s: float) -> None:
        name = op.encode("ascii")
        if len(name) > MAX_OP_BYTES:
            raise ValueError(f"op name {op!r} is longer than {MAX_OP_BYTES} bytes")
        self._check_open(op)
        self._set_timeout(timeout_s)
        try:
            self.connection.send_frame(REQUEST.pack(len(request), flags, len(name)), name, request)
        except OSError as error:
            raise self._lost(op, error) from None

    def _receive(self, op: str) -> tuple[int, bytearray]:
        try:
            size, status = self.connection.read_struct(RESPONSE, frame_start=True)
            body = self.connection.read_body(size)
            self.connection.read_tag(RESPONSE.pack(size, status), body)
            return status, body
        except ProtocolError as error:  # a forged or altered answer: nothing more on this connection is trustworthy
            raise self._lost(op, ConnectionError(str(error))) from None
        except OSError as error:
            raise self._lost(op, error) from None

    def _check_open(self, op: str) -> None:
        if self.closed or self.broken:
            raise ConnectionError(f"the connection to the semgap server at {self.host}:{self.port} is "
                                  f"{'closed' if self.closed else 'lost'}; cannot send {op!r}")

    def _lost(self, op: str, error: OSError) -> ConnectionError:
        self.broken = True
        self.connection.close()
        if isinstance(error, BlockingIOError):  # a kernel timeout expired: an answer may still come, out of step
            error = TimeoutError(f"no progress within {self._timeout_s:g} s")
        return ConnectionError(f"lost the semgap server at {self.host}:{self.port} during {op!r}: {error}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connection.close()

    @staticmethod
    def serve(host: str, port: int, handler: Handler, stop: threading.Event,
              on_ready: Callable[[int], None] = lambda port: None, secret: bytes | None = None, *,
              limits: ServerLimits | None = None) -> None:
        """Serve `handler` on host:port, each connection on its own thread, until `stop` is set."""
        tcp_server.serve(host, port, handler, stop, on_ready, secret, limits)
