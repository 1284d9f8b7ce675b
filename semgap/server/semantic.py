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
ERROR_PLACEHOLDER = " " * 13  # a logit error's width in metadata: any non-negative float's `.6e`, or inf, nan


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
        meta[names.MAX_ABS_LOGIT_ERROR] = error_text(max_abs_logit_error)
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
        session.position += 1
        compress = {names.COMPRESS: message.zstd_level is not None, "level": message.zstd_level or codec.ZSTD_LEVEL}
        if not prefill:
            response = codec.encode(message.tensors, {**message.meta, **extra}, **compress)
            session.codec_ms += (time.perf_counter() - start) * 1e3
            session.compute_ms += compute_ms
            error = self._logit_error(session.techniques, response, logits)  # after the clock: not codec time
            if error is not None:
                session.max_abs_logit_error = max(error, session.max_abs_logit_error or 0.0)
            return response
        # The prefill's error comes with its response: a placeholder, measured on the encoded response, filled in.
        returns_logits = names.LOGITS in message.tensors
        meta = {**message.meta, **figures(compute_ms, None), names.KV_HANDLE: handle, **extra}
        if returns_logits:
            meta[names.MAX_ABS_LOGIT_ERROR] = ERROR_PLACEHOLDER
        response = bytearray(codec.encode(message.tensors, meta, stamp=(names.SERVER_CODEC_MS, start), **compress))
        if returns_logits:
            error = self._logit_error(session.techniques, response, logits)
            codec.fill(response, names.MAX_ABS_LOGIT_ERROR, ERROR_PLACEHOLDER, error_text(error))
        return bytes(response)

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
    def _logit_error(techniques: TechniqueSet, response: bytes | bytearray, logits: torch.Tensor) -> float | None:
        """The largest |logit the client reads - logit the server computed| over the rows that went back, or None
        where no logits go back: measured for every set, lossless ones too, by decoding the encoded response
        exactly as the client does (codec, then the techniques' `decode_response`), so a technique or codec
        that changes a value shows here. It costs the server one decode of its own response; that time is
        in the round (the server answers after it), not in the codec ms.
        """
        tensors, meta = codec.decode(memoryview(response).toreadonly())  # read-only: decoded from a copy
        if names.LOGITS not in tensors:
            return None
        returned = techniques.decode_response(Message(tensors, meta)).tensors[names.LOGITS]
        reference = logits[:, -returned.shape[1]:, :].float()  # the rows that went back
        if returned.shape != reference.shape:
            return float("inf")  # rows the client reads are not the rows computed
        return float((returned.float() - reference.cpu()).abs().max())


def error_text(error: float) -> str:
    """A logit error for metadata, fixed width, so it can fill the placeholder of an encoded response."""
    return f"{error:>{len(ERROR_PLACEHOLDER)}.6e}"

