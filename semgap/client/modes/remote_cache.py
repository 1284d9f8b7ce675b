"""`remote_cache`: semantic-blind with persistent state; weights and KV cache stay on the server."""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.client.modes.base import Mode, last_row


class RemoteCacheMode(Mode):
    """Weights are uploaded once; each step sends token ids and an opaque KV handle, and receives
    every logit the model produced, uncompressed, as an opaque runtime would."""

    name = "remote_cache"
    role = "blind"

    def setup(self) -> None:
        self.weights_handle = self.context.resident_weights()

    def prefill(self, token_ids):
        response, meta = self.call(names.PREFILL, {names.INPUT_IDS: torch.tensor([token_ids])}, {names.WEIGHTS_HANDLE: self.weights_handle})
        return last_row(response[names.LOGITS]), meta[names.KV_HANDLE]

    def decode_one_token(self, token_id, state):
        response, _ = self.call(names.DECODE, {names.INPUT_IDS: torch.tensor([[token_id]])}, {names.KV_HANDLE: state})
        return last_row(response[names.LOGITS]), state

    def release(self, state) -> None:
        self.call(names.RELEASE, {}, {names.KV_HANDLE: state})
