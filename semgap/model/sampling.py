"""The one token sampler `local`'s generation loop and the server's token-returning techniques share.

Greedy takes the argmax where the logits are (runtime.greedy_token): only the token id reaches the
host (`Sampler.read` is what a sampler reads, the same in every mode). Seeded top-k and top-p draw from a generator seeded by the sampler's seed
and the position of the token being chosen, so a draw depends only on (logits row, seed, position):
a client and a server that hold the same logits row pick the same token, whichever of them samples.
Their math runs on the CPU in float64 from the row as float32, whatever device or dtype produced it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from semgap.model.runtime import greedy_token

KINDS = ("greedy", "top-k", "top-p")
_POSITION_STRIDE = 1_000_003  # a prime above any context length: (seed, position) pairs never share a seed


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen from the last position's logits: greedy, top-k or top-p."""

    kind: str = "greedy"
    top_k: int = 0  # top-k: candidates kept
    top_p: float = 1.0  # top-p: smallest prefix of the sorted distribution reaching this mass
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown sampler {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.kind == "top-k" and self.top_k < 1:
            raise ValueError(f"top-k needs k >= 1, got {self.top_k}")
        if self.kind == "top-p" and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p needs 0 < p <= 1, got {self.top_p}")

    @classmethod
    def parse(cls, text: str) -> "Sampler":
        """`greedy`, `top-k=K` or `top-p=P`, each optionally followed by `,seed=N` (default 0)."""
        first, *rest = [part.strip() for part in text.split(",")]
        kind, _, value = first.partition("=")
        settings = dict(part.partition("=")[::2] for part in rest)
        if set(settings) - {"seed"}:
            raise ValueError(f"unknown sampler setting in {text!r}; only seed=N follows the kind")
        if kind == "greedy" and value:
            raise ValueError(f"greedy takes no value, got {first!r}")
        try:
            seed = int(settings.get("seed", "0"))
            top_k = int(value) if kind == "top-k" else 0
            top_p = float(value) if kind == "top-p" else 1.0
        except ValueError:
            raise ValueError(f"cannot read sampler {text!r}: expected greedy, top-k=K or top-p=P, then ,seed=N") from None
        return cls(kind, top_k, top_p, seed)

    def __str__(self) -> str:
        if self.kind == "greedy":
            return "greedy" if self.seed == 0 else f"greedy,seed={self.seed}"
        value = self.top_k if self.kind == "top-k" else f"{self.top_p:g}"
        return f"{self.kind}={value},seed={self.seed}"

    def read(self, logits: torch.Tensor) -> int | torch.Tensor:
        """What the sampler reads from logits [..., vocab] where they are: greedy the argmax's id (taken on
        their device), top-k and top-p the last row, as float32 on the host."""
        if self.kind == "greedy":
            return greedy_token(logits)
        return logits.reshape(-1, logits.shape[-1])[-1].detach().float().cpu()

    def __call__(self, logits: torch.Tensor | int, position: int) -> int:
        """The token chosen at sequence `position` (the index the new token will have) from logits [..., vocab]
        wherever they are, or from what `read` read (an id is the choice itself)."""
        read = logits if isinstance(logits, int) else self.read(logits)
        if isinstance(read, int):
            return read
        row = read.double()
        if self.kind == "top-k":
            values, ids = row.topk(min(self.top_k, row.numel()))
        else:
            values, ids = row.sort(descending=True)
            probabilities = values.softmax(-1)
            # Keep the tokens whose preceding mass is below p: the smallest prefix that reaches p.
            keep = int(((probabilities.cumsum(-1) - probabilities) < self.top_p).sum())
            values, ids = values[:keep], ids[:keep]
        generator = torch.Generator().manual_seed(self.seed * _POSITION_STRIDE + position)
        pick = torch.multinomial(values.softmax(-1), 1, generator=generator)
        return int(ids[pick])


GREEDY = Sampler()
