"""What a model's shape says its bytes must be, from its config alone, and the check against what crossed the wire.

The semantic gap turns on a few quantities of the model's shape: its weight bytes (what `naive` ships
each step and what residency uploads once), its KV cache bytes per token (what eviction and migration
move; grouped-query attention makes them smaller), its logits row (what a blind runtime returns each
step; larger with a 128 K vocabulary) and, for a mixture of experts, the parameters active per token.
`ModelShape.of` computes them from the config (the model is built on the meta device: nothing is
allocated); `check` compares them with the bytes a run measured, within each transfer's framing, so
a misreported shape (a wrong KV head count, a tied table counted twice) fails loudly instead of
skewing the gap map.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: Framing a codec message adds around its tensors: per tensor (name, dtype, shape, alignment) and per message.
FRAMING_PER_TENSOR = 128
FRAMING_PER_MESSAGE = 1024


@dataclass(frozen=True)
class ModelShape:
    model: str
    dtype: str
    parameters: int  # tied tensors once
    weight_bytes: int
    weight_tensors: int
    layers: int
    kv_heads: int
    head_dim: int
    kv_bytes_per_token: int  # keys and values of every layer
    vocab_size: int
    logits_row_bytes: int
    experts: int | None = None  # per layer, for a mixture of experts
    experts_per_token: int | None = None
    active_parameters: int | None = None  # per token: the shared weights and the chosen experts' share

    @classmethod
    def of(cls, name: str, config, dtype: torch.dtype) -> "ModelShape":
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        unique = {id(p): (n, p) for n, p in model.named_parameters()}.values()
        parameters = sum(p.numel() for _, p in unique)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        itemsize = dtype.itemsize
        experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
        top_k = getattr(config, "num_experts_per_tok", None) if experts else None
        active = None
        if experts:  # expert tensors are stacked [experts, ...]: a token uses top_k of them
            expert_numel = sum(p.numel() for n, p in unique if ".experts." in n and p.shape[0] == experts)
            active = parameters - expert_numel * (experts - top_k) // experts
        return cls(name, str(dtype).removeprefix("torch."), parameters, parameters * itemsize, len(unique),
                   config.num_hidden_layers, kv_heads, head_dim, 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize,
                   config.vocab_size, config.vocab_size * itemsize, experts, top_k, active)


@dataclass(frozen=True)
class ShapeCheck:
    """One transfer the shape predicts, against the payload bytes a run measured for it."""

    quantity: str
    expected_bytes: int
    measured_bytes: int
    framing_bytes: int  # the most framing may add

    @property
    def ok(self) -> bool:
        return self.expected_bytes <= self.measured_bytes <= self.expected_bytes + self.framing_bytes

    def line(self) -> str:
        return (f"{self.quantity}: the shape says {self.expected_bytes:,} B, the run moved {self.measured_bytes:,} B "
                f"(framing allows up to {self.framing_bytes:,} B more)")


def framing(tensors: int) -> int:
    return FRAMING_PER_MESSAGE + FRAMING_PER_TENSOR * tensors


def weights_check(shape: ModelShape, uploaded_bytes: int) -> ShapeCheck:
    """The one weight upload: every unique tensor once."""
    return ShapeCheck("weights", shape.weight_bytes, uploaded_bytes, framing(shape.weight_tensors))


def logits_row_check(shape: ModelShape, received_bytes: int) -> ShapeCheck:
    """A blind prefill's answer under the generate program: one logits row."""
    return ShapeCheck("logits row", shape.logits_row_bytes, received_bytes, framing(1))


def kv_check(shape: ModelShape, exported_bytes: int, positions: int) -> ShapeCheck:
    """A whole KV cache of `positions` positions, exported: keys and values of every layer."""
    return ShapeCheck("KV cache", shape.kv_bytes_per_token * positions, exported_bytes, framing(2 * shape.layers))
