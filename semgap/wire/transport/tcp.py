"""The lean transport: one persistent TCP connection per client, length-prefixed frames, no pickle.

Wire protocol, integers little-endian:

    connect, the server speaks first
      server -> client  "SGTP" version:u8 flags:u8 server_nonce[32]    flags bit 0: a secret is demanded
      client -> server  client_nonce[32] client_proof[32]
      server -> client  status:u8 server_proof[32]                      status 0: accepted, 1: refused
    then, per request
      client -> server  body_bytes:u64 flags:u8 op_bytes:u8 op(ASCII) body    flags bit 0: a post, no answer
      server -> client  body_bytes:u64 status:u8 body                          status 0: ok, 1: error (UTF-8 text)

Proofs are HMAC-SHA256 over both nonces (semgap/transport/auth.py), zeros where no secret is set.
Framing is 10 + len(op) bytes per request and 9 per answer. The server reads a connection's
frames in order, one thread per connection; a failed post is remembered and the connection's
later requests are skipped until the next call, which answers with the post's error. A frame the
server cannot trust (a length beyond its limit, unknown flags, a non-ASCII op) is answered with an
error and the connection is closed; other connections go on.
"""
from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from typing import Callable

from semgap.wire.transport.base import (
    AuthenticationFailed, FramingBound, Handler, ServerError, describe, unreachable,
)
from semgap.wire.transport import auth

VERSION = 1
HELLO = struct.Struct(f"<4sBB{auth.NONCE_BYTES}s")
CLIENT_PROOF = struct.Struct(f"<{auth.NONCE_BYTES}s{auth.PROOF_BYTES}s")
ANSWER = struct.Struct(f"<B{auth.PROOF_BYTES}s")
REQUEST = struct.Struct("<QBB")
RESPONSE = struct.Struct("<QB")
MAGIC = b"SGTP"
SECRET_DEMANDED = 0x01
POST = 0x01
OK, ERROR = 0, 1
ACCEPTED, REFUSED = 0, 1
MAX_OP_BYTES = 255
# The server's limit on one request: the largest real one is a weight upload (GPT-J-6B in fp16:
# 12.1 GB); anything beyond the machine's memory could only fail later, after filling it.
MAX_REQUEST_BYTES = 1 << 36
HANDSHAKE_TIMEOUT_S = 10.0
ACCEPT_POLL_S = 0.2
STOP_GRACE_S = 10.0
# Small frames arrive through this buffer, several per recv when posts are pipelined; bodies larger
# than it are received straight into their own buffer.
RECEIVE_BUFFER_BYTES = 1 << 16


class PeerClosed(ConnectionError):
    """The peer closed the connection; `mid_frame` when it did so inside a frame."""

    def __init__(self, message: str, mid_frame: bool):
        super().__init__(message)
        self.mid_frame = mid_frame


class ProtocolError(ValueError):
    """A frame that breaks the protocol: the connection cannot be trusted to stay in step."""


