"""`naive`: semantic-blind and stateless; every step ships weights, input ids and the whole KV cache."""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.model.presets import weights_of
from semgap.client.modes.base import Mode
from semgap.model.runtime import EAGER_DYNAMIC


class NaiveMode(Mode):
    """The server keeps nothing between calls: each one carries everything the step needs, both ways."""

    name = "naive"
    role = "blind"
    ships_cache = True
    fixed_decode_path = EAGER_DYNAMIC  # its cache crosses the wire, so a static one would ship its empty tail

    def setup(self) -> None:
        self.weights = {f"w.{name}": tensor for name, tensor in weights_of(self.context.model).items()}

    def prefill(self, token_ids):
        return self._step(token_ids, kv={}, meta=self.context.program_meta())

    def decode_one_token(self, token_id, state):
        return self._step([token_id], kv=state)

    def _step(self, token_ids: list[int], kv: dict[str, torch.Tensor], meta: dict[str, str] | None = None):
        request = {**self.weights, **kv, names.INPUT_IDS: torch.tensor([token_ids])}
        response, _ = self.call(names.NAIVE_STEP, request, meta)
        new_kv = {name: tensor for name, tensor in response.items() if name.startswith("kv.")}
        return response[names.LOGITS], new_kv
