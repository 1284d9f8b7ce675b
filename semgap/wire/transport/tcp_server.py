"""The lean transport's server: an accept loop with a connection cap, one thread per connection, limits before trust.

A frame the server cannot trust (a length beyond its limit, unknown flags, a non-ASCII op, a failed
MAC) is answered with an error, logged, and its connection closed; other connections go on. A handler
that raises is answered with its one-line error and logged with its traceback. Each connection adds up
its server's own time per request (semgap.wire.timing) and answers `server_time` with it itself.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
from typing import Callable

from semgap.wire import timing
from semgap.wire.transport import handshake
from semgap.wire.transport.base import AuthenticationFailed, Handler, ServerLimits, describe, log_failure
from semgap.wire.transport.framed import (
    ERROR, OK, POST, REQUEST, RESPONSE, FramedSocket, PeerClosed, ProtocolError, set_kernel_timeout,
)

ACCEPT_POLL_S = 0.2
STOP_GRACE_S = 10.0


def serve(host: str, port: int, handler: Handler, stop: threading.Event, on_ready: Callable[[int], None] = lambda port: None,
          secret: bytes | None = None, limits: ServerLimits | None = None) -> None:
    """Serve `handler` on host:port, each connection on its own thread, until `stop` is set.

    `on_ready` gets the port bound (the kernel's pick when `port` is 0) once connections are accepted.
    """
    limits = limits or ServerLimits()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=128)
    listener.settimeout(ACCEPT_POLL_S)  # so `stop` is seen within this time
    connections: dict[FramedSocket, threading.Thread] = {}
    try:
        on_ready(listener.getsockname()[1])
        while not stop.is_set():
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            except OSError as error:  # out of file descriptors, say: keep serving the connected
                log(f"cannot accept a connection: {error}")
                stop.wait(ACCEPT_POLL_S)
                continue
            for finished in [c for c, thread in connections.items() if not thread.is_alive()]:
                del connections[finished]
            connection, peer = FramedSocket(sock), _peer_name(address)
            if len(connections) >= limits.max_connections:
                log(f"refused {peer}: {len(connections)} connections open, the cap (max_connections) is "
                    f"{limits.max_connections}")
                _refuse(connection)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            worker = threading.Thread(target=ServerConnection(connection, peer, handler, secret, limits).run,
                                      name=f"semgap-tcp-{peer}", daemon=True)
            connections[connection] = worker
            worker.start()
    finally:
        listener.close()
        for connection, worker in connections.items():
            connection.close()  # a worker blocked in recv sees the end and leaves
            worker.join(STOP_GRACE_S)


def _refuse(connection: FramedSocket) -> None:
    try:
        connection.sock.settimeout(1.0)
        handshake.refuse_busy(connection)
    except OSError:
        pass  # it left already
    connection.close()


def _peer_name(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def log(line: str) -> None:
    print(f"semgap server: {line}", file=sys.stderr, flush=True)


class ServerConnection:
    """One client's connection on the server: the handshake, then its frames in order."""

    def __init__(self, connection: FramedSocket, peer: str, handler: Handler, secret: bytes | None,
                 limits: ServerLimits):
        self.connection, self.peer, self.handler, self.secret = connection, peer, handler, secret
        self.limits = limits
        self.failed_post: str | None = None  # the error of a post nobody has been told about yet
        self.skipped = 0  # requests skipped since that post failed
        self.server_time = timing.ServerTime()  # since the client last asked (timing.SERVER_TIME_OP)

    def run(self) -> None:
        try:
            handshake.authenticate(self.connection, self.secret, self.limits.handshake_timeout_s)
            self.connection.sock.settimeout(None)
            set_kernel_timeout(self.connection.sock, self.limits.idle_timeout_s)
            while self._serve_one():
                pass
        except AuthenticationFailed as error:
            log(f"refused {self.peer}: {error}")
        except ProtocolError as error:
            log(f"closed {self.peer}: {error}")
            self._answer(ERROR, f"protocol error, closing the connection: {error}".encode())
        except PeerClosed as error:
            if error.mid_frame:
                log(f"{self.peer} left mid-frame: {error}")
        except BlockingIOError:  # the kernel's timeout expired
            log(f"dropped {self.peer}: nothing received or sent for {self.limits.idle_timeout_s:g} s")
        except OSError as error:
            log(f"dropped {self.peer}: {error}")
        finally:
            self.connection.close()

    def _serve_one(self) -> bool:
        """Read and answer one request; False once the client has left between frames."""
        try:
            header = self.connection.read_struct(REQUEST, frame_start=True)
        except PeerClosed as error:
            if error.mid_frame:
                raise
            return False
        size, flags, op_bytes = header
        if flags & ~POST:
            raise ProtocolError(f"unknown frame flags {flags:#04x}")
        if size > self.limits.max_frame_bytes:
            raise ProtocolError(f"a request of {size} bytes exceeds this server's limit of "
                                f"{self.limits.max_frame_bytes} bytes (max_frame_bytes)")
        name = self.connection.read_body(op_bytes)
        request = self.connection.read_body(size)
        self.connection.read_tag(REQUEST.pack(*header), name, request)
        try:
            op = name.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("the op name is not ASCII") from None
        posted = bool(flags & POST)
        if self.failed_post is not None:
            self._skip(op, posted)
            return True
        if op == timing.SERVER_TIME_OP:
            spent, self.server_time = self.server_time, timing.ServerTime()
            self._answer(OK, json.dumps(spent.as_dict()).encode())
            return True
        clock = timing.ServerTime()
        try:
            with timing.request_clock(clock):
                response = self.handler(op, request)
        except Exception as error:
            log_failure(self.peer, op, error)
            if posted:
                self.failed_post = f"posted {op!r} failed: {describe(error)}"
            else:
                self._answer(ERROR, describe(error).encode())
            return True
        finally:
            del request  # the body's buffer is free for reuse (or let go) once the handler is done
            self.server_time.add(clock)
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
            self.connection.send_frame(RESPONSE.pack(len(body), status), body)
        except OSError:
            pass  # the client left; its thread ends at the next read
