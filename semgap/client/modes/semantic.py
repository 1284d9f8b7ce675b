"""`semantic`: remote_cache's residency plus the semantic techniques of its context (semgap.techniques)."""
from __future__ import annotations

import time

import torch

from semgap.wire import names
from semgap.wire import codec
from semgap.client.modes.remote_cache import RemoteCacheMode
from semgap.techniques import Message, token_of
from semgap.server.semantic import SAMPLER_FIELD, TECHNIQUES_FIELD


class SemanticMode(RemoteCacheMode):
    """remote_cache's session, with each message rewritten by the context's TechniqueSet on both ends.

    The prefill request names the set and the sampler; the server keeps them with the session.
    """

    name = "semantic"
    role = "semantic"

    def setup(self) -> None:
        super().setup()
        self.techniques = self.context.semantic
        self.totals = {"server_codec_ms": 0.0, "zstd_bytes_before": 0.0, "zstd_bytes_after": 0.0}
        self.logit_errors: list[float] = []

    @property
    def lossless(self) -> bool:
        return self.context.semantic.lossless

    def prefill(self, token_ids):
        meta = {names.WEIGHTS_HANDLE: self.weights_handle, TECHNIQUES_FIELD: self.techniques.spec,
                SAMPLER_FIELD: str(self.context.sampler), **self.context.program_meta()}
        output, meta = self._step(names.PREFILL, token_ids, meta)
        return output, meta[names.KV_HANDLE]

    def decode_one_token(self, token_id, state):
        return self._step(names.DECODE, [token_id], {names.KV_HANDLE: state})[0], state

    def _step(self, op: str, token_ids: list[int], meta: dict[str, str]):
        """One request through the techniques: the token the server chose, or the last position's logits."""
        counter, start = self.context.counter, time.perf_counter()
        request = self.techniques.encode_request(Message({names.INPUT_IDS: torch.tensor([token_ids])}, meta))
        counter.encode_ms += (time.perf_counter() - start) * 1e3
        tensors, meta = self.call(op, request.tensors, request.meta, request.zstd_level)
        start = time.perf_counter()
        response = self.techniques.decode_response(Message(tensors, meta))
        counter.decode_ms += (time.perf_counter() - start) * 1e3
        token = token_of(response)
        return (token if token is not None else response.tensors[names.LOGITS]), meta

    def received(self, response: bytes, meta: dict[str, str]) -> None:
        self.totals["server_codec_ms"] += float(meta.get(names.SERVER_CODEC_MS, 0.0))
        if "max_abs_logit_error" in meta:
            self.logit_errors.append(float(meta[names.MAX_ABS_LOGIT_ERROR]))
        sizes = codec.compression(response)
        if sizes is not None:
            self.totals["zstd_bytes_before"] += sizes[0]
            self.totals["zstd_bytes_after"] += sizes[1]

    def counters(self) -> dict[str, float]:
        return {**self.totals, "logit_errors": len(self.logit_errors)}

    def round_figures(self, before, after):
        """server_codec_ms; compression_ratio (responses' tensor data before / after zstd, None where none
        was compressed); max_abs_logit_error (None where no logits came back)."""
        delta = super().round_figures(before, after)
        errors = self.logit_errors[int(before.get("logit_errors", 0)):]
        compressed = delta["zstd_bytes_after"]
        return {"server_codec_ms": delta["server_codec_ms"],
                "compression_ratio": delta["zstd_bytes_before"] / compressed if compressed else None,
                "max_abs_logit_error": max(errors) if errors else None}

    @property
    def zstd_level(self) -> int | None:
        compress = self.techniques.get("compress")
        return None if compress is None else int(compress.value)
