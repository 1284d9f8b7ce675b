"""`semantic`: remote_cache's residency plus what knowing the tensors' meaning allows."""
from __future__ import annotations

import torch

from semgap.codec import LogitsOptions
from semgap.modes.remote_cache import RemoteCacheMode


class SemanticMode(RemoteCacheMode):
    """Differs from remote_cache only in how ids go out and logits come back (see SemanticOptions)."""

    name = "semantic"
    role = "semantic"

    def logits_options(self) -> LogitsOptions:
        options = self.context.semantic
        return LogitsOptions(options.prune, "float16" if options.cast else "", options.compress)

    @property
    def lossless(self) -> bool:
        return self.context.semantic.lossless

    def ids(self, token_ids: list[int]) -> torch.Tensor:
        return torch.tensor([token_ids], dtype=torch.int32 if self.context.semantic.narrow_ids else torch.long)
