"""`compress`: messages with tensors are zstd-compressed both ways at a chosen level (`compress=LEVEL`, default 3)."""
from __future__ import annotations

from semgap.wire import codec
from semgap.techniques.base import Message, Step, Technique

LEVELS = range(1, 23)  # zstd's levels


class Compress(Technique):
    name = "compress"
    default_value = str(codec.ZSTD_LEVEL)

    def check(self) -> None:
        if not self.value.isdigit() or int(self.value) not in LEVELS:
            raise ValueError(f"compress takes a zstd level from 1 to 22, got {self.value!r}")

    def encode_request(self, message: Message) -> None:
        self._compress(message)

    def encode_response(self, message: Message, step: Step) -> None:
        self._compress(message)

    def _compress(self, message: Message) -> None:
        # zstd compresses tensor data only: a message without any (a token) would grow by a frame header.
        if message.tensors:
            message.zstd_level = int(self.value)
