"""A calibration peer: raw TCP, or a transport serving only echo and sink (python -m semgap.server.calibration_peer).

The raw peer reads one header per connection (semgap.wire.calibration_protocol.RAW_START: the probe, `s`mall or
`b`ulk, and the message size), then answers every small message with itself and every bulk
message with one byte, reusing one buffer: what a socket can do with no framework at all. It takes
only the probes' kinds and sizes, at most MAX_CONNECTIONS at once, and drops a peer silent for
IDLE_TIMEOUT_S: a stray connection costs it neither memory nor a thread for long.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading

from semgap.wire import names
from semgap.wire import transport
from semgap.wire.calibration_protocol import MESSAGE_BYTES, RAW, RAW_KINDS, RAW_START
from semgap.bench.testbed.serverproc import ready_line
from semgap.wire.transport import auth


def handle(op: str, request: bytes) -> bytes:
    """A transport peer's whole handler: echo answers the request, sink answers nothing."""
    if op == names.ECHO:
        return request
    if op == names.SINK:
        return b""
    raise ValueError(f"unknown operation {op!r}; a calibration peer knows echo and sink")


MAX_CONNECTIONS = 16
IDLE_TIMEOUT_S = 60.0


def serve_raw(host: str, port: int, stop: threading.Event, on_ready) -> None:
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.settimeout(0.2)
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    on_ready(listener.getsockname()[1])
    with listener:
        while not stop.is_set():
            try:
                connection, address = listener.accept()
            except TimeoutError:
                continue
            if not slots.acquire(blocking=False):
                _log(f"refused {address[0]}:{address[1]}: {MAX_CONNECTIONS} connections open, the cap")
                connection.close()
                continue
            threading.Thread(target=_answer_raw, args=(connection, address, slots), daemon=True).start()


def _answer_raw(connection: socket.socket, address: tuple, slots: threading.BoundedSemaphore) -> None:
    with connection:
        try:
            connection.settimeout(IDLE_TIMEOUT_S)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            header = _receive(connection, memoryview(bytearray(RAW_START.size)))
            if header is None:
                return
            kind, size = RAW_START.unpack(header)
            if kind not in RAW_KINDS or size > max(MESSAGE_BYTES.values()):
                _log(f"closed {address[0]}:{address[1]}: a probe of kind {kind!r} and {size} bytes is none of the "
                     f"calibration's (kinds {RAW_KINDS}, at most {max(MESSAGE_BYTES.values())} bytes)")
                return
            buffer = memoryview(bytearray(size))
            while _receive(connection, buffer) is not None:
                connection.sendall(buffer if kind == b"s" else b"k")
        except OSError as error:  # a timeout included
            _log(f"dropped {address[0]}:{address[1]}: {error or type(error).__name__}")
        finally:
            slots.release()


def _log(line: str) -> None:
    print(f"semgap calibration peer: {line}", file=sys.stderr, flush=True)


def _receive(connection: socket.socket, buffer: memoryview) -> memoryview | None:
    """Fill `buffer` from the connection; None once the client has left."""
    received = 0
    while received < len(buffer):
        count = connection.recv_into(buffer[received:])
        if count == 0:
            return None
        received += count
    return buffer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semgap.server.calibration_peer", description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=[RAW, *transport.TRANSPORTS], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--allow-unauthenticated-rpc", action="store_true")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ready = lambda port: print(ready_line(args.host, port, f"{args.transport} calibration peer"), flush=True)  # noqa: E731
    try:
        if args.transport == RAW:
            serve_raw(args.host, args.port, stop, ready)
        else:
            transport.serve(args.transport, args.host, args.port, handle, stop, on_ready=ready,
                            secret=auth.load_secret(), allow_unauthenticated=args.allow_unauthenticated_rpc)
    except ValueError as error:
        print(f"semgap calibration peer: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as the model server does (semgap/server/__main__.py): no slow interpreter shutdown
