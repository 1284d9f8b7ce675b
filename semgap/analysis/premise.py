"""The premise of H2, checked in every run: each remote mode's server computes a step as fast as `local` does.

H2 asks whether moving fewer bytes makes a request faster. That reading holds only where the two sides of
a comparison compute alike: if a server's forward is slower than the client's own (two processes on two
shared cores, another thread count), part of a latency difference is the CPU, not the wire. The check
compares, per group (model, phase, link rate, decode length), local's time per step (its round time:
it has no network) with each remote mode's server compute per step (what the server timed around its
forwards). Pure, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from semgap.analysis import stats
from semgap.analysis.measurements import CaseRecord

#: How far a server's compute per step may stray from local's before the report warns.
TOLERANCE = 0.10


@dataclass(frozen=True)
class ComputeCheck:
    model: str
    phase: str
    link_rate: str | None
    decode_steps: int
    label: str
    local_ms_per_step: float
    server_ms_per_step: float | None  # None: the mode's server timed nothing (JSON from before the field)

    @property
    def ratio(self) -> float | None:
        """Server compute per step over local's: 1.0 is equal compute."""
        return None if self.server_ms_per_step is None else self.server_ms_per_step / self.local_ms_per_step

    @property
    def within(self) -> bool | None:
        return None if self.ratio is None else abs(self.ratio - 1.0) <= TOLERANCE

    def warning(self) -> str:
        return (f"premise of H2: {self.label}'s server computes a {self.phase} step in {self.server_ms_per_step:.2f} ms, "
                f"local in {self.local_ms_per_step:.2f} ms ({self.ratio - 1:+.0%}, beyond ±{TOLERANCE:.0%}): its "
                "latency difference is not the wire alone")


def compute_checks(cases: Sequence[CaseRecord]) -> list[ComputeCheck]:
    """One check per remote case whose group has a `local` row (no local row: nothing to compare with)."""
    groups: dict[tuple, list[CaseRecord]] = {}
    for case in cases:
        groups.setdefault(case.group_key, []).append(case)
    checks = []
    for group in groups.values():
        local = next((case for case in group if case.role == "local"), None)
        if local is None:
            continue
        local_ms = stats.blocked_median(local.latency_blocks()) * 1e3 / _steps(local)
        for case in group:
            if case.role == "local":
                continue
            server_ms = case.server_compute_ms
            checks.append(ComputeCheck(case.model, case.phase, case.link_rate, case.decode_steps, case.label, local_ms,
                                       None if server_ms is None else server_ms / _steps(case)))
    return checks


def _steps(case: CaseRecord) -> int:
    """Forwards in one round: one for a prefill, one per decoded token for a decode round."""
    return case.decode_steps if case.phase == "decode" and case.decode_steps else 1
