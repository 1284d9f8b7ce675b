"""The program every mode runs: what a prefill computes, and (with the sampler) what a step reads back.

`generate` is what transformers' generate() runs: the prompt's forward asks for the last position's
logits only (`logits_to_keep=1`), and the sampler reads what it needs where the logits are (greedy:
the argmax on that device, one id; top-k and top-p: the last row). `full-logits` is the workload semgap
measured before: every prompt position's logits come out of the prefill, as a runtime that does not
know which rows its caller reads would ship them.
"""
from __future__ import annotations

from dataclasses import dataclass

GENERATE = "generate"
FULL_LOGITS = "full-logits"
PROGRAMS = (GENERATE, FULL_LOGITS)


@dataclass(frozen=True)
class Program:
    name: str = GENERATE

    def __post_init__(self) -> None:
        if self.name not in PROGRAMS:
            raise ValueError(f"unknown program {self.name!r}; choose from {', '.join(PROGRAMS)}")

    @property
    def logits_to_keep(self) -> int:
        """Prompt positions whose logits a prefill computes: 1 (the last), or 0 for every one (transformers' convention)."""
        return 1 if self.name == GENERATE else 0

    def __str__(self) -> str:
        return self.name


GENERATE_PROGRAM = Program()
