"""`cast`: float tensors travel as float16 (or bfloat16: `cast=bfloat16`) and are read back as float32."""
from __future__ import annotations

import torch

from semgap.techniques.base import Message, Step, Technique, float_tensors

DTYPES = ("float16", "bfloat16")


class Cast(Technique):
    name = "cast"
    lossless = False  # a rounded logit can flip an argmax between near-equal ones
    default_value = "float16"

    def check(self) -> None:
        if self.value not in DTYPES:
            raise ValueError(f"cast takes one of {', '.join(DTYPES)}, got {self.value!r}")

    def encode_response(self, message: Message, step: Step) -> None:
        for name in float_tensors(message):
            message.tensors[name] = message.tensors[name].to(getattr(torch, self.value))

    def decode_response(self, message: Message) -> None:
        for name in float_tensors(message):
            message.tensors[name] = message.tensors[name].float()
