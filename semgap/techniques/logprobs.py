"""`logprobs`: the sampled token plus the top k (id, log-probability) pairs, as serving APIs return them."""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.techniques.base import Message, Step
from semgap.techniques.token_only import TokenOnly


class Logprobs(TokenOnly):
    """Requests go as token-only's; the response adds the top k to its token."""

    name = "logprobs"
    default_value = "5"  # k

    def check(self) -> None:
        if not self.value.isdigit() or int(self.value) < 1:
            raise ValueError(f"logprobs needs k >= 1, got {self.value!r}")

    def encode_response(self, message: Message, step: Step) -> None:
        logits = message.tensors.pop(names.LOGITS)
        row = logits.reshape(-1, logits.shape[-1])[-1].float()
        logprobs, ids = row.log_softmax(-1).topk(int(self.value))
        message.tensors.update(top_ids=ids.to(torch.int32), top_logprobs=logprobs)  # each [k]
        message.meta[names.TOKEN] = str(step.sampler(row, step.position))
