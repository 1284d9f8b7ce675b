"""The execution modes, by name: a new mode is a new module plus one line here."""
from __future__ import annotations

from semgap.client.modes.base import Mode, ModeContext
from semgap.client.modes.local import LocalMode
from semgap.client.modes.naive import NaiveMode
from semgap.client.modes.op_pipelined import OpPipelinedMode
from semgap.client.modes.op_replay import OpReplayMode
from semgap.client.modes.op_sync import OpSyncMode
from semgap.client.modes.remote_cache import RemoteCacheMode
from semgap.client.modes.semantic import SemanticMode

MODES: dict[str, type[Mode]] = {
    "local": LocalMode,
    "naive": NaiveMode,
    "remote_cache": RemoteCacheMode,
    "semantic": SemanticMode,
    "op_sync": OpSyncMode,
    "op_pipelined": OpPipelinedMode,
    "op_replay": OpReplayMode,
}
PHASES = ("prefill", "decode")


def make_mode(name: str, context: ModeContext) -> Mode:
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose from {', '.join(MODES)}")
    return MODES[name](context)


__all__ = ["MODES", "PHASES", "Mode", "ModeContext", "make_mode"]
