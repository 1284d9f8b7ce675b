"""`remote_cache`: semantic-blind with persistent state; weights and KV cache stay on the server."""
from __future__ import annotations

import torch

from semgap.client.modes.base import Mode, last_row


class RemoteCacheMode(Mode):
    """Weights are uploaded once; each step sends token ids and an opaque KV handle, and receives
    every logit the model produced, uncompressed, as an opaque runtime would."""

    name = "remote_cache"
    role = "blind"

    def setup(self) -> None:
        self.weights_handle = self.resident_weights()

    def prefill(self, token_ids):
        response, meta = self.call("prefill", {"input_ids": torch.tensor([token_ids])}, {"weights_handle": self.weights_handle})
        return last_row(response["logits"]), meta["kv_handle"]

    def decode_one_token(self, token_id, state):
        response, _ = self.call("decode", {"input_ids": torch.tensor([[token_id]])}, {"kv_handle": state})
        return last_row(response["logits"]), state

    def release(self, state) -> None:
        self.call("release", {}, {"kv_handle": state})
