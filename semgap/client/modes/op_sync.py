"""`op_sync`: blind op-level remoting; local's own code runs on a remote device and every forwarded op is a round trip."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from semgap.client.modes.base import Mode
from semgap.client.oplevel.session import RemoteSession
from semgap.model.runtime import EAGER_DYNAMIC, Engine


@dataclass
class RemoteState:
    """What decoding continues from; `release` empties it, which frees its storages on the client."""

    cache: object  # a transformers cache whose tensors are handles to the server's storages


class OpSyncMode(Mode):
    """The Hugging Face model, unmodified, on the `remote` device (semgap.oplevel): what crosses the wire is
    what a driver-level remoting layer sees. Weights stay resident from the session's one upload, the KV
    cache lives on the server, and only what the program reads comes back: the steps return the logits
    where they are (on the server), and the sampler's read (greedy: the argmax, one id) is what crosses."""

    name = "op_sync"
    role = "blind"
    pipelined: ClassVar[bool] = False  # every forwarded op waits for its answer
    fixed_decode_path = EAGER_DYNAMIC  # a remoting layer sees each kernel of the eager code

    def setup(self) -> None:
        self.session = RemoteSession(self.call, self.post, self.context.resident_weights(), pipelined=self.pipelined)
        self.engine = Engine(self.session.remote_model(self.context.model))

    def prefill(self, token_ids):
        with self.session.active():
            step = self.engine.prefill(token_ids, logits_to_keep=self.context.program.logits_to_keep)
            return step.logits, RemoteState(step.cache)

    def decode_one_token(self, token_id, state):
        with self.session.active():
            step = self.engine.decode_one_token(token_id, state.cache)
            state.cache = step.cache
            return step.logits, state

    def release(self, state) -> None:
        state.cache = None
        self.session.release_freed()  # one post tells the server which storages that freed

    def counters(self) -> dict[str, float]:
        return self.session.counters.as_dict() if hasattr(self, "session") else {}

    def close(self) -> None:
        if hasattr(self, "session"):
            self.session.close()
