"""N client sessions decoding at once, each on its own connection: the client side of the batching benchmark."""
from __future__ import annotations

import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from semgap.wire import names
from semgap.client import generate

from semgap.wire import transport
from semgap.client.modes.base import Mode, ModeContext
from semgap.client.modes.remote_cache import RemoteCacheMode
from semgap.client.modes.semantic import SemanticMode
from semgap.model.runtime import EAGER_DYNAMIC
from semgap.bench.testbed.tcpcounters import TcpBytes


class BatchedSemanticMode(SemanticMode):
    """`semantic` whose steps the server may batch with other sessions' (semgap/batching.py).

    The same requests and answers as `semantic`, sent to the batching runtime's operations; each
    answer says how many sessions its forward served (`batch_size`), counted in `counters()`.
    """

    name = "semantic-batched"
    fixed_decode_path = EAGER_DYNAMIC  # the batching runtime's caches change batch size: no static cache, no graph
    OPERATIONS: ClassVar[dict[str, str]] = {names.PREFILL: names.BATCH_PREFILL, names.DECODE: names.BATCH_DECODE,
                                            names.RELEASE: names.BATCH_RELEASE}

    def __init__(self, context: ModeContext):
        super().__init__(context)
        self.batched_steps = 0
        self.batch_size_sum = 0

    def call(self, op, tensors, meta=None, zstd_level=None, timeout_s=None):
        response, response_meta = super().call(self.OPERATIONS.get(op, op), tensors, meta, zstd_level, timeout_s)
        if op == names.DECODE:
            self.batched_steps += 1
            self.batch_size_sum += int(response_meta[names.BATCH_SIZE])
        return response, response_meta

    def counters(self) -> dict[str, float]:
        return {**super().counters(), "batched_steps": self.batched_steps, "batch_size_sum": self.batch_size_sum}


# How the server runs N sessions' decode steps: the blind runtime one forward per request, as it
# arrives (remote_cache's requests); the semantic runtime one forward per batch of steps.
FLAVOURS: dict[str, type[Mode]] = {
    "blind": RemoteCacheMode,
    "semantic": BatchedSemanticMode,
}


def flavour_class(name: str) -> type[Mode]:
    if name not in FLAVOURS:
        raise ValueError(f"unknown batching flavour {name!r}; choose from {', '.join(FLAVOURS)}")
    return FLAVOURS[name]


def session_prompts(prompt: list[int], sessions: int) -> list[list[int]]:
    """One prompt per session, all as long as `prompt`: its tokens rotated by 17 more per session.

    Distinct prompts make distinct caches and tokens (a mixed-up cache shows), and equal lengths let
    the semantic runtime batch the sessions without padding.
    """
    return [prompt[(17 * index) % len(prompt):] + prompt[:(17 * index) % len(prompt)] for index in range(sessions)]


class _TimedSteps:
    """Wraps a mode and keeps the wall time of every decode step (ms), client to client."""

    def __init__(self, mode: Mode):
        self.mode = mode
        self.context = mode.context  # generate reads the sampler from it
        self.step_ms: list[float] = []

    def decode_one_token(self, token_id, state):
        start = time.perf_counter()
        result = self.mode.decode_one_token(token_id, state)
        self.step_ms.append((time.perf_counter() - start) * 1e3)
        return result


@dataclass
class SessionRound:
    """What one session did in one round: its tokens and the latency of each decode step."""

    tokens: list[int]
    step_ms: list[float]


@dataclass
class ConcurrentRound:
    """One round of N sessions decoding at once, with what they moved (all connections together)."""

    wall_ms: float
    sessions: list[SessionRound]
    payload: transport.PayloadCounter
    mode_counters: dict[str, float] = field(default_factory=dict)
    tcp: TcpBytes | None = None  # kernel TCP bytes of every connection of the process, when counted
    link: tuple[int, int] | None = None  # the namespace link's bytes (sent, received), on --semgap-link netns

    @property
    def tokens_decoded(self) -> int:
        return sum(len(session.tokens) for session in self.sessions)

    def figures(self) -> dict[str, float | None]:
        """This round's per-token figures for extra_info."""
        step_ms = sorted(ms for session in self.sessions for ms in session.step_ms)
        tokens = self.tokens_decoded
        batched = self.mode_counters.get("batched_steps", 0)
        return {
            "tokens_per_s": tokens / (self.wall_ms / 1e3),
            "round_wall_ms": self.wall_ms,
            "token_latency_ms": statistics.median(step_ms),
            "token_latency_p90_ms": step_ms[int(0.9 * (len(step_ms) - 1))],
            "payload_bytes_sent": self.payload.bytes_sent, "payload_bytes_received": self.payload.bytes_received,
            "payload_bytes_per_token": (self.payload.bytes_sent + self.payload.bytes_received) / tokens,
            "rpc_round_trips": self.payload.round_trips,
            "server_compute_ms": self.payload.server_compute_ms,
            "mean_batch_size": self.mode_counters["batch_size_sum"] / batched if batched else None,
        }


