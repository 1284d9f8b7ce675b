"""Semantic batching on the server: concurrent sessions' decode steps run as one batched forward.

A runtime that knows a request is "one decode step of session S of this model" can hold it for a
moment and step every live session together, as serving engines do (continuous batching). The
operations here (`batch_prefill`, `batch_decode`, `batch_release`) are that runtime:

- **Collecting.** A `batch_decode` waits until every live session (prefilled, not released) has a
  step pending, or until `window_s` has passed since the first pending step arrived; whichever
  waiting request sees that first runs the batch, the others wake with their answers.
- **Aligned caches, no padding.** Steps batch together only when their caches hold the same number
  of positions; a batch with several lengths runs one forward per length. So the forward needs no
  attention mask and every row computes what a batch of one would (the benchmark's sessions share
  a prompt length, so they align). Padding with masks would let ragged sessions share a forward, at
  the price of computing the padding.
- **Cohorts.** The sessions of one forward keep their caches stacked ([sessions, heads, seq,
  head_dim] per layer) while they go on stepping together: the next step reuses the stacked cache
  as it is. Only when the set of sessions changes are their rows gathered into a new stack.

Caches here are always dynamic (eager), whatever the server's `--fast-path`: the batch size
changes with the sessions, and a captured CUDA graph has one shape.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch

from semgap.wire import names
from semgap.wire import codec
from semgap.model.runtime import StepOutput, cache_to_tensors, forward, stopwatch, tensors_to_cache
from semgap.server.semantic import SemanticSessions

DEFAULT_WINDOW_S = 0.05  # how long the first pending step waits for the other live sessions'
MAX_SESSIONS = 256  # live batched sessions; a prefill beyond this is refused


@dataclass
class Cohort:
    """Sessions whose caches are stacked in one cache, row i holding `handles[i]`."""

    handles: list[str]
    cache: object  # a transformers DynamicCache, batch = len(handles)
    live: set[str] = field(default_factory=set)  # handles not released yet

    def __post_init__(self):
        self.live = set(self.handles)

    @property
    def positions(self) -> int:
        return int(self.cache.layers[0].keys.shape[-2])

    def row(self, handle: str) -> dict[str, torch.Tensor]:
        index = self.handles.index(handle)
        return {name: tensor[index:index + 1] for name, tensor in cache_to_tensors(self.cache).items()}


@dataclass
class PendingStep:
    handle: str
    input_id: torch.Tensor  # [1]: the session's last token
    arrived_s: float
    logits: torch.Tensor | None = None  # [1, vocab], set by the batch that ran it
    batch_size: int = 0
    compute_ms: float = 0.0
    error: BaseException | None = None


class DecodeBatcher:
    """The batching runtime's state: which cohort holds each session, and the steps waiting to run."""

    def __init__(self, model: torch.nn.Module, run_exclusive: Callable, check_weights: Callable[[dict], None],
                 semantic: SemanticSessions, blind_respond: Callable[..., bytes], window_s: float = DEFAULT_WINDOW_S):
        self.model = model
        self.device = next(model.parameters()).device
        self.run_exclusive = run_exclusive  # runs a function with the server's model to itself
        self.check_weights = check_weights
        self.semantic = semantic  # the server's semantic sessions: a batched session answers through its techniques
        self.blind_respond = blind_respond  # (logits, compute_ms, **extra) -> every logit, for a session without techniques
        self.window_s = window_s
        self.cohort_of: dict[str, Cohort] = {}
        self.pending: dict[str, PendingStep] = {}
        self.condition = threading.Condition()
        # They wait for other sessions, so the server calls them outside its lock (ModelServer.handle).
        self.operations = {
            names.BATCH_PREFILL: self.prefill,
            names.BATCH_DECODE: self.decode,
            names.BATCH_RELEASE: self.release,
        }

    def prefill(self, tensors, meta) -> bytes:
        """Run one session's prompt (alone); its cache starts a cohort of one."""
        self.check_weights(meta)
        handle = uuid.uuid4().hex
        # a bad `techniques` field fails before any compute; a refused session leaves none behind
        with self.semantic.opening(handle, meta, tensors[names.INPUT_IDS]):
            step, compute_ms = self.run_exclusive(self._forward, tensors[names.INPUT_IDS].long().to(self.device))
            with self.condition:
                if len(self.cohort_of) >= MAX_SESSIONS:
                    raise RuntimeError(f"{MAX_SESSIONS} batched sessions are live already; release some first")
                self.cohort_of[handle] = Cohort([handle], step.cache)
        return self._respond(handle, step.logits, compute_ms, prefill=True, batch_size="1")

    def decode(self, tensors, meta) -> bytes:
        """One decode step of one session, run in a batch with the other live sessions' steps."""
        handle = meta.get(names.KV_HANDLE, "")
        tensors = self.semantic.decode_request(handle, tensors, meta)
        step = PendingStep(handle, tensors[names.INPUT_IDS].reshape(-1)[-1:].long(), time.perf_counter())
        with self.condition:
            self._check_handle(handle)
            if handle in self.pending:
                raise RuntimeError(f"session {handle!r} sent a decode step before its previous one was answered")
            self.pending[handle] = step
            self.condition.notify_all()
            while step.logits is None and step.error is None:
                waited_s = time.perf_counter() - min(s.arrived_s for s in self.pending.values())
                if self.pending.keys() >= self.cohort_of.keys() or waited_s >= self.window_s:
                    self._run_pending()
                else:
                    self.condition.wait(self.window_s - waited_s)
        if step.error is not None:
            raise step.error
        return self._respond(handle, step.logits, step.compute_ms, prefill=False, batch_size=str(step.batch_size))

    def release(self, tensors, meta) -> bytes:
        handle = meta.get(names.KV_HANDLE, "")
        with self.condition:
            self._check_handle(handle)
            if handle in self.pending:
                raise RuntimeError(f"session {handle!r} is released while its decode step waits")
            cohort = self.cohort_of.pop(handle)
            cohort.live.discard(handle)
            self.condition.notify_all()  # one fewer live session: a waiting batch may be complete now
        return codec.encode({}, self.semantic.close(handle))

    def _respond(self, handle: str, logits: torch.Tensor, compute_ms: float, prefill: bool, **extra: str) -> bytes:
        """A step's answer: through the session's techniques, or every logit for a session without any."""
        if handle in self.semantic:
            return self.semantic.respond(handle, logits, compute_ms, prefill, **extra)
        return self.blind_respond(logits, compute_ms, **({names.KV_HANDLE: handle} if prefill else {}), **extra)

    def _check_handle(self, handle: str) -> None:
        if handle not in self.cohort_of:
            raise KeyError(f"unknown batched session {handle!r}: it was released or the server restarted")

    def _run_pending(self) -> None:
        """Run every pending step, one forward per cache length; answer each step (under the condition)."""
        steps, self.pending = list(self.pending.values()), {}
        by_length: dict[int, list[PendingStep]] = {}
        for step in steps:
            by_length.setdefault(self.cohort_of[step.handle].positions, []).append(step)
        for group in by_length.values():
            try:
                self._run_group(group)
            except Exception as error:  # every session of the batch hears of it; the server goes on
                for step in group:
                    step.error = error
        self.condition.notify_all()

    def _run_group(self, group: list[PendingStep]) -> None:
        cohort = self._cohort_for([step.handle for step in group])
        by_handle = {step.handle: step for step in group}
        # input_ids: [sessions, 1], in the cohort's row order
        input_ids = torch.stack([by_handle[handle].input_id for handle in cohort.handles]).to(self.device)
        output, compute_ms = self.run_exclusive(self._forward, input_ids, cohort.cache)
        cohort.cache = output.cache
        for row, handle in enumerate(cohort.handles):
            step = by_handle[handle]
            # Each answer carries its share of the forward, so the sessions' server times add up to it.
            step.logits, step.batch_size, step.compute_ms = output.logits[row:row + 1, -1:], len(group), (
                compute_ms / len(group))

    def _forward(self, input_ids: torch.Tensor, cache: object | None = None) -> tuple[StepOutput, float]:
        """One forward and its time (ms), timed where it has the model to itself, not while it waits for it."""
        with stopwatch(self.device) as timing:
            step = forward(self.model, input_ids, cache)
        return step, timing["ms"]

    def _cohort_for(self, handles: list[str]) -> Cohort:
        """The cohort holding exactly these sessions, stacking their rows into a new one if none does."""
        current = self.cohort_of[handles[0]]
        if set(current.handles) == set(handles) and current.live == set(handles):
            return current
        rows = [self.cohort_of[handle].row(handle) for handle in handles]
        stacked = tensors_to_cache({name: torch.cat([row[name] for row in rows]) for name in rows[0]})
        cohort = Cohort(list(handles), stacked)
        for handle in handles:
            self.cohort_of[handle].live.discard(handle)
            self.cohort_of[handle] = cohort
        return cohort

