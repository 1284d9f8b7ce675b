"""The server's side of semantic sessions: the technique set and sampler each KV handle was opened with.

A prefill request that names `techniques` opens a semantic session; its decode requests then carry
only the handle and the token (a token-only step is a few dozen bytes each way), so the session's
figures for its decode steps (server compute and codec ms, the worst logit error) come back once,
with the release. A prefill's own figures come with its response.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from semgap.wire import names
from semgap.wire import codec
from semgap.model.sampling import Sampler
from semgap.techniques import Message, Step, TechniqueSet

TECHNIQUES_FIELD, SAMPLER_FIELD = "techniques", "sampler"  # the prefill request's metadata that opens a session


@dataclass
class Session:
    techniques: TechniqueSet
    sampler: Sampler
    position: int  # index in the sequence of the next token the session chooses
    compute_ms: float = 0.0  # the decode steps' totals since the prefill
    codec_ms: float = 0.0
    max_abs_logit_error: float | None = None


def figures(compute_ms: float, max_abs_logit_error: float | None) -> dict[str, str]:
    """A response's metadata for figures other than the codec's own time."""
    meta = {names.SERVER_COMPUTE_MS: codec.milliseconds_text(compute_ms)}
    if max_abs_logit_error is not None:
        meta[names.MAX_ABS_LOGIT_ERROR] = repr(max_abs_logit_error)
    return meta


class SemanticSessions:
    """The semantic sessions of one server, by KV handle; a handle not here is a blind session."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    def __contains__(self, handle: str) -> bool:
        return handle in self.sessions

    def open(self, handle: str, meta: dict[str, str], input_ids: torch.Tensor) -> None:
        """Register a prefill's session if its request names techniques (input_ids: [batch, seq])."""
        if TECHNIQUES_FIELD in meta:
            self.sessions[handle] = Session(TechniqueSet.parse(meta[TECHNIQUES_FIELD]),
                                            Sampler.parse(meta.get(SAMPLER_FIELD, "greedy")), input_ids.shape[-1])

    @contextmanager
    def opening(self, handle: str, meta: dict[str, str], input_ids: torch.Tensor) -> Iterator[None]:
        """Open the session (see `open`) for the prefill run inside; a prefill that fails leaves no session behind."""
        self.open(handle, meta, input_ids)
        try:
            yield
        except BaseException:
            self.forget(handle)
            raise

    def decode_request(self, handle: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, torch.Tensor]:
        """The request's tensors as the session's techniques restore them (a blind session's as they came)."""
        if handle not in self.sessions:
            return tensors
        return self.sessions[handle].techniques.decode_request(Message(dict(tensors), dict(meta))).tensors

    def respond(self, handle: str, logits: torch.Tensor, compute_ms: float, prefill: bool, **extra: str) -> bytes:
        """The session's response to a step whose logits ([batch, seq, vocab]) the model just computed; `extra`
        joins its metadata (the batching runtime's batch size)."""
        session, start = self.sessions[handle], time.perf_counter()
        message = session.techniques.encode_response(Message({names.LOGITS: logits}), Step(session.sampler, session.position))
        technique_s = time.perf_counter() - start
        session.position += 1
        error = self._logit_error(session.techniques, message, logits)
        compress = {names.COMPRESS: message.zstd_level is not None, "level": message.zstd_level or codec.ZSTD_LEVEL}
        start = time.perf_counter() - technique_s  # the check of the error above is not codec time
        if prefill:
            meta = {**message.meta, **figures(compute_ms, error), names.KV_HANDLE: handle, **extra}
            return codec.encode(message.tensors, meta, stamp=("server_codec_ms", start), **compress)
        response = codec.encode(message.tensors, {**message.meta, **extra}, **compress)
        session.codec_ms += (time.perf_counter() - start) * 1e3
        session.compute_ms += compute_ms
        if error is not None:
            session.max_abs_logit_error = max(error, session.max_abs_logit_error or 0.0)
        return response

    def close(self, handle: str) -> dict[str, str]:
        """The release's metadata: the decode steps' figures (nothing for a blind session)."""
        session = self.sessions.pop(handle, None)
        if session is None:
            return {}
        return {**figures(session.compute_ms, session.max_abs_logit_error),
                names.SERVER_CODEC_MS: codec.milliseconds_text(session.codec_ms)}

    def forget(self, handle: str) -> None:
        self.sessions.pop(handle, None)

    @staticmethod
    def _logit_error(techniques: TechniqueSet, message: Message, logits: torch.Tensor) -> float | None:
        """The largest |logit the client reads - logit the server computed|, where logits go back; None otherwise.

        Lossless sets return the computed values exactly (0.0 by construction, tested), so only a lossy
        set pays for decoding its own response here; that time is in the round, not in the codec ms.
        """
        if names.LOGITS not in message.tensors:
            return None
        if techniques.lossless:
            return 0.0
        returned = techniques.decode_response(Message(dict(message.tensors), dict(message.meta))).tensors[names.LOGITS]
        reference = logits[:, -returned.shape[1]:, :].float()  # the rows that went back
        return float((returned.float() - reference).abs().max())
