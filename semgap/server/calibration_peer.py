"""A calibration peer: raw TCP, or a transport serving only echo and sink (python -m semgap.server.calibration_peer).

The raw peer reads one header per connection (semgap.bench.calibration.RAW_START: the probe, `s`mall or
`b`ulk, and the message size), then answers every small message with itself and every bulk
message with one byte, reusing one buffer: what a socket can do with no framework at all.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from semgap.wire import names
from semgap.wire import transport
from semgap.bench.calibration import RAW, RAW_START
from semgap.bench.testbed.serverproc import READY_LINE
from semgap.wire.transport import auth


def handle(op: str, request: bytes) -> bytes:
    """A transport peer's whole handler: echo answers the request, sink answers nothing."""
    if op == names.ECHO:
        return request
    if op == names.SINK:
        return b""
    raise ValueError(f"unknown operation {op!r}; a calibration peer knows echo and sink")


def serve_raw(host: str, port: int, stop: threading.Event, on_ready) -> None:
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.settimeout(0.2)
    on_ready()
    with listener:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_answer_raw, args=(connection,), daemon=True).start()


def _answer_raw(connection: socket.socket) -> None:
    with connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = _receive(connection, memoryview(bytearray(RAW_START.size)))
        if header is None:
            return
        kind, size = RAW_START.unpack(header)
        buffer = memoryview(bytearray(size))
        while _receive(connection, buffer) is not None:
            connection.sendall(buffer if kind == b"s" else b"k")


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
    ready = lambda: print(f"{READY_LINE} {args.host}:{args.port} ({args.transport} calibration peer)", flush=True)  # noqa: E731
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
    sys.exit(main())
