"""semgap.bench.testbed.tcpcounters.tcp_counters_available: the probe says no, with the reason, whenever `ss` cannot count bytes."""
import shutil
import socket

import pytest

from semgap.bench.testbed.tcpcounters import TcpCounter, delta, tcp_counters_available


def path_with_ss(directory, script: str | None) -> str:
    """A PATH holding only a fake `ss` running `script`, or nothing at all for None."""
    directory.mkdir()
    if script is not None:
        (directory / "ss").write_text(f"#!/bin/sh\n{script}\n")
        (directory / "ss").chmod(0o755)
    return str(directory)


@pytest.mark.parametrize("script, reason", [
    (None, "`ss` is not installed (iproute2 provides ss)"),
    ("echo 'Cannot open netlink socket: Protocol not supported' >&2; exit 1", "Cannot open netlink socket"),
    # An iproute2 older than 4.19 lists the sockets without bytes_sent/bytes_received.
    ("echo 'State Recv-Q Send-Q Local Peer'", "ss shows no bytes_sent/bytes_received"),
], ids=["no-ss", "ss-fails", "ss-without-byte-counters"])
def test_the_probe_says_no_with_the_reason_when_ss_cannot_count(monkeypatch, tmp_path, script, reason):
    monkeypatch.setenv("PATH", path_with_ss(tmp_path / "bin", script))
    ok, why = tcp_counters_available()
    assert ok is False and reason in why, why


@pytest.mark.skipif(shutil.which("ss") is None, reason="no `ss` here (iproute2): the probe's no is tested above")
def test_where_the_probe_says_yes_the_counters_count_a_known_transfer():
    ok, why = tcp_counters_available()
    assert ok, why
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server:
            counter = TcpCounter("127.0.0.1")
            before = counter.snapshot()
            client.sendall(b"x" * 5000)
            assert len(server.recv(5000, socket.MSG_WAITALL)) == 5000
            moved = delta(before, counter.snapshot())
    # Both ends are this process's: the 5000 bytes are seen sent by one socket and received by the other.
    assert (moved.bytes_sent, moved.bytes_received) == (5000, 5000)
