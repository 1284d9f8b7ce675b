"""Tests of semgap.bench.testbed.tcpcounters against real loopback TCP connections to an echo server in another process."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from semgap.bench.testbed.tcpcounters import TcpCounter, delta, tcp_counters_available

PAYLOAD_BYTES = 10 * 1000 * 1000
CHUNK_BYTES = 1 << 16

# Echoes every connection back to the sender, one thread per connection.
ECHO_SERVER = r"""
import socket, sys, threading
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.socket(family, socket.SOCK_STREAM)
server.bind((sys.argv[1], 0)); server.listen(16)
print(server.getsockname()[1], flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""

# A second client process: connects, waits for "go", sends argv[3] bytes and reads the echo, then
# waits for stdin to close so its socket stays open while the test measures.
OTHER_CLIENT = r"""
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
sys.stdin.readline()
total = int(sys.argv[3]); sent = received = 0
while received < total:
    if sent < total:
        sent += conn.send(b"o" * min(1 << 16, total - sent))
    received += len(conn.recv(1 << 16))
print("done", flush=True)
sys.stdin.read()
"""

available, reason = tcp_counters_available()
pytestmark = pytest.mark.skipif(not available, reason=reason)


def start_echo_server(host: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, host], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"echo server on {host} did not start (exit {proc.poll()})")
    return proc, int(line)


@pytest.fixture
def echo_server():
    proc, port = start_echo_server("127.0.0.1")
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def exchange(conn: socket.socket, total: int) -> int:
    """Send `total` bytes and read the whole echo back concurrently (so neither side blocks)."""
    received = 0

    def reader() -> None:
        nonlocal received
        while received < total:
            data = conn.recv(1 << 20)
            if not data:
                break
            received += len(data)

    thread = threading.Thread(target=reader)
    thread.start()
    chunk = b"p" * CHUNK_BYTES
    sent = 0
    while sent < total:
        sent += conn.send(chunk[: min(CHUNK_BYTES, total - sent)])
    thread.join(timeout=30)
    assert received == total, f"echo returned {received} of {total} bytes"
    return received


def test_counts_exact_payload_of_new_socket(echo_server):
    counter = TcpCounter("127.0.0.1", peer_ports=[echo_server])
    before = counter.snapshot()
    with socket.create_connection(("127.0.0.1", echo_server)) as conn:
        exchange(conn, PAYLOAD_BYTES)
        after = counter.snapshot()
    moved = delta(before, after)
    # Counted from 0 on the new socket: exactly the payload, no SYN byte, no retransmissions.
    assert moved.bytes_sent == PAYLOAD_BYTES
    assert moved.bytes_received == PAYLOAD_BYTES
    assert (moved.sockets, moved.sockets_opened, moved.sockets_closed) == (1, 1, 0)


def test_delta_of_existing_socket_and_other_process_not_counted(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server)) as conn:
        exchange(conn, 1000)  # the socket exists and has history before the first snapshot
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_CLIENT, "127.0.0.1", str(echo_server), str(3 * PAYLOAD_BYTES // 10)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout.readline().strip() == "connected"
            ours, theirs = TcpCounter("127.0.0.1", peer_ports=[echo_server]), TcpCounter("127.0.0.1", pid=other.pid, peer_ports=[echo_server])
            ours_before, theirs_before = ours.snapshot(), theirs.snapshot()
            other.stdin.write("go\n")
            other.stdin.flush()
            exchange(conn, PAYLOAD_BYTES)
            assert other.stdout.readline().strip() == "done"
            ours_moved = delta(ours_before, ours.snapshot())
            theirs_moved = delta(theirs_before, theirs.snapshot())
        finally:
            other.stdin.close()
            other.wait(timeout=10)
    # The other client talks to the same server port at the same time but is another process.
    assert (ours_moved.bytes_sent, ours_moved.bytes_received) == (PAYLOAD_BYTES, PAYLOAD_BYTES)
    assert (ours_moved.sockets, ours_moved.sockets_opened) == (1, 0)
    # Counting the other pid instead sees exactly its traffic, on its one socket.
    assert theirs_moved.bytes_sent == theirs_moved.bytes_received == 3 * PAYLOAD_BYTES // 10
    assert (theirs_moved.sockets, theirs_moved.sockets_opened) == (1, 0)


def test_closed_socket_is_reported_and_never_negative(echo_server):
    counter = TcpCounter("127.0.0.1", peer_ports=[echo_server])
    first = socket.create_connection(("127.0.0.1", echo_server))
    exchange(first, 100_000)
    before = counter.snapshot()
    assert before.bytes_sent == 100_000 and before.sockets == 1
    first.close()
    with socket.create_connection(("127.0.0.1", echo_server)) as second:
        exchange(second, 5000)
        moved = delta(before, counter.snapshot())
    assert (moved.bytes_sent, moved.bytes_received) == (5000, 5000)
    assert (moved.sockets, moved.sockets_opened, moved.sockets_closed) == (1, 1, 1)


def test_filters_by_peer_address_and_excluded_ports(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server)) as conn:
        exchange(conn, 4096)
        assert TcpCounter("127.0.0.1", peer_ports=[echo_server]).snapshot().bytes_sent == 4096
        assert TcpCounter("127.0.0.1", exclude_ports=[echo_server], peer_ports=[echo_server]).snapshot().sockets == 0
        assert TcpCounter("10.213.0.2").snapshot().sockets == 0
        assert TcpCounter("::1").snapshot().sockets == 0
        assert TcpCounter("localhost", peer_ports=[echo_server]).snapshot().bytes_sent == 4096


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback (::1) on this host")
@pytest.mark.parametrize("server_host, connect_host, peer_host", [
    ("::1", "::1", "::1"),
    # A dual-stack AF_INET6 socket talking IPv4 shows as [::ffff:127.0.0.1]; it is the same peer.
    ("127.0.0.1", "::ffff:127.0.0.1", "127.0.0.1"),
])
def test_ipv6_and_ipv4_mapped_peers(server_host, connect_host, peer_host):
    proc, port = start_echo_server(server_host)
    try:
        counter = TcpCounter(peer_host, peer_ports=[port])
        before = counter.snapshot()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as conn:
            conn.connect((connect_host, port))
            exchange(conn, 250_000)
            moved = delta(before, counter.snapshot())
    finally:
        proc.kill()
        proc.wait()
    assert (moved.bytes_sent, moved.bytes_received, moved.sockets) == (250_000, 250_000, 1)


def test_peer_must_be_an_address_not_a_name():
    # Resolving a name could query DNS servers outside the allowed addresses.
    with pytest.raises(ValueError, match="IP address"):
        TcpCounter("example.invalid")


def test_unknown_pid_is_a_clear_error():
    with pytest.raises(ProcessLookupError, match="does not exist"):
        TcpCounter("127.0.0.1", pid=2**22 + 1).snapshot()
