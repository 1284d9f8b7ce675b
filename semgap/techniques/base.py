"""The interface of a semantic technique, and the message every technique hook rewrites."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from semgap.model.sampling import GREEDY, Sampler


@dataclass
class Message:
    """One request or response before encoding (or after decoding): named tensors, metadata, compression.

    The tensors a response starts from: `logits` [batch, seq, vocab] as the model computed them.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)
    zstd_level: int | None = None  # None: sent raw


@dataclass(frozen=True)
class Step:
    """What the server knows when it answers one step: the session's sampler and the new token's position."""

    sampler: Sampler = GREEDY
    position: int = 0  # index in the sequence of the token the step chooses


class Technique:
    """One semantic technique: a switch that rewrites messages on both ends, each hook the inverse of its pair.

    The client calls `encode_request` before sending and `decode_response` after receiving; the server
    calls `decode_request` after receiving and `encode_response` before sending. Every hook defaults to
    leaving the message alone, so a technique writes only the ends it changes. `value` is the
    technique's one setting (a dtype, a level, k), or None for a plain switch.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool] = True  # whether the tokens stay exactly those of local
    default_value: ClassVar[str | None] = None

    def __init__(self, value: str | None = None):
        self.value = self.default_value if value is None else value
        self.check()

    def check(self) -> None:
        """Raise ValueError for a setting the technique cannot use."""
        if self.default_value is None and self.value is not None:
            raise ValueError(f"technique {self.name!r} takes no setting, got {self.value!r}")

    @property
    def spec(self) -> str:
        """`name` or `name=value`: how the technique travels in a request's `techniques` field."""
        return self.name if self.value is None else f"{self.name}={self.value}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Technique) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"<technique {self.spec}>"

    def encode_request(self, message: Message) -> None:
        """Client, before sending."""

    def decode_request(self, message: Message) -> None:
        """Server, after receiving."""

    def encode_response(self, message: Message, step: Step) -> None:
        """Server, before sending."""

    def decode_response(self, message: Message) -> None:
        """Client, after receiving."""


def float_tensors(message: Message) -> list[str]:
    """Names of the message's floating-point tensors (what cast and int8 rewrite)."""
    return [name for name, tensor in message.tensors.items() if tensor.is_floating_point()]
