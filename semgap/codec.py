"""Tensor messages on the wire: named tensors plus string metadata, optionally cast and compressed."""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

try:
    import zstandard
except ImportError:  # the lent GPU machine has no zstandard: fall back to the standard library
    zstandard = None

# First byte of every message: how the rest is compressed.
RAW, ZSTD, ZLIB = b"\x00", b"\x01", b"\x02"
ZSTD_LEVEL = 3  # fast enough to stay below the network time it saves on a 1 Gbit/s link
ZLIB_LEVEL = 1


def compressor_name() -> str:
    """`zstd` where the zstandard module is installed, else `zlib` (the codec degrades, and says so)."""
    return "zstd" if zstandard is not None else "zlib"


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None, compress: bool = False) -> bytes:
    """Serialise CPU copies of `tensors` with safetensors; `meta` travels as its string metadata."""
    body = safetensors_save({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, metadata=meta)
    if not compress:
        return RAW + body
    if zstandard is not None:
        return ZSTD + zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)
    return ZLIB + zlib.compress(body, ZLIB_LEVEL)


def decode(message: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Inverse of `encode`: (tensors on the CPU, metadata)."""
    flag, body = message[:1], message[1:]
    if flag == ZSTD:
        if zstandard is None:
            raise RuntimeError("received a zstd-compressed message but the zstandard module is not installed")
        body = zstandard.ZstdDecompressor().decompress(body)
    elif flag == ZLIB:
        body = zlib.decompress(body)
    elif flag != RAW:
        raise ValueError(f"not a semgap message (first byte {flag!r})")
    return safetensors_load(body), _metadata(body)


def _metadata(body: bytes) -> dict[str, str]:
    # safetensors' header: 8-byte little-endian length, then JSON with an optional __metadata__ entry.
    header_length = int.from_bytes(body[:8], "little")
    return json.loads(body[8 : 8 + header_length]).get("__metadata__", {})


@dataclass(frozen=True)
class LogitsOptions:
    """How the server returns logits: which positions, in which dtype, compressed or not."""

    last_position_only: bool = False  # prune: the client reads only the last position's row
    cast: str = ""  # "" keeps the model's dtype; "float16" is the semantic cast
    compress: bool = False

    def to_meta(self) -> dict[str, str]:
        return {"last_position_only": str(int(self.last_position_only)), "cast": self.cast, "compress": str(int(self.compress))}

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> "LogitsOptions":
        return cls(meta.get("last_position_only") == "1", meta.get("cast", ""), meta.get("compress") == "1")

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # logits: [batch, seq, vocab] -> [batch, 1, vocab] when pruned
        if self.last_position_only:
            logits = logits[:, -1:, :]
        return logits.to(getattr(torch, self.cast)) if self.cast else logits
