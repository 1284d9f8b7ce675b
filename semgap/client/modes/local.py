"""`local`: the model runs in the client process; nothing crosses a network."""
from __future__ import annotations

from semgap.client.modes.base import Mode


class LocalMode(Mode):
    name = "local"
    role = "local"
    needs_server = False

    def setup(self) -> None:
        self.engine = self.context.local_engine()

    def prefill(self, token_ids):
        step = self.engine.prefill(token_ids, logits_to_keep=self.context.program.logits_to_keep)
        return step.logits, step.cache

    def decode_one_token(self, token_id, state):
        step = self.engine.decode_one_token(token_id, state)
        return step.logits, step.cache

    def release(self, state):
        self.engine.release(state)  # a static cache goes back to the engine's pool