class FramedSocket:
    """A connected socket with a receive buffer: exact reads of fixed fields, bodies in buffers of their own."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray(RECEIVE_BUFFER_BYTES)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0  # the buffered bytes not read yet
        self.last_body: bytearray | None = None  # the last large body handed out, reused once released

    def read_struct(self, layout: struct.Struct, frame_start: bool = False) -> tuple:
        self._fill(layout.size, frame_start)
        values = layout.unpack_from(self.buffer, self.start)
        self.start += layout.size
        return values

    def read_body(self, size: int) -> bytearray:
        """`size` bytes in a writable buffer that the caller owns (codec.decode maps tensors onto it)."""
        body = self._body_buffer(size)
        buffered = min(size, self.end - self.start)
        body[:buffered] = self.view[self.start:self.start + buffered]
        self.start += buffered
        if buffered == size:
            return body
        if size - buffered < RECEIVE_BUFFER_BYTES:
            self._fill(size - buffered)
            body[buffered:] = self.view[self.start:self.start + size - buffered]
            self.start += size - buffered
            return body
        target, received = memoryview(body), buffered
        while received < size:
            count = self.sock.recv_into(target[received:])
            if count == 0:
                raise PeerClosed(f"the peer closed the connection {received} bytes into a {size}-byte body", True)
            received += count
        return body

    def _body_buffer(self, size: int) -> bytearray:
        """A buffer of `size` bytes: the last large one if its receiver has let go of it, else a new one.

        A fresh buffer costs a page fault per 4 KiB page as it fills: 25 MB measured at 60 % of a
        reused buffer's throughput on loopback. Requests and answers repeat their sizes round after
        round, so the last large body is reused when nothing refers to it any more: no tensor maps
        it and no caller keeps it (CPython's reference count says so, exactly).
        """
        if size < RECEIVE_BUFFER_BYTES:
            return bytearray(size)
        last, self.last_body = self.last_body, None
        if last is not None and len(last) == size and sys.getrefcount(last) == 2:  # `last` and the argument
            self.last_body = last
        else:
            self.last_body = bytearray(size)
        return self.last_body

    def _fill(self, count: int, frame_start: bool = False) -> None:
        if self.end - self.start >= count:
            return
        if self.start + count > len(self.buffer):  # move what is left to the front
            pending = self.end - self.start
            self.buffer[:pending] = self.view[self.start:self.end]
            self.start, self.end = 0, pending
        while self.end - self.start < count:
            received = self.sock.recv_into(self.view[self.end:])
            if received == 0:
                mid_frame = not frame_start or self.end > self.start
                raise PeerClosed(
                    f"the peer closed the connection {'inside a frame' if mid_frame else 'between frames'}", mid_frame
                )
            self.end += received

    def send(self, *parts) -> None:
        """Send every part in order with as few system calls as the kernel allows, copying nothing."""
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views and sent:
                views[0] = views[0][sent:]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        self.sock.close()


class TcpTransport:
    """A client connection to a semgap server over the lean transport."""

    name = "tcp"
    # Measured on loopback and across the netns veth (tests/test_wire_truth.py): exactly 10 + len(op)
    # bytes per request, 24 for the longest op a server knows (upload_weights), and 9 per answer.
    framing = FramingBound(sent_bytes_per_request=32, received_bytes_per_request=16)
    authenticates = True
    ipv6 = True

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
            self._prove(secret)
        except BaseException:
            self.connection.close()
            raise
        sock.settimeout(None)  # blocking from here: per-call timeouts are the kernel's (_set_timeout)
        self._timeout_s: float | None = None
        self.lock = threading.Lock()

    def _prove(self, secret: bytes | None) -> None:
        where = f"the semgap server at {self.host}:{self.port}"
        try:
            magic, version, flags, server_nonce = self.connection.read_struct(HELLO)
        except OSError as error:  # PeerClosed and timeouts included
            raise ConnectionError(f"{where} did not greet this client: {error}") from None
        if magic != MAGIC or version != VERSION:
            raise ConnectionError(f"{where} does not speak semgap's tcp transport (version {VERSION}); "
                                  "is it a --transport rpc server?")
        if flags & SECRET_DEMANDED and secret is None:
            raise AuthenticationFailed(f"{where} demands a shared secret: set SEMGAP_SECRET or --semgap-secret-file")
        if secret is not None and not flags & SECRET_DEMANDED:
            raise AuthenticationFailed(f"{where} demands no secret, so it cannot prove it holds this one; "
                                       "start it with the same SEMGAP_SECRET")
        client_nonce = auth.new_nonce()
        self.connection.send(CLIENT_PROOF.pack(client_nonce, auth.proof(secret, auth.CLIENT, server_nonce, client_nonce)))
        try:
            status, server_proof = self.connection.read_struct(ANSWER)
        except PeerClosed:
            status, server_proof = REFUSED, b""
        if status != ACCEPTED:
            raise AuthenticationFailed(f"{where} refused this client's secret")
        if secret is not None and not auth.verify(secret, server_proof, auth.SERVER, server_nonce, client_nonce):
            raise AuthenticationFailed(f"{where} did not prove the shared secret: it is not the server you meant")

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
        # Kernel timeouts on a blocking socket cost no system call per send or receive, unlike
        # Python's own socket timeouts (a poll before each); an expired one raises BlockingIOError.
        if timeout_s != self._timeout_s:
            seconds = int(timeout_s)
            value = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                self.connection.sock.setsockopt(socket.SOL_SOCKET, option, value)
            self._timeout_s = timeout_s

    def _send(self, op: str, request: bytes, flags: int, timeout_s: float) -> None:
        name = op.encode("ascii")
        if len(name) > MAX_OP_BYTES:
            raise ValueError(f"op name {op!r} is longer than {MAX_OP_BYTES} bytes")
        self._check_open(op)
        self._set_timeout(timeout_s)
        try:
            self.connection.send(REQUEST.pack(len(request), flags, len(name)), name, request)
        except OSError as error:
            raise self._lost(op, error) from None

    def _receive(self, op: str) -> tuple[int, bytearray]:
        try:
            size, status = self.connection.read_struct(RESPONSE, frame_start=True)
            return status, self.connection.read_body(size)
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
              on_ready: Callable[[], None] = lambda: None, secret: bytes | None = None) -> None:
        """Serve `handler` on host:port, each connection on its own thread, until `stop` is set."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=128)
        listener.settimeout(ACCEPT_POLL_S)  # so `stop` is seen within this time
        limit = min(MAX_REQUEST_BYTES, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        connections: dict[FramedSocket, threading.Thread] = {}
        try:
            on_ready()
            while not stop.is_set():
                try:
                    sock, address = listener.accept()
                except TimeoutError:
                    continue
                except OSError as error:  # out of file descriptors, say: keep serving the connected
                    _log(f"cannot accept a connection: {error}")
                    stop.wait(ACCEPT_POLL_S)
                    continue
                connection = FramedSocket(sock)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                worker = threading.Thread(
                    target=ServerConnection(connection, _peer_name(address), handler, secret, limit).run,
                    name=f"semgap-tcp-{_peer_name(address)}", daemon=True,
                )
                connections[connection] = worker
                worker.start()
                for finished in [c for c, thread in connections.items() if not thread.is_alive()]:
                    del connections[finished]
        finally:
            listener.close()
            for connection, worker in connections.items():
                connection.close()  # a worker blocked in recv sees the end and leaves
                worker.join(STOP_GRACE_S)


def _peer_name(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log(line: str) -> None:
    print(f"semgap server: {line}", file=sys.stderr, flush=True)


class ServerConnection:
    """One client's connection on the server: the handshake, then its frames in order."""

    def __init__(self, connection: FramedSocket, peer: str, handler: Handler, secret: bytes | None,
                 limit_bytes: int):
        self.connection, self.peer, self.handler, self.secret = connection, peer, handler, secret
        self.limit_bytes = limit_bytes
        self.failed_post: str | None = None  # the error of a post nobody has been told about yet
        self.skipped = 0  # requests skipped since that post failed

    def run(self) -> None:
        try:
            self.connection.sock.settimeout(HANDSHAKE_TIMEOUT_S)
            self._authenticate()
            self.connection.sock.settimeout(None)
            while self._serve_one():
                pass
        except AuthenticationFailed as error:
            _log(f"refused {self.peer}: {error}")
        except ProtocolError as error:
            _log(f"closed {self.peer}: {error}")
            self._answer(ERROR, f"protocol error, closing the connection: {error}".encode())
        except PeerClosed as error:
            if error.mid_frame:
                _log(f"{self.peer} left mid-frame: {error}")
        except OSError as error:
            _log(f"dropped {self.peer}: {error}")
        finally:
            self.connection.close()

    def _authenticate(self) -> None:
        server_nonce = auth.new_nonce()
        flags = SECRET_DEMANDED if self.secret is not None else 0
        self.connection.send(HELLO.pack(MAGIC, VERSION, flags, server_nonce))
        try:
            client_nonce, client_proof = self.connection.read_struct(CLIENT_PROOF)
        except TimeoutError:
            raise AuthenticationFailed(f"no proof within {HANDSHAKE_TIMEOUT_S:g} s") from None
        except PeerClosed:
            raise AuthenticationFailed("the peer left during the handshake") from None
        if self.secret is not None and not auth.verify(self.secret, client_proof, auth.CLIENT, server_nonce, client_nonce):
            self.connection.send(ANSWER.pack(REFUSED, bytes(auth.PROOF_BYTES)))
            raise AuthenticationFailed("wrong secret")
        self.connection.send(ANSWER.pack(ACCEPTED, auth.proof(self.secret, auth.SERVER, server_nonce, client_nonce)))

    def _serve_one(self) -> bool:
        """Read and answer one request; False once the client has left between frames."""
        try:
            size, flags, op_bytes = self.connection.read_struct(REQUEST, frame_start=True)
        except PeerClosed as error:
            if error.mid_frame:
                raise
            return False
        if flags & ~POST:
            raise ProtocolError(f"unknown frame flags {flags:#04x}")
        if size > self.limit_bytes:
            raise ProtocolError(f"a request of {size} bytes exceeds this server's limit of {self.limit_bytes} bytes")
        try:
            op = self.connection.read_body(op_bytes).decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("the op name is not ASCII") from None
        request = self.connection.read_body(size)
        posted = bool(flags & POST)
        if self.failed_post is not None:
            self._skip(op, posted)
            return True
        try:
            response = self.handler(op, request)
        except Exception as error:
            if posted:
                self.failed_post = f"posted {op!r} failed: {describe(error)}"
            else:
                self._answer(ERROR, describe(error).encode())
            return True
        if not posted:
            self._answer(OK, response)
        return True

    def _skip(self, op: str, posted: bool) -> None:
        """After a failed post: skip requests until a call, and answer that call with the post's error."""
        if posted:
            self.skipped += 1
            return
        message = f"{self.failed_post}; the server skipped the {self.skipped} posts after it and this call"
        self.failed_post, self.skipped = None, 0
        self._answer(ERROR, message.encode())

    def _answer(self, status: int, body) -> None:
        try:
            self.connection.send(RESPONSE.pack(len(body), status), body)
        except OSError:
            pass  # the client left; its thread ends at the next read
