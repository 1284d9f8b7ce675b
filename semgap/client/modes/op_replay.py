"""`op_replay`: blind op-level remoting that captures a step once per shape and then only replays it.

As CUDA graphs or command-buffer remoting do for LLM decode: the first step of each shape (a prefill
per prompt length, the one-token decode step on a static KV cache) runs local's Python once through
the op-level client (semgap.client.oplevel) while the server records its requests as a graph
(semgap.server.opgraph); every later step of that shape sends only its input ids and its position,
and the server runs the graph: one round trip per step, and no model Python on the client.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass

import torch

from semgap.client.modes.base import Mode, SetupCosts
from semgap.client.oplevel.session import RemoteSession
from semgap.model import runtime
from semgap.wire import names, op_protocol

INPUT_IDS = op_protocol.INPUT_PREFIX + names.INPUT_IDS  # the one input of every step graph: [1, tokens] int64
DECODE_GRAPH = "decode"


@dataclass
class Sequence:
    """Where decoding continues: the positions the server's static cache holds."""

    position: int


class OpReplayMode(Mode):
    """The unmodified model on the `remote` device with one static KV cache on the server; what crosses
    each step is its input and what the program reads (greedy: one id)."""

    name = "op_replay"
    role = "blind"
    fixed_decode_path = runtime.STATIC  # a replayable step has one shape: eager kernels on a static cache

    def setup(self) -> None:
        self.session = RemoteSession(self.call, self.post, self.context.resident_weights(), pipelined=True)
        self.model = self.session.remote_model(self.context.model)
        config = self.model.config
        self.max_cache_len = min(self.context.max_cache_len or runtime.context_length(config), runtime.context_length(config))
        from transformers import StaticCache

        with self.session.active():
            # Made before any capture: the cache's storages outlive every step, which update them in place.
            self.cache = StaticCache(config=config, max_cache_len=self.max_cache_len)
            heads = config.num_attention_heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads  # grouped-query attention: fewer
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            self.cache.early_initialization(1, kv_heads, head_dim, self.context.model.dtype, self.session.device)
        self.session.flush()
        self.captured: set[str] = set()
        self.figures = {"captures": 0, "replays": 0, "replay_client_ms": 0.0}
        self.capture_costs = SetupCosts()  # every capture's, in rounds or not (setup_costs: those before the rounds)

    def prepare(self, token_ids: list[int]) -> None:
        """Capture the prompt's prefill and the decode step now, so that rounds only replay."""
        _, state = self.prefill(token_ids)
        if state.position < self.max_cache_len:
            self.decode_one_token(0, state)
        self.release(state)
        self.setup_costs = dataclasses.replace(self.capture_costs)

    def prefill(self, token_ids):
        return self._step(f"prefill.{len(token_ids)}", token_ids, 0), Sequence(len(token_ids))

    def decode_one_token(self, token_id, state):
        output = self._step(DECODE_GRAPH, [token_id], state.position)
        state.position += 1
        return output, state

    def release(self, state) -> None:
        """Nothing to send: the next prefill starts the cache's sequence anew (its graph resets the cache)."""

    def _step(self, graph: str, token_ids: list[int], position: int):
        if position + len(token_ids) > self.max_cache_len:
            raise ValueError(f"op_replay's static KV cache holds {self.max_cache_len} positions; a step at position "
                             f"{position} of {len(token_ids)} tokens does not fit")
        input_ids = torch.tensor([token_ids], dtype=torch.long)  # [1, tokens]
        if graph in self.captured:
            return self._replay(graph, position, input_ids)
        return self._capture(graph, position, input_ids)

    def _capture(self, graph: str, position: int, input_ids: torch.Tensor):
        """Run the program's step through the op-level client while the server records it."""
        session, counter = self.session, self.context.counter
        before, start = counter.snapshot(), time.perf_counter()
        session.flush()  # ops and frees from before the step go outside its graph
        session.capture = {"graph": graph, "position": position, "tokens": input_ids.shape[1]}
        session.input_names = {id(input_ids): INPUT_IDS}
        try:
            # inference_mode, as op_sync's dynamic steps run: under no_grad, autograd would expand
            # scaled_dot_product_attention on the client into the math kernel's ops (bmm, softmax), where
            # local's and the server's CPU run a fused kernel, and the logits would differ in bfloat16. The
            # cache's tensors were made outside it (setup), so they stay writable in place everywhere.
            with session.active(), torch.inference_mode():
                if position == 0:
                    self.cache.reset()  # as the Engine does between sequences; part of the prefill's graph
                keep = self.context.program.logits_to_keep if position == 0 else 0
                logits = runtime.forward(self.model, input_ids.to(session.device), self.cache, logits_to_keep=keep).logits
                output = self.context.sampler.read(logits)  # the step's one wait: the program's read
                del logits
            gc.collect()  # every storage the step made is freed before its graph closes
            session.capture = {**session.capture, "end": True}
            session.send(wait=True)  # the server answers whether the graph can be replayed
        finally:
            session.capture, session.input_names = None, {}
        self.captured.add(graph)
        spent = counter.since(before)
        self.figures["captures"] += 1  # a capture in a round shows here; its bytes are the round's
        self.capture_costs.capture_bytes_sent += spent.bytes_sent
        self.capture_costs.capture_bytes_received += spent.bytes_received
        self.capture_costs.capture_ms += (time.perf_counter() - start) * 1e3
        return output

    def _replay(self, graph: str, position: int, input_ids: torch.Tensor):
        """One round trip: the inputs and the graph's name out; what the program reads back."""
        start = time.perf_counter()
        document = {"session": self.session.id, "replay": {"graph": graph, "position": position}}
        request = {op_protocol.REQUEST_KEY: op_protocol.dumps(document)}
        call_start = time.perf_counter()
        tensors, meta = self.call(names.OP_BATCH, {INPUT_IDS: input_ids}, request)
        call_end = time.perf_counter()
        reply = op_protocol.loads(meta.get(op_protocol.REPLY_KEY, "null"))
        output = tensors[reply["data"]] if isinstance(reply, dict) else reply  # the row, or the id
        self.figures["replays"] += 1
        self.figures["replay_client_ms"] += ((call_start - start) + (time.perf_counter() - call_end)) * 1e3
        return output

    def counters(self) -> dict[str, float]:
        """The op-level client's counters (its captures' ops), plus captures, replays and their costs;
        client_tracing_ms is all the client's own time per step: tracing while capturing, building a replay."""
        if not hasattr(self, "session"):
            return {}
        figures = dict(self.figures)
        counters = self.session.counters.as_dict()
        counters["client_tracing_ms"] += figures.pop("replay_client_ms")
        return {**counters, **figures}

    def close(self) -> None:
        if hasattr(self, "session"):
            self.session.close()
