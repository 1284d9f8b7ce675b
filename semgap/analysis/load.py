"""Load warnings: the blocks that ran while the machine was busier than its cores, or had CPU stolen, and
the verdicts they fed (pure, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from semgap.analysis.measurements import CaseRecord

#: CPU steal above this share of a block's time makes its latencies suspect, as load above the core count does.
STEAL_WARN_PCT = 10.0


@dataclass(frozen=True)
class LoadWarning:
    """A block that ran with load above the core count or high CPU steal, and the H2 verdicts it fed."""

    block: int
    max_load_avg_1m: float | None
    cores: int | None
    max_cpu_steal_pct: float | None
    reason: str
    verdicts: list[str]


def loaded_blocks(cases: Sequence[CaseRecord], cores: int | None) -> dict[int, tuple[float | None, float | None, str]]:
    """Blocks where some item's 1-minute load exceeded ``cores`` or its CPU steal exceeded STEAL_WARN_PCT."""
    per_block: dict[int, list] = {}
    for case in cases:
        for index, block in case.blocks.items():
            per_block.setdefault(index, []).append(block)
    out = {}
    for index, blocks in sorted(per_block.items()):
        loads = [b.load_avg_1m for b in blocks if b.load_avg_1m is not None]
        steals = [b.cpu_steal_pct for b in blocks if b.cpu_steal_pct is not None]
        top_load, top_steal = (max(loads) if loads else None), (max(steals) if steals else None)
        reasons = []
        if cores and top_load is not None and top_load > cores:
            reasons.append(f"load {top_load:.2f} > {cores} cores")
        if top_steal is not None and top_steal > STEAL_WARN_PCT:
            reasons.append(f"CPU steal {top_steal:.1f} % > {STEAL_WARN_PCT:g} %")
        if reasons:
            out[index] = (top_load, top_steal, "; ".join(reasons))
    return out


def load_warnings(flagged: dict, cores: int | None, verdicts: Sequence[tuple[str, Sequence[int]]]) -> list[LoadWarning]:
    """One warning per flagged block (`loaded_blocks`), naming the verdicts, given as (name, their blocks), it fed."""
    return [LoadWarning(index, load, cores, steal, reason, [name for name, blocks in verdicts if index in blocks])
            for index, (load, steal, reason) in flagged.items()]
