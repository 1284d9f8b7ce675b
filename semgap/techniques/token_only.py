"""`token-only`: the server samples, and a step's one token id is all that crosses, each way.

The server picks the token with the session's sampler (semgap.model.sampling, the one `local` uses) from
its own logits, so the choice is local's. A one-token request and every response carry the id as a
decimal in the metadata (`token`), not as a tensor with a name and a shape: a decode step is then a
few dozen bytes each way.
"""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.techniques.base import Message, Step, Technique


class TokenOnly(Technique):
    name = "token-only"

    def encode_request(self, message: Message) -> None:
        ids = message.tensors.get(names.INPUT_IDS)
        if ids is not None and ids.numel() == 1:
            message.meta[names.TOKEN] = str(int(message.tensors.pop(names.INPUT_IDS)))

    def decode_request(self, message: Message) -> None:
        if names.TOKEN in message.meta:
            message.tensors[names.INPUT_IDS] = torch.tensor([[int(message.meta.pop(names.TOKEN))]])  # [batch=1, seq=1]

    def encode_response(self, message: Message, step: Step) -> None:
        message.meta[names.TOKEN] = str(step.sampler(message.tensors.pop(names.LOGITS), step.position))


def token_of(message: Message) -> int | None:
    """The token a token-returning technique put in a response, or None where logits came back."""
    return int(message.meta[names.TOKEN]) if names.TOKEN in message.meta else None
