"""`narrow-ids`: token ids travel as int32 rather than int64 (every vocabulary fits)."""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.techniques.base import Message, Technique


class NarrowIds(Technique):
    name = "narrow-ids"

    def encode_request(self, message: Message) -> None:
        if names.INPUT_IDS in message.tensors:
            message.tensors[names.INPUT_IDS] = message.tensors[names.INPUT_IDS].to(torch.int32)
