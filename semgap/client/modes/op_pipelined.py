"""`op_pipelined`: op_sync with ops queued and posted in batches, many outstanding; only reads wait."""
from __future__ import annotations

from semgap.client.modes.op_sync import OpSyncMode


class OpPipelinedMode(OpSyncMode):
    """As a remoting layer with asynchronous launches: a read (`.cpu()`, `.item()`, a branch on a value) flushes."""

    name = "op_pipelined"
    pipelined = True
