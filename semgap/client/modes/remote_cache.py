"""`remote_cache`: semantic-blind with persistent state; weights and KV cache stay on the server."""
from __future__ import annotations

import torch

from semgap.wire import names
from semgap.client.modes.base import Mode


class RemoteCacheMode(Mode):
    """Weights are uploaded once; each step sends token ids and an opaque KV handle, and receives
    every logit the program's forward produced, uncompressed, as an opaque runtime would (under the
    generate program a prefill keeps the last position's; under full-logits, every position's)."""

    name = "remote_cache"
    role = "blind"

    def setup(self) -> None:
        self.weights_handle = self.context.resident_weights()

    def prefill(self, token_ids):
        response, meta = self.call(names.PREFILL, {names.INPUT_IDS: torch.tensor([token_ids])},
                                   {names.WEIGHTS_HANDLE: self.weights_handle, **self.context.program_meta()})
        return response[names.LOGITS], meta[names.KV_HANDLE]

    def decode_one_token(self, token_id, state):
        response, _ = self.call(names.DECODE, {names.INPUT_IDS: torch.tensor([[token_id]])}, {names.KV_HANDLE: state})
        return response[names.LOGITS], state

    def release(self, state) -> None:
        self.call(names.RELEASE, {}, {names.KV_HANDLE: state})
