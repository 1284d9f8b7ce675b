"""`prune`: only the last position's logits come back, the only row the client reads."""
from __future__ import annotations

from semgap.wire import names
from semgap.techniques.base import Message, Step, Technique


class Prune(Technique):
    name = "prune"

    def encode_response(self, message: Message, step: Step) -> None:
        if names.LOGITS in message.tensors:
            message.tensors[names.LOGITS] = message.tensors[names.LOGITS][:, -1:, :]  # [batch, seq, vocab] -> [batch, 1, vocab]
