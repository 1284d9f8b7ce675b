"""The transports: authentication, frame MACs, limits before trust, bad frames, posts, concurrency, IPv6, what listens,
and what is unpickled."""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from semgap.wire import codec, transport
from semgap.bench.testbed.netns import NetnsLink, link_available
from semgap.bench.testbed.serverproc import READY_LINE, ServerProcess
from semgap.wire.transport import auth, framed, tcp

from .conftest import REPO, TEST_MODEL

SECRET = auth.new_secret().encode()
EVERY_OP = Path(__file__).with_name("every_op.py")  # a client calling every operation its server knows
LINK_OK, LINK_REASON = link_available()


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory):
    """A server of its own (tests here change its KV caches) that demands SECRET, and takes frames up to 8 GiB
    (so a 4 GB claim gets past its limit, to the growing buffer)."""
    server = ServerProcess.spawn(TEST_MODEL, "127.0.0.1", 0, tmp_path_factory.mktemp("logs"),
                                 extra_args=("--no-gpu-monitor", "--max-frame-bytes", "8G"),
                                 env={auth.SECRET_VARIABLE: SECRET.decode()}, ready_timeout_s=120)
    yield server
    server.stop()


@pytest.fixture
def connect(secret_server):
    """Connections to secret_server, all closed after the test."""
    opened = []

    def open_one(secret: bytes | None = SECRET) -> transport.Transport:
        opened.append(transport.connect("tcp", secret_server.host, secret_server.port, timeout_s=30, secret=secret))
        return opened[-1]

    yield open_one
    for connection in opened:
        connection.close()


def hello(connection) -> dict[str, str]:
    return codec.decode(connection.call("hello", codec.encode({})))[1]


def log_line(server: ServerProcess, text: str, timeout_s: float = 10.0) -> str:
    """The server's log line containing `text`, waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in server.log_tail(200).splitlines() if text in line]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r}:\n{server.log_tail()}")


def handshake(server: ServerProcess, secret: bytes | None = SECRET) -> tcp.FramedSocket:
    """A raw socket that has proven `secret`, with its frame MACs, for sending frames no client would send."""
    connection = tcp.FramedSocket(socket.create_connection((server.host, server.port), timeout=10))
    tcp.prove(connection, secret, "the test's server")
    return connection


def read_answer(connection: tcp.FramedSocket) -> tuple[int, bytes]:
    """(status, body) of the server's next answer, its MAC checked."""
    size, status = connection.read_struct(tcp.RESPONSE)
    body = connection.read_body(size)
    connection.read_tag(tcp.RESPONSE.pack(size, status), body)
    return status, bytes(body)


