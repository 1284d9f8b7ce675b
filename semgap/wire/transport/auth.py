"""The shared secret: where it comes from, and the HMAC proofs each side of a connection gives.

Both sides prove the secret without sending it: each sends a fresh random nonce, and each answers
with HMAC-SHA256(secret, role || server nonce || client nonce). The roles differ, so one side's
proof can never be replayed as the other's; the nonces are fresh, so no proof can be replayed on
another connection.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_VARIABLE = "SEMGAP_SECRET"
MIN_SECRET_BYTES = 16
NONCE_BYTES = 32
PROOF_BYTES = hashlib.sha256().digest_size
CLIENT, SERVER = b"semgap-client", b"semgap-server"
HOW_TO_MAKE_ONE = "make one with `python -c 'import secrets; print(secrets.token_hex(32))'`"


def load_secret(path: Path | None = None) -> bytes | None:
    """The secret from the file at `path`, else from $SEMGAP_SECRET, else None; ValueError if too short."""
    if path is not None:
        try:
            text = Path(path).read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read the secret file {path}: {error.strerror}") from None
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
