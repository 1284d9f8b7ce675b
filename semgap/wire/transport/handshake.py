"""The lean transport's handshake: each side proves the shared secret, and both derive the connection's frame MACs.

    server -> client  "SGTP" version:u8 flags:u8 server_nonce[32]    flags bit 0: a secret is demanded,
                                                                       bit 1: busy (at its connection cap), closing
    client -> server  client_nonce[32] client_proof[32]
    server -> client  status:u8 server_proof[32]                      status 0: accepted, 1: refused

Each side reads only these fixed sizes, whatever the peer sends.
"""
from __future__ import annotations

import struct
import time

from semgap.wire.transport import auth
from semgap.wire.transport.base import AuthenticationFailed, ServerBusy
from semgap.wire.transport.framed import FramedSocket, PeerClosed

VERSION = 2  # 2: frames carry a MAC where a secret is in use
HELLO = struct.Struct(f"<4sBB{auth.NONCE_BYTES}s")
CLIENT_PROOF = struct.Struct(f"<{auth.NONCE_BYTES}s{auth.PROOF_BYTES}s")
ANSWER = struct.Struct(f"<B{auth.PROOF_BYTES}s")
MAGIC = b"SGTP"
SECRET_DEMANDED = 0x01
BUSY = 0x02
ACCEPTED, REFUSED = 0, 1


def prove(connection: FramedSocket, secret: bytes | None, where: str) -> None:
    """The client's side: prove `secret`, check the server's proof, and set the connection's frame MACs."""
    try:
        magic, version, flags, server_nonce = connection.read_struct(HELLO)
    except OSError as error:  # PeerClosed and timeouts included
        raise ConnectionError(f"{where} did not greet this client: {error}") from None
    if magic != MAGIC or version != VERSION:
        raise ConnectionError(f"{where} does not speak semgap's tcp transport (version {VERSION}); "
                              "is it a --transport rpc server, or one of another semgap version?")
    if flags & BUSY:
        raise ServerBusy(f"{where} refused this connection: it serves as many connections as its cap allows "
                         "(its log says how many); close idle clients or start it with a higher --max-connections")
    if flags & SECRET_DEMANDED and secret is None:
        raise AuthenticationFailed(f"{where} demands a shared secret: set SEMGAP_SECRET or --semgap-secret-file")
    if secret is not None and not flags & SECRET_DEMANDED:
        raise AuthenticationFailed(f"{where} demands no secret, so it cannot prove it holds this one; "
                                   "start it with the same SEMGAP_SECRET")
    client_nonce = auth.new_nonce()
    connection.send(CLIENT_PROOF.pack(client_nonce, auth.proof(secret, auth.CLIENT, server_nonce, client_nonce)))
    try:
        status, server_proof = connection.read_struct(ANSWER)
    except PeerClosed:
        status, server_proof = REFUSED, b""
    if status != ACCEPTED:
        raise AuthenticationFailed(f"{where} refused this client's secret")
    if secret is not None and not auth.verify(secret, server_proof, auth.SERVER, server_nonce, client_nonce):
        raise AuthenticationFailed(f"{where} did not prove the shared secret: it is not the server you meant")
    connection.sending, connection.receiving = auth.frame_macs(secret, server_nonce, client_nonce, auth.CLIENT)


def authenticate(connection: FramedSocket, secret: bytes | None, timeout_s: float) -> None:
    """The server's side, all of it within `timeout_s` (a peer trickling bytes gains nothing)."""
    server_nonce = auth.new_nonce()
    flags = SECRET_DEMANDED if secret is not None else 0
    connection.send(HELLO.pack(MAGIC, VERSION, flags, server_nonce))
    deadline = time.monotonic() + timeout_s
    try:
        client_nonce, client_proof = _read_by(connection, CLIENT_PROOF, deadline)
    except TimeoutError:
        raise AuthenticationFailed(f"no proof within {timeout_s:g} s") from None
    except PeerClosed:
        raise AuthenticationFailed("the peer left during the handshake") from None
    if secret is not None and not auth.verify(secret, client_proof, auth.CLIENT, server_nonce, client_nonce):
        connection.send(ANSWER.pack(REFUSED, bytes(auth.PROOF_BYTES)))
        raise AuthenticationFailed("wrong secret")
    connection.send(ANSWER.pack(ACCEPTED, auth.proof(secret, auth.SERVER, server_nonce, client_nonce)))
    connection.sending, connection.receiving = auth.frame_macs(secret, server_nonce, client_nonce, auth.SERVER)


def refuse_busy(connection: FramedSocket) -> None:
    """Tell a connection beyond the server's cap that it is refused, before any handshake."""
    connection.send(HELLO.pack(MAGIC, VERSION, BUSY, bytes(auth.NONCE_BYTES)))


def _read_by(connection: FramedSocket, layout: struct.Struct, deadline: float) -> tuple:
    """Read `layout`, one receive at a time, each allowed only the time left until `deadline`."""
    while connection.end - connection.start < layout.size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        connection.sock.settimeout(left)
        connection.fill(connection.end - connection.start + 1)
    return connection.read_struct(layout)