def read_error(connection: tcp.FramedSocket) -> str:
    """The error frame the server answers a bad frame with; the server then closes the connection."""
    status, body = read_answer(connection)
    message = body.decode()
    assert status == tcp.ERROR, message
    assert connection.sock.recv(1) == b""  # closed
    return message


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid` (VmRSS)."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


# --- authentication ------------------------------------------------------------------------------

def test_a_wrong_secret_is_refused_and_the_server_keeps_serving(secret_server, connect):
    good = connect()
    with pytest.raises(transport.AuthenticationFailed, match="refused this client's secret"):
        connect(auth.new_secret().encode())
    assert "wrong secret" in log_line(secret_server, "refused 127.0.0.1:")
    assert hello(good)["model"] == TEST_MODEL and hello(connect())["model"] == TEST_MODEL


def test_a_client_without_the_secret_is_told_how_to_give_it(connect):
    with pytest.raises(transport.AuthenticationFailed, match="demands a shared secret: set SEMGAP_SECRET"):
        connect(None)


def test_a_client_with_a_secret_refuses_a_server_that_demands_none(preset_server):
    with pytest.raises(transport.AuthenticationFailed, match="demands no secret"):
        transport.connect("tcp", preset_server.host, preset_server.port, secret=SECRET)


def test_a_server_that_cannot_prove_the_secret_is_refused():
    # An impostor that demands a secret and accepts any proof, but cannot answer with one of its own.
    listener = socket.create_server(("127.0.0.1", 0))

    def impostor():
        connection, _ = listener.accept()
        with connection:
            connection.sendall(tcp.HELLO.pack(tcp.MAGIC, tcp.VERSION, tcp.SECRET_DEMANDED, auth.new_nonce()))
            connection.recv(tcp.CLIENT_PROOF.size, socket.MSG_WAITALL)
            connection.sendall(tcp.ANSWER.pack(tcp.ACCEPTED, bytes(auth.PROOF_BYTES)))

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    with listener, pytest.raises(transport.AuthenticationFailed, match="did not prove the shared secret"):
        transport.connect("tcp", "127.0.0.1", listener.getsockname()[1], secret=SECRET)
    thread.join(10)


def test_garbage_instead_of_a_proof_is_refused(secret_server, connect):
    good = connect()
    with socket.create_connection((secret_server.host, secret_server.port), timeout=10) as garbage:
        garbage.recv(tcp.HELLO.size, socket.MSG_WAITALL)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: semgap\r\n\r\n".ljust(tcp.CLIENT_PROOF.size, b"x"))
        status = garbage.recv(tcp.ANSWER.size, socket.MSG_WAITALL)[0]
        assert status == tcp.REFUSED and garbage.recv(1) == b""
    assert hello(good)["model"] == TEST_MODEL


@pytest.mark.slow
def test_a_peer_that_never_proves_anything_is_dropped_after_the_handshake_timeout(secret_server, connect):
    # The server's timeout is 10 s; a silent peer holds only its own thread meanwhile.
    with socket.create_connection((secret_server.host, secret_server.port), timeout=30) as silent:
        assert silent.recv(tcp.HELLO.size, socket.MSG_WAITALL)[:4] == tcp.MAGIC
        assert hello(connect())["model"] == TEST_MODEL  # served while the silent peer waits
        started = time.monotonic()
        assert silent.recv(tcp.ANSWER.size) == b""  # dropped without an answer
        assert time.monotonic() - started < tcp.HANDSHAKE_TIMEOUT_S + 5
    assert "no proof within" in log_line(secret_server, "refused")


# --- bad frames ----------------------------------------------------------------------------------

@pytest.mark.parametrize("frame, error", [
    (tcp.REQUEST.pack(2**63, 0, 4) + b"echo", "a request of 9223372036854775808 bytes exceeds this server's limit"),
    (tcp.REQUEST.pack(3, 0xFE, 4) + b"echoabc", "unknown frame flags 0xfe"),
    (tcp.REQUEST.pack(3, 0, 4) + b"\xff\xfe\xfd\xfcabc", "the op name is not ASCII"),
], ids=["oversized-length", "unknown-flags", "non-ascii-op"])
def test_a_frame_the_server_cannot_trust_is_answered_and_closed_and_others_go_on(secret_server, connect, frame, error):
    good = connect()
    bad = handshake(secret_server)
    bad.send_frame(frame)  # with a valid MAC: what is wrong is the frame itself
    assert read_error(bad).startswith(f"protocol error, closing the connection: {error}")
    assert error in log_line(secret_server, f"closed 127.0.0.1:{bad.sock.getsockname()[1]}")
    bad.close()
    assert hello(good)["model"] == TEST_MODEL and hello(connect())["model"] == TEST_MODEL


def test_an_unknown_op_is_an_error_and_the_connection_goes_on(connect):
    connection = connect()
    with pytest.raises(transport.ServerError, match="refused 'reboot': ValueError: unknown operation 'reboot'"):
        connection.call("reboot", b"")
    assert hello(connection)["model"] == TEST_MODEL


def test_a_malformed_message_is_an_error_and_the_connection_goes_on(connect):
    connection = connect()
    with pytest.raises(transport.ServerError, match="MalformedMessage: not a semgap message"):
        connection.call("prefill", b"\x00garbage that is no message")
    assert hello(connection)["model"] == TEST_MODEL


# A child process that proves the secret, sends 1 MB of a 10 MB request and SIGKILLs itself.
DIE_MID_FRAME = r"""
import os, signal, socket, sys
from semgap.wire.transport import auth, framed, tcp
connection = tcp.FramedSocket(socket.create_connection((sys.argv[1], int(sys.argv[2]))))
_, _, _, server_nonce = connection.read_struct(tcp.HELLO)
nonce = auth.new_nonce()
connection.send(tcp.CLIENT_PROOF.pack(nonce, auth.proof(sys.argv[3].encode(), auth.CLIENT, server_nonce, nonce)))
assert connection.read_struct(tcp.ANSWER)[0] == tcp.ACCEPTED
connection.send(tcp.REQUEST.pack(10_000_000, 0, 4), b"echo", bytes(1_000_000))
print(connection.sock.getsockname()[1], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_peer_dying_mid_frame_leaves_the_server_serving(secret_server, connect):
    good = connect()
    child = subprocess.run([sys.executable, "-c", DIE_MID_FRAME, secret_server.host, str(secret_server.port),
                            SECRET.decode()], env={**os.environ, "PYTHONPATH": str(REPO)},
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    port = child.stdout.split()[0]
    assert "left mid-frame" in log_line(secret_server, f"127.0.0.1:{port} left")
    assert hello(good)["model"] == TEST_MODEL and hello(connect())["model"] == TEST_MODEL


def test_a_truncated_frame_is_dropped_and_a_stalled_one_blocks_nobody(secret_server, connect):
    stalled = handshake(secret_server)
    stalled.send(tcp.REQUEST.pack(1000, 0, 4), b"echo", bytes(10))  # and then nothing more
    # A server that served connections one at a time would hang here.
    first, second = connect(), connect()
    payload = bytes(range(256)) * 4
    for _ in range(3):
        assert first.call("echo", payload) == payload and hello(second)["model"] == TEST_MODEL
    stalled.sock.shutdown(socket.SHUT_WR)  # the frame ends 990 bytes short
    assert stalled.sock.recv(1) == b""
    assert "left mid-frame" in log_line(secret_server, f"127.0.0.1:{stalled.sock.getsockname()[1]} left")
    assert hello(first)["model"] == TEST_MODEL


def test_a_large_answer_is_reused_only_once_nothing_refers_to_it(connect):
    connection = connect()
    ones, twos = bytes([1]) * 100_000, bytes([2]) * 100_000
    answer = connection.call("echo", ones)
    tensor = torch.frombuffer(answer, dtype=torch.uint8)  # a decoded tensor maps the buffer
    address = id(answer)
    del answer
    assert connection.call("echo", twos) == twos
    assert bool((tensor == 1).all())  # the next answer went elsewhere
    del tensor
    answer = connection.call("echo", twos)  # lands in that next answer's buffer, free now
    assert answer == twos and id(answer) != address
    reused = id(answer)
    del answer
    assert id(connection.call("echo", ones)) == reused


# --- limits before trust ---------------------------------------------------------------------------

def test_a_header_claiming_4_gb_followed_by_nothing_costs_the_server_no_memory(secret_server, connect):
    assert connect().call("echo", bytes(200_000)) == bytes(200_000)  # the server's own buffers are made already
    before = rss_bytes(secret_server.process.pid)
    claim = handshake(secret_server)  # the server takes frames up to 8 GiB: the claim gets past its limit
    port = claim.sock.getsockname()[1]
    claim.send(tcp.REQUEST.pack(4 << 30, 0, 4), b"echo", bytes(100_000))  # and then nothing
    time.sleep(1.5)
    grown = rss_bytes(secret_server.process.pid) - before
    print(f"server RSS after a 4 GB claim: {grown / 2**20:+.1f} MiB")
    assert grown < 50 << 20
    assert hello(connect())["model"] == TEST_MODEL  # and it serves another client meanwhile
    claim.close()
    assert "left mid-frame" in log_line(secret_server, f"127.0.0.1:{port} left")


def test_a_frame_beyond_the_models_limit_is_refused_at_once_with_a_logged_reason(preset_server):
    claim = handshake(preset_server, None)  # preset_server: no secret, the limit its model gives
    port = claim.sock.getsockname()[1]
    claim.send(tcp.REQUEST.pack(4 << 30, 0, 4), b"echo")
    message = read_error(claim)
    assert re.match(r"protocol error, closing the connection: a request of 4294967296 bytes exceeds this server's "
                    r"limit of \d+ bytes \(max_frame_bytes\)", message), message
    assert "exceeds this server's limit" in log_line(preset_server, f"closed 127.0.0.1:{port}")


@contextmanager
def served(handler=lambda op, request: bytes(request), secret: bytes | None = SECRET, **limits):
    """A tcp server in this process with `limits` (ServerLimits' fields); yields its port."""
    stop, ready, ports = threading.Event(), threading.Event(), []
    on_ready = lambda port: (ports.append(port), ready.set())  # noqa: E731
    thread = threading.Thread(target=transport.serve, args=("tcp", "127.0.0.1", 0, handler, stop), daemon=True,
                              kwargs={"on_ready": on_ready, "secret": secret, "limits": transport.ServerLimits(**limits)})
    thread.start()
    assert ready.wait(10)
    try:
        yield ports[0]
    finally:
        stop.set()
        thread.join(30)


def test_the_connection_beyond_the_cap_is_refused_with_a_clear_error(capsys):
    with served(max_connections=2) as port:
        first, second = (transport.connect("tcp", "127.0.0.1", port, secret=SECRET) for _ in range(2))
        with pytest.raises(transport.ServerBusy, match="refused this connection: it serves as many connections as "
                                                       "its cap allows .* a higher --max-connections"):
            transport.connect("tcp", "127.0.0.1", port, secret=SECRET)
        assert first.call("echo", b"still served") == b"still served"
        first.close()
        deadline = time.monotonic() + 10  # its slot is free once its thread has seen it leave
        while True:
            try:
                third = transport.connect("tcp", "127.0.0.1", port, secret=SECRET)
                break
            except transport.ServerBusy:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert third.call("echo", b"x") == b"x" and second.call("echo", b"y") == b"y"
        second.close(), third.close()
    assert "connections open, the cap (max_connections) is 2" in capsys.readouterr().err


def test_silent_trickling_and_idle_peers_are_dropped(capsys):
    with served(handshake_timeout_s=1.0, idle_timeout_s=1.0) as port:
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickling = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle = transport.connect("tcp", "127.0.0.1", port, secret=SECRET)
        started = time.monotonic()
        assert silent.recv(tcp.HELLO.size, socket.MSG_WAITALL)[:4] == tcp.MAGIC
        assert trickling.recv(tcp.HELLO.size, socket.MSG_WAITALL)[:4] == tcp.MAGIC
        for _ in range(tcp.CLIENT_PROOF.size - 1):  # a byte every 0.2 s: each within the timeout, never the whole
            try:
                trickling.send(b"x")
            except OSError:
                break
            if time.monotonic() - started > 4:
                break
            time.sleep(0.2)
        assert trickling.recv(tcp.ANSWER.size) == b"" and silent.recv(tcp.ANSWER.size) == b""
        assert time.monotonic() - started < 3
        time.sleep(1.5)  # the authenticated connection has sent nothing since its handshake
        with pytest.raises(ConnectionError, match="lost the semgap server"):
            idle.call("echo", b"too late")
        silent.close(), trickling.close(), idle.close()
    log = capsys.readouterr().err
    assert log.count("no proof within 1 s") == 2 and "nothing received or sent for 1 s" in log, log


def test_a_body_beyond_the_reuse_bound_is_let_go_after_use(connect, monkeypatch):
    monkeypatch.setattr(framed, "REUSE_MAX_BYTES", 150_000)
    connection = connect()
    assert connection.call("echo", bytes(100_000)) == bytes(100_000)
    assert len(connection.connection.last_body) == 100_000  # kept for the next answer of that size
    assert connection.call("echo", bytes(200_000)) == bytes(200_000)
    assert connection.connection.last_body is None  # beyond the bound: its caller's alone, gone with it


# --- frames that cannot be forged -----------------------------------------------------------------

def test_a_replayed_handshake_is_refused(secret_server, connect):
    recorded = handshake(secret_server)  # a client's proof, as a relay on the path would see it
    with socket.create_connection((secret_server.host, secret_server.port), timeout=10) as first:
        _, _, _, server_nonce = tcp.HELLO.unpack(first.recv(tcp.HELLO.size, socket.MSG_WAITALL))
        client_nonce = auth.new_nonce()
        proof = tcp.CLIENT_PROOF.pack(client_nonce, auth.proof(SECRET, auth.CLIENT, server_nonce, client_nonce))
        first.sendall(proof)
        assert first.recv(tcp.ANSWER.size, socket.MSG_WAITALL)[0] == tcp.ACCEPTED
        with socket.create_connection((secret_server.host, secret_server.port), timeout=10) as replay:
            replay.recv(tcp.HELLO.size, socket.MSG_WAITALL)  # a fresh nonce: the recorded proof is for another
            replay.sendall(proof)
            assert replay.recv(tcp.ANSWER.size, socket.MSG_WAITALL)[0] == tcp.REFUSED
            assert replay.recv(1) == b""
    recorded.close()
    assert "wrong secret" in log_line(secret_server, "refused 127.0.0.1:")
    assert hello(connect())["model"] == TEST_MODEL


def echo_frame(connection: tcp.FramedSocket, body: bytes) -> list[bytes]:
    """An echo request's parts, its MAC last, as the connection would send it next."""
    parts = [tcp.REQUEST.pack(len(body), 0, 4), b"echo", body]
    return [*parts, connection.sending.tag(*parts)]


@pytest.mark.parametrize("tamper", ["flipped-byte", "replayed-frame", "no-session-key"])
def test_a_frame_that_fails_its_mac_is_refused_and_closed(secret_server, connect, tamper):
    good = connect()
    relay = handshake(secret_server)  # holds the session key; what it sends below is what an on-path relay could
    port = relay.sock.getsockname()[1]
    header, op, body, tag = echo_frame(relay, b"upload_weights, say")
    if tamper == "flipped-byte":
        body = bytes([body[0] ^ 0x01]) + body[1:]
    elif tamper == "replayed-frame":  # sent as it was, then once more
        relay.send(header, op, body, tag)
        assert read_answer(relay) == (tcp.OK, body)
    else:  # the proofs alone: a tag under the secret, not under the session key
        tag = auth.FrameMac(SECRET).tag(header, op, body)
    relay.send(header, op, body, tag)
    assert read_error(relay) == ("protocol error, closing the connection: a frame failed its MAC (forged, altered, "
                                 "replayed or out of order)")
    assert "failed its MAC" in log_line(secret_server, f"closed 127.0.0.1:{port}")
    relay.close()
    assert hello(good)["model"] == TEST_MODEL


def test_an_answer_that_fails_its_mac_loses_the_connection(monkeypatch):
    with served() as port:
        connection = transport.connect("tcp", "127.0.0.1", port, secret=SECRET)
        assert connection.call("echo", b"ok") == b"ok"
        connection.connection.receiving.sequence += 1  # as if an answer had been dropped on the way
        with pytest.raises(ConnectionError, match="lost the semgap server .* during 'echo': a frame failed its MAC"):
            connection.call("echo", b"next")
        assert connection.broken
        connection.close()


# --- hygiene --------------------------------------------------------------------------------------

def test_a_handler_exception_is_logged_with_its_traceback(secret_server, connect):
    with pytest.raises(transport.ServerError, match="KeyError"):
        connect().call("decode", codec.encode({"input_ids": torch.tensor([[1]])}, {"kv_handle": "logged-handle"}))
    log_line(secret_server, "'decode' from 127.0.0.1:")
    log = secret_server.log_tail(400)
    failure = log[log.rindex("'decode' from 127.0.0.1:"):]
    assert "Traceback (most recent call last)" in failure and "unknown KV handle 'logged-handle'" in failure, failure


def test_a_secret_file_open_to_group_or_others_is_refused(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(auth.new_secret())
    secret_file.chmod(0o644)
    with pytest.raises(ValueError, match=rf"the secret file {secret_file} is open to group or others \(mode 644\): "
                                         rf"run `chmod 600 {secret_file}`"):
        auth.load_secret(secret_file)
    result = subprocess.run([sys.executable, "-m", "semgap.server", "--secret-file", str(secret_file)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "chmod 600" in result.stderr, result.stderr
    secret_file.chmod(0o600)
    assert auth.load_secret(secret_file) == secret_file.read_text().strip().encode()


# --- posts ---------------------------------------------------------------------------------------

def test_posts_run_in_order_and_a_failed_post_is_raised_by_the_next_call(connect):
    connection = connect()
    ids = {"input_ids": torch.tensor([[1, 2, 3]])}
    meta = codec.decode(connection.call("prefill", codec.encode(ids, {"weights_handle": "server-built"})))[1]
    handle = {"kv_handle": meta["kv_handle"]}
    connection.post("release", codec.encode({}, handle))
    # The release ran before this call, on the same connection: the handle is gone.
    with pytest.raises(transport.ServerError, match="refused 'decode': KeyError: .*unknown KV handle"):
        connection.call("decode", codec.encode({"input_ids": torch.tensor([[4]])}, handle))
    connection.post("release", codec.encode({}, handle))  # fails: released already
    connection.post("echo", b"skipped")
    with pytest.raises(transport.ServerError, match=(
            r"refused 'hello': posted 'release' failed: KeyError: .*unknown KV handle.*; "
            r"the server skipped the 1 posts after it and this call")):
        hello(connection)
    assert hello(connection)["model"] == TEST_MODEL  # reported once, then the connection goes on


# --- IPv6 and what listens -----------------------------------------------------------------------

def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from its /proc/<pid>/net tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in inodes:  # TCP_LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((str(ipaddress.ip_address(packed)), int(port, 16)))
    return found


def spawn(kind: str, host: str, port: int, log_dir: Path, transport_name: str, netns_link=None) -> ServerProcess:
    """A model server (kind "server") or a calibration peer ("peer") on host:port, in the link's namespace if any."""
    prefix, env = (tuple(netns_link.server_command([])), netns_link.server_env()) if netns_link else ((), {})
    env[auth.SECRET_VARIABLE] = SECRET.decode()
    extra = ("--allow-unauthenticated-rpc",) if netns_link and transport_name == "rpc" else ()
    if kind == "server":
        return ServerProcess.spawn(TEST_MODEL, host, port, log_dir, command_prefix=prefix, env=env, ready_timeout_s=120,
                                   extra_args=("--no-gpu-monitor", "--transport", transport_name, *extra))
    return ServerProcess.start(("-m", "semgap.server.calibration_peer", "--transport", transport_name, "--host", host,
                                "--port", str(port), *extra), host, port, log_dir, label="peer",
                               command_prefix=prefix, env=env, ready_timeout_s=60)


@pytest.mark.slow
@pytest.mark.parametrize("kind, transport_name, host", [
    ("server", "tcp", "127.0.0.1"), ("server", "tcp", "::1"), ("server", "rpc", "127.0.0.1"),
    ("peer", "tcp", "::1"), ("peer", "rpc", "127.0.0.1"), ("peer", "raw", "127.0.0.1"),
    pytest.param("server", "tcp", "netns", marks=[pytest.mark.netns, pytest.mark.skipif(not LINK_OK, reason=LINK_REASON)]),
    pytest.param("server", "rpc", "netns", marks=[pytest.mark.netns, pytest.mark.skipif(not LINK_OK, reason=LINK_REASON)]),
])
def test_nothing_listens_wider_than_the_address_asked_for(tmp_path, kind, transport_name, host):
    link = NetnsLink() if host == "netns" else None
    try:
        address = link.server_address if link else host
        server = spawn(kind, address, 29500 if link else 0, tmp_path, transport_name, link)
        port = server.port
        try:
            listening = listening_addresses(server.process.pid)
            print(f"{kind} {transport_name} on {address}:{port} listens on {sorted(listening)}")
            assert (str(ipaddress.ip_address(address)), port) in listening
            assert {listened for listened, _ in listening} == {str(ipaddress.ip_address(address))}
            # rpc: its rendezvous store and TensorPipe's own listener; tcp and raw: one socket.
            assert len(listening) == (2 if transport_name == "rpc" else 1)
            if transport_name == "tcp" and kind == "server":  # and IPv6 serves like IPv4
                connection = transport.connect("tcp", address, port, secret=SECRET)
                assert hello(connection)["model"] == TEST_MODEL
                connection.close()
        finally:
            server.stop()
    finally:
        if link:
            link.close()


@pytest.mark.parametrize("argv, refusal", [
    (("--host", "0.0.0.0"), "refusing to serve tcp on 0.0.0.0, beyond loopback, without a shared secret"),
    (("--host", "10.213.0.2", "--transport", "rpc"), "PyTorch RPC cannot authenticate its peers and unpickles"),
    (("--host", "::1", "--transport", "rpc"), "the rpc transport cannot serve on the IPv6 address ::1"),
], ids=["tcp-without-secret", "rpc-beyond-loopback", "rpc-ipv6"])
def test_a_server_refuses_to_listen_where_it_would_be_unsafe(argv, refusal, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != auth.SECRET_VARIABLE}
    result = subprocess.run([sys.executable, "-m", "semgap.server", "--model", TEST_MODEL, *argv],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and refusal in result.stderr, result.stderr
    assert READY_LINE not in result.stdout


def test_a_secret_or_the_explicit_rpc_flag_gets_past_the_refusal(tmp_path):
    # An unknown model stops the server right after the checks, so nothing ever listens on 0.0.0.0.
    secret_file = tmp_path / "secret"
    secret_file.write_text(auth.new_secret())
    secret_file.chmod(0o600)
    for argv in (("--secret-file", str(secret_file)), ("--transport", "rpc", "--allow-unauthenticated-rpc")):
        result = subprocess.run([sys.executable, "-m", "semgap.server", "--host", "0.0.0.0", "--model", "no-such-model",
                                 *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "unknown model 'no-such-model'" in result.stderr, result.stderr
    assert "unpickles whatever it receives" in result.stderr  # rpc beyond loopback still warns


def test_a_short_secret_is_refused_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv(auth.SECRET_VARIABLE, "short")
    with pytest.raises(ValueError, match=r"\$SEMGAP_SECRET holds 5 bytes; a secret needs at least 16: make one with"):
        auth.load_secret()
    with pytest.raises(ValueError, match="cannot read the secret file"):
        auth.load_secret(tmp_path / "missing")


# --- nothing is unpickled ------------------------------------------------------------------------

# Runs the server with every way into pickle watched: the audit event every unpickler raises when
# it resolves a global (any pickled call does) and the module-level entry points.
WATCHED_SERVER = r"""
import pickle, sys
def watch(event, args):
    if event == "pickle.find_class":
        print(f"UNPICKLED find_class{args}", flush=True)
sys.addaudithook(watch)
for name in ("loads", "load"):
    def watched(*args, _name=name, _original=getattr(pickle, name), **kwargs):
        print(f"UNPICKLED pickle.{_name}", flush=True)
        return _original(*args, **kwargs)
    setattr(pickle, name, watched)
class WatchedUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        print("UNPICKLED pickle.Unpickler", flush=True)
        super().__init__(*args, **kwargs)
pickle.Unpickler = WatchedUnpickler
from semgap.server.model_server import main
sys.exit(main(sys.argv[1:]))
"""

@pytest.mark.slow
@pytest.mark.parametrize("transport_name, unpickles", [("tcp", False), ("rpc", True)])
def test_nothing_on_the_server_is_unpickled(tmp_path, transport_name, unpickles):
    # rpc is the control: the same watch sees PyTorch RPC unpickle every call, so it would see tcp's.
    env = {auth.SECRET_VARIABLE: SECRET.decode()}
    server = ServerProcess.start(("-c", WATCHED_SERVER, "--model", TEST_MODEL, "--host", "127.0.0.1", "--port",
                                  "0", "--no-gpu-monitor", "--transport", transport_name),
                                 "127.0.0.1", 0, tmp_path, label="watched", env=env, ready_timeout_s=120)
    port = server.port
    try:
        # Every operation the server knows (it names them; one without a call there fails), a post and a refused one.
        client = subprocess.run([sys.executable, str(EVERY_OP), transport_name, "127.0.0.1", str(port), SECRET.decode(),
                                 TEST_MODEL], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                                text=True, timeout=300)
        assert client.returncode == 0 and "every op done" in client.stdout, client.stderr[-3000:]
    finally:
        server.stop()
    log = server.log_tail(10_000)
    served = log[log.index(READY_LINE):]
    assert ("UNPICKLED" in served) == unpickles, served[-3000:]


def test_a_closed_connection_says_so_instead_of_failing_obscurely(connect):
    connection = connect()
    connection.close()
    with pytest.raises(ConnectionError, match="connection to the semgap server at .* is closed; cannot send 'hello'"):
        hello(connection)
    with pytest.raises(ConnectionError, match="is closed; cannot send 'release'"):
        connection.post("release", b"")


def test_a_call_that_outlasts_its_timeout_loses_the_connection_with_a_clear_error():
    stop, ready, release = threading.Event(), threading.Event(), threading.Event()
    ports = []
    server = threading.Thread(target=transport.serve, args=("tcp", "127.0.0.1", 0, lambda op, _: release.wait(30) and b"", stop),
                              kwargs={"on_ready": lambda port: (ports.append(port), ready.set())})
    server.start()
    try:
        assert ready.wait(10)
        port = ports[0]
        connection = transport.connect("tcp", "127.0.0.1", port)
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="lost the semgap server at 127.0.0.1:.* during 'slow': no progress within 0.5 s"):
            connection.call("slow", b"", timeout_s=0.5)
        assert time.monotonic() - started < 5 and connection.broken
        connection.close()
    finally:
        release.set()
        stop.set()
        server.join(30)
    assert not server.is_alive()
