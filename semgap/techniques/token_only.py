"""`token-only`: the server samples, and a step's one token id is all that crosses, each way.

The server picks the token with the session's sampler (semgap.model.sampling, the one `local` uses) from
its own logits, so the choice is local's. A one-token request and every response carry the id as a
decimal in the metadata (`token`), not as a tensor with a name and a shape: a decode step is then a
few dozen bytes each way.
"""
from __future__ import annotations

import torch

from semgap.techniques.base import Message, Step, Technique


class TokenOnly(Technique):
    name = "token-only"

    def encode_request(self, message: Message) -> None:
        ids = message.tensors.get("input_ids")
        if ids is not None and ids.numel() == 1:
            message.meta["token"] = str(int(message.tensors.pop("input_ids")))

    def decode_request(self, message: Message) -> None:
        if "token" in message.meta:
            message.tensors["input_ids"] = torch.tensor([[int(message.meta.pop("token"))]])  # [batch=1, seq=1]

    def encode_response(self, message: Message, step: Step) -> None:
        message.meta["token"] = str(step.sampler(message.tensors.pop("logits"), step.position))


def token_of(message: Message) -> int | None:
    """The token a token-returning technique put in a response, or None where logits came back."""
    return int(message.meta["token"]) if "token" in message.meta else None
