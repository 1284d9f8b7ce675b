"""How a session's KV cache reaches the server that decodes next: one small class per way, blind or semantic.

A strategy's `recover` runs once the cache must move: in `eviction` the server must drop it and
restore it (source and target are the same server), in `migration` the session moves to a second
server. It returns the handle of the recovered cache on the target. What crosses the network is
only what the strategy's requests carry, so the strategies differ in one method.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from semgap.wire import names
from semgap.wire import codec

from semgap.client import generate
from semgap.client.modes.remote_cache import RemoteCacheMode


class ResidentSteps(RemoteCacheMode):
    """The decode steps around a recovery, on one server: remote_cache's residency and its whole logits back.

    Lossless, so the tokens after a recovery can be compared with `local`'s exactly. Its steps are the
    round's untimed setup and teardown: only the recovery between them is measured.
    """

    name = "resident_steps"


@dataclass
class SessionState:
    """A session at the moment its cache must move, as the client knows it."""

    kv_handle: str  # the cache on the source server
    cached_ids: list[int]  # the token ids whose keys and values the cache holds: the prompt, then every token fed
    next_token: int  # sampled from the last logits, not yet fed
    synced_handle: str = ""  # a cache on the target of the first `synced_positions` ids (strategies that sync)
    synced_positions: int = 0


def begin_session(source: ResidentSteps, target: ResidentSteps, prompt: list[int], decode_steps: int,
                  syncs_prompt: bool) -> SessionState:
    """Prefill `prompt` on the source and decode `decode_steps` tokens there: the session whose cache must move.

    With `syncs_prompt`, the target received the prompt's cache when the session began (a replicated prefix).
    """
    first, handle = generate.prefill(source, prompt)
    tokens, handle = generate.decode_n_tokens(source, first, handle, decode_steps, position=len(prompt))
    fed = [first, *tokens]
    state = SessionState(handle, [*prompt, *fed[:-1]], fed[-1])
    if syncs_prompt:
        _, state.synced_handle = generate.prefill(target, prompt)
        state.synced_positions = len(prompt)
    return state


def continue_after(target: ResidentSteps, state: SessionState, recovered_handle: str, decode_steps: int) -> list[int]:
    """Decode `decode_steps` tokens on the target from the recovered cache, then release it; the tokens."""
    tokens, handle = generate.decode_n_tokens(target, state.next_token, recovered_handle, decode_steps,
                                              position=len(state.cached_ids))
    target.release(handle)
    return tokens


class Strategy(ABC):
    """One way to recover a cache; `role` is "blind" (moves opaque bytes) or "semantic" (knows it is a KV cache)."""

    name: ClassVar[str]
    role: ClassVar[str]
    # Whether the recovered cache holds exactly the source's bytes. Recomputing a cache in one batched
    # forward rounds differently from the one-token steps that built it, so those are not.
    lossless: ClassVar[bool]
    # Whether the target holds the prompt's cache from when the session began (a replicated prefix):
    # only the positions since then must move. Migration only: an evicted cache has nowhere to be synced.
    syncs_prompt: ClassVar[bool] = False

    @abstractmethod
    def recover(self, source: ResidentSteps, target: ResidentSteps, state: SessionState) -> str: ...


class FullCache(Strategy):
    """An opaque runtime: the whole cache, in the model's dtype, leaves the source and is shipped to the target."""

    name, role, lossless = "full_cache", "blind", True

    def recover(self, source, target, state):
        rows, _ = source.call(names.KV_EXPORT, {}, {names.KV_HANDLE: state.kv_handle, names.RELEASE_AFTER: "1"})
        _, meta = target.call(names.KV_IMPORT, rows, {names.WEIGHTS_HANDLE: target.weights_handle})
        return meta[names.KV_HANDLE]


class Recompute(Strategy):
    """The cache is dropped; the client, which holds every token id, sends them (int32) and the target recomputes."""

    name, role, lossless = "recompute", "semantic", False

    def recover(self, source, target, state):
        source.call(names.RELEASE, {}, {names.KV_HANDLE: state.kv_handle})
        _, meta = target.call(names.KV_EXTEND, {names.INPUT_IDS: _ids(state.cached_ids)},
                              {names.WEIGHTS_HANDLE: target.weights_handle})
        return meta[names.KV_HANDLE]


class RecomputeSinceSync(Strategy):
    """The target holds the prompt's cache: only the tokens fed since are sent and recomputed on top of it."""

    name, role, lossless, syncs_prompt = "recompute_since_sync", "semantic", False, True

    def recover(self, source, target, state):
        source.call(names.RELEASE, {}, {names.KV_HANDLE: state.kv_handle})
        _, meta = target.call(names.KV_EXTEND, {names.INPUT_IDS: _ids(state.cached_ids[state.synced_positions:])},
                              {names.WEIGHTS_HANDLE: target.weights_handle, names.BASE_HANDLE: state.synced_handle})
        return meta[names.KV_HANDLE]


class KvSinceSync(Strategy):
    """The target holds the prompt's cache: only the keys and values since then cross, zstd-compressed, exact."""

    name, role, lossless, syncs_prompt = "kv_since_sync", "semantic", True, True

    def recover(self, source, target, state):
        rows, _ = source.call(names.KV_EXPORT, {}, {names.KV_HANDLE: state.kv_handle, names.RELEASE_AFTER: "1", names.COMPRESS: "1",
                                                names.SINCE: str(state.synced_positions)})
        _, meta = target.call(names.KV_IMPORT, rows, {names.WEIGHTS_HANDLE: target.weights_handle,
                                                  names.BASE_HANDLE: state.synced_handle}, zstd_level=codec.ZSTD_LEVEL)
        return meta[names.KV_HANDLE]


def _ids(token_ids: list[int]) -> torch.Tensor:
    return torch.tensor([token_ids], dtype=torch.int32)  # [batch=1, tokens]


STRATEGIES: dict[str, type[Strategy]] = {
    strategy.name: strategy for strategy in (FullCache, Recompute, RecomputeSinceSync, KvSinceSync)
}
# Which strategies apply where: an evicted cache was synced nowhere.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "eviction": tuple(name for name, strategy in STRATEGIES.items() if not strategy.syncs_prompt),
    "migration": tuple(STRATEGIES),
}


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown KV recovery strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
