"""The inference engine both the client (local mode) and the server run: prefill, decode one token."""
from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch


@dataclass
class StepOutput:
    logits: torch.Tensor  # [batch, seq, vocab]
    cache: object  # a transformers Cache holding keys and values of every position so far


@cache
def _cache_argument(model_class: type) -> str:
    # transformers 5.24 renamed `past_key_values` to `cache` (argument and output); 5.17 knows only
    # the old name, and the old name warns from 5.24 on. This is the one place that knows.
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cache: object | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> StepOutput:
    """One forward pass with a KV cache; `weights` replaces the model's own for this call only."""
    kwargs = {"input_ids": input_ids, "use_cache": True, _cache_argument(type(model)): cache}
    with torch.inference_mode():
        if weights is None:
            output = model(**kwargs)
        else:
            output = torch.func.functional_call(model, weights, args=(), kwargs=kwargs, tie_weights=True, strict=False)
    new_cache = output["cache"] if "cache" in output else output["past_key_values"]
    return StepOutput(logits=output.logits, cache=new_cache)


def cache_to_tensors(cache: object) -> dict[str, torch.Tensor]:
    """Flatten a KV cache into named tensors `k.{layer}` and `v.{layer}`, each [batch, heads, seq, head_dim]."""
    tensors = {}
    for index, layer in enumerate(cache.layers):
        tensors[f"k.{index}"] = layer.keys
        tensors[f"v.{index}"] = layer.values
    return tensors


def tensors_to_cache(tensors: dict[str, torch.Tensor]) -> object:
    """Rebuild a KV cache from `cache_to_tensors` output."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index in range(len(tensors) // 2):
        cache.update(tensors[f"k.{index}"], tensors[f"v.{index}"], index)
    return cache


def greedy_token(logits: torch.Tensor) -> int:
    """The argmax of the last position's logits ([..., vocab])."""
    return int(logits.reshape(-1, logits.shape[-1])[-1].float().argmax())


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so a clock read after it measures the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(device: torch.device | str = "cpu"):
    """Yield a dict whose `ms` is filled with the elapsed wall time, the device synchronised at both ends."""
    timing = {"ms": 0.0}
    synchronize(device)
    start = time.perf_counter()
    try:
        yield timing
    finally:
        synchronize(device)
        timing["ms"] = (time.perf_counter() - start) * 1e3


class Engine:
    """Runs one model: `prefill` a prompt, then `decode_one_token` at a time against its cache."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device

    def ids(self, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        # input_ids: [batch=1, seq]
        return torch.as_tensor(token_ids, dtype=torch.long).reshape(1, -1).to(self.device)

    def prefill(self, token_ids: list[int] | torch.Tensor, weights: dict | None = None) -> StepOutput:
        return forward(self.model, self.ids(token_ids), None, weights)

    def decode_one_token(self, token_id: int | torch.Tensor, cache: object, weights: dict | None = None) -> StepOutput:
        return forward(self.model, self.ids(token_id), cache, weights)
