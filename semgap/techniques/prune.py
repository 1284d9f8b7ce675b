"""`prune`: only the last position's logits come back, the only row the client reads."""
from __future__ import annotations

from semgap.techniques.base import Message, Step, Technique


class Prune(Technique):
    name = "prune"

    def encode_response(self, message: Message, step: Step) -> None:
        if "logits" in message.tensors:
            message.tensors["logits"] = message.tensors["logits"][:, -1:, :]  # [batch, seq, vocab] -> [batch, 1, vocab]