class ConcurrentSessions:
    """N sessions of one flavour, each with its own connection and mode, stepping in threads of one process.

    `prefill` runs every session's prompt (one after another); `decode_round` then lets all of them
    decode `steps` tokens at once and release their caches, and reports what that took.
    """

    def __init__(self, flavour: str, prompts: list[list[int]], base: ModeContext, connect):
        self.mode_class = flavour_class(flavour)
        self.prompts = prompts
        self.contexts: list[ModeContext] = []
        self.modes: list[Mode] = []
        self.pool = ThreadPoolExecutor(max_workers=len(prompts), thread_name_prefix="semgap-session")
        self.prefilled: list[tuple[int, object]] = []
        try:
            for _ in prompts:
                # The run's context (model, techniques, sampler, weights handle) on a connection of its own;
                # the client's local Engine stays the run's.
                context = replace(base, transport=transport.CountingTransport(connect()), engine=None)
                self.contexts.append(context)
                mode = self.mode_class(context)
                mode.setup()
                self.modes.append(mode)
        except BaseException:
            self.close()
            raise

    @property
    def lossless(self) -> bool:
        return self.modes[0].lossless

    @property
    def role(self) -> str:
        return self.mode_class.role

    @property
    def fixed_decode_path(self) -> str | None:
        return self.mode_class.fixed_decode_path

    def prefill(self) -> None:
        for mode, prompt in zip(self.modes, self.prompts):
            self.prefilled.append(generate.prefill(mode, prompt))

    def decode_round(self, steps: int) -> ConcurrentRound:
        before = [context.counter.snapshot() for context in self.contexts]
        counters_before = [mode.counters() for mode in self.modes]
        start = time.perf_counter()
        try:
            sessions = list(self.pool.map(lambda index: self._decode(index, steps), range(len(self.modes))))
        finally:
            self.prefilled = []  # released by their threads
        wall_ms = (time.perf_counter() - start) * 1e3
        payload = transport.PayloadCounter()
        for context, snapshot in zip(self.contexts, before):
            for name, value in asdict(context.counter.since(snapshot)).items():
                setattr(payload, name, getattr(payload, name) + value)
        counters: dict[str, float] = {}
        for mode, previous in zip(self.modes, counters_before):
            for name, value in mode.counters().items():
                counters[name] = counters.get(name, 0) + value - previous.get(name, 0)
        return ConcurrentRound(wall_ms, sessions, payload, counters)

    def _decode(self, index: int, steps: int) -> SessionRound:
        (first_token, state), timed = self.prefilled[index], _TimedSteps(self.modes[index])
        mode = self.modes[index]
        try:
            tokens, state = generate.decode_n_tokens(timed, first_token, state, steps,
                                                   position=len(self.prompts[index]))
        except BaseException:
            # Release also after a failed step (a batched session left live would hold up every later batch),
            # but where the connection still works, and never in place of the step's error: that is the cause.
            if not mode.context.transport.inner.broken:
                with contextlib.suppress(Exception):
                    mode.release(state)
            raise
        mode.release(state)
        return SessionRound(tokens, timed.step_ms)

    def close(self) -> None:
        """Release caches prefilled for a round that never ran (a live batched session holds up every batch
        for the window), then close the connections."""
        self.pool.shutdown(wait=True)
        for mode, (_, state) in zip(self.modes, self.prefilled):
            if not mode.context.transport.inner.broken:
                mode.release(state)
        for context in self.contexts:
            context.transport.close()
