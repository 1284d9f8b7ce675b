"""`narrow-ids`: token ids travel as int32 rather than int64 (every vocabulary fits)."""
from __future__ import annotations

import torch

from semgap.techniques.base import Message, Technique


class NarrowIds(Technique):
    name = "narrow-ids"

    def encode_request(self, message: Message) -> None:
        if "input_ids" in message.tensors:
            message.tensors["input_ids"] = message.tensors["input_ids"].to(torch.int32)
