"""The shared secret: where it comes from, and the HMAC proofs each side of a connection gives.

Both sides prove the secret without sending it: each sends a fresh random nonce, and each answers
with HMAC-SHA256(secret, role || server nonce || client nonce). The roles differ, so one side's
proof can never be replayed as the other's; the nonces are fresh, so no proof can be replayed on
another connection.

The same secret and nonces give the connection its session key (`session_keys`), one per direction,
and every frame after the handshake carries a MAC under it (`FrameMac`): HMAC-SHA256 over the frame's
sequence number in its direction and its bytes, truncated to TAG_BYTES. A relay that passed the
handshake through cannot forge, alter, replay, drop or reorder a frame without its MAC failing. The
frames are not encrypted: what they carry stays readable on the path.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

SECRET_VARIABLE = "SEMGAP_SECRET"
MIN_SECRET_BYTES = 16
NONCE_BYTES = 32
PROOF_BYTES = hashlib.sha256().digest_size
CLIENT, SERVER = b"semgap-client", b"semgap-server"
SESSION = b"semgap-session"
TAG_BYTES = 16  # a truncated HMAC-SHA256: 128 bits, as NIST SP 800-107 allows for authentication
HOW_TO_MAKE_ONE = "make one with `python -c 'import secrets; print(secrets.token_hex(32))'`"


def load_secret(path: Path | None = None) -> bytes | None:
    """The secret from the file at `path`, else from $SEMGAP_SECRET, else None; ValueError if too short."""
    if path is not None:
        try:
            mode = os.stat(path).st_mode
            text = Path(path).read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read the secret file {path}: {error.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"the secret file {path} is open to group or others (mode {stat.S_IMODE(mode):o}): "
                             f"run `chmod 600 {path}`")
        return _checked(text, f"the secret file {path}")
    text = os.environ.get(SECRET_VARIABLE)
    return None if text is None else _checked(text.strip(), f"${SECRET_VARIABLE}")


def _checked(text: str, source: str) -> bytes:
    secret = text.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{source} holds {len(secret)} bytes; a secret needs at least {MIN_SECRET_BYTES}: {HOW_TO_MAKE_ONE}")
    return secret


def new_secret() -> str:
    """A fresh random secret, for a server this process spawns and is the only client of."""
    return secrets.token_hex(32)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def proof(secret: bytes | None, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What `role` (CLIENT or SERVER) sends to prove the secret; zeros without one (its peer then demands none)."""
    if secret is None:
        return bytes(PROOF_BYTES)
    return hmac.new(secret, role + server_nonce + client_nonce, hashlib.sha256).digest()


def verify(secret: bytes, received: bytes, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bool:
    """Whether `received` is `role`'s proof of `secret` for this pair of nonces (in constant time)."""
    return hmac.compare_digest(received, proof(secret, role, server_nonce, client_nonce))


def session_keys(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key) of one connection, from the secret and both its nonces."""
    session = hmac.new(secret, SESSION + server_nonce + client_nonce, hashlib.sha256).digest()
    return hmac.new(session, CLIENT, hashlib.sha256).digest(), hmac.new(session, SERVER, hashlib.sha256).digest()


class FrameMac:
    """One direction's frame MACs: each covers the frame's sequence number, so a frame replayed, dropped or
    reordered within the connection fails like a forged or altered one."""

    def __init__(self, key: bytes):
        self.key = key
        self.sequence = 0

    def tag(self, *parts) -> bytes:
        """The tag of the next frame, made of `parts` (bytes-like, hashed in order without copying)."""
        mac = hmac.new(self.key, self.sequence.to_bytes(8, "little"), hashlib.sha256)
        for part in parts:
            mac.update(part)
        self.sequence += 1
        return mac.digest()[:TAG_BYTES]

    def verify(self, tag: bytes, *parts) -> bool:
        return hmac.compare_digest(tag, self.tag(*parts))


def frame_macs(secret: bytes | None, server_nonce: bytes, client_nonce: bytes, role: bytes) -> tuple[FrameMac | None, FrameMac | None]:
    """(sending, receiving) MACs of `role`'s end of a connection; (None, None) without a secret."""
    if secret is None:
        return None, None
    client_to_server, server_to_client = session_keys(secret, server_nonce, client_nonce)
    if role == CLIENT:
        return FrameMac(client_to_server), FrameMac(server_to_client)
    return FrameMac(server_to_client), FrameMac(client_to_server)
