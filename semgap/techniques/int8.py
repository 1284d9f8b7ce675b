"""`int8`: float tensors travel as int8 with one float32 scale per row (per channel of the last dimension).

Each row x is sent as round(x / s) with s = max|x| / 127, so a value comes back within s / 2 of
where it was: a logits row of range 20 is off by at most 0.08.
"""
from __future__ import annotations

import torch

from semgap.techniques.base import Message, Step, Technique, float_tensors

SCALE_SUFFIX = ".int8_scale"  # the tensor beside each quantised one: its rows' scales, [..., 1]


class Int8(Technique):
    name = "int8"
    lossless = False

    def encode_response(self, message: Message, step: Step) -> None:
        for name in float_tensors(message):
            values = message.tensors[name].float()
            scale = values.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127
            message.tensors[name] = (values / scale).round().clamp(-127, 127).to(torch.int8)
            message.tensors[name + SCALE_SUFFIX] = scale

    def decode_response(self, message: Message) -> None:
        for name in [name for name in message.tensors if name.endswith(SCALE_SUFFIX)]:
            scale, quantised = message.tensors.pop(name), name.removesuffix(SCALE_SUFFIX)
            message.tensors[quantised] = message.tensors[quantised].float() * scale
