"""H2's sequential design applied to a run: its looks, and the headline verdicts they decide (pure).

The statistics and the stopping rule are :mod:`semgap.analysis.sequential`'s. This module selects the
data: each H2 headline's candidate and blind baselines, their block medians in block order. The
plugin calls :func:`evaluate` while the run goes (to stop it), and :func:`semgap.analysis.verdicts.compute`
calls it again on the saved JSON, so the report's looks are the run's.

A headline is judged by the looks when it has its candidate and at least one blind baseline, every
one of them lossless-valid (no failed token check) and the candidate not LOSSY; any other keeps the
verdict the fixed rules give it (INVALID, LOSSY, INCONCLUSIVE for a missing side), and does not hold
the run open.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from semgap.analysis import sequential, stats
from semgap.analysis.headlines import Headline
from semgap.analysis.measurements import CaseRecord, blind_baselines
from semgap.schema import CANDIDATE_LABEL

GroupKey = tuple  # (model, phase, link_rate, decode_steps)
DECIDED = "every H2 headline decided"
MAX_BLOCKS = "max blocks reached"


@dataclass(frozen=True)
class HeadlineLook:
    """One headline at one look: its p-values (raw and Holm over the headlines open there) and decision."""

    model: str
    phase: str
    link_rate: str | None
    decode_steps: int
    p_for: float
    holm_for: float
    p_against: float
    holm_against: float
    decision: str | None  # SUPPORTED or NOT SUPPORTED when this look decided it, else None


@dataclass(frozen=True)
class Look:
    look: int  # 1-based
    blocks: int
    alpha: float  # this look's share of alpha
    headlines: tuple[HeadlineLook, ...]
    still_open: int  # headlines left undecided after this look


@dataclass(frozen=True)
class Outcome:
    """The design's looks over a run so far, and where it stopped (None: it goes on)."""

    design: dict
    looks: tuple[Look, ...]
    stopped_after_blocks: int | None
    stop_reason: str | None
    decisions: dict  # GroupKey -> (verdict, look index or None)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"design": self.design, "looks": [asdict(look) for look in self.looks],
                "stopped_after_blocks": self.stopped_after_blocks, "stop_reason": self.stop_reason}


def design_of(meta: Mapping, alpha: float) -> sequential.Design | None:
    """The sequential design a run's `semgap` section records, spending `alpha` (the report may judge at
    another alpha than the run did: each look's share scales with it), or None for a fixed number of blocks."""
    saved = meta.get("design") if isinstance(meta.get("design"), Mapping) else {}
    if saved.get("kind") != "sequential":
        return None
    scale = alpha / float(saved["alpha"])
    return sequential.Design(tuple(saved["looks"]), tuple(a * scale for a in saved["alphas"]),
                             int(saved["max_blocks"]), alpha)


def judged(group: Mapping[str, CaseRecord], min_agreement: float) -> list[str]:
    """The blind baselines a group's H2 headline is judged against by the looks; [] when the looks leave it be."""
    candidate = group.get(CANDIDATE_LABEL)
    baselines = blind_baselines(group)
    if candidate is None or not baselines or candidate.invalid or any(group[b].invalid for b in baselines):
        return []
    agreement = candidate.token_agreement
    return [] if agreement is not None and agreement < min_agreement else baselines


def _medians(case: CaseRecord, blocks: int) -> np.ndarray:
    out = np.full(blocks, np.nan)
    for index, block in case.blocks.items():
        if index < blocks and block.latency_s:
            out[index] = stats.median(block.latency_s)
    return out


def evaluate(groups: Mapping[GroupKey, Mapping[str, CaseRecord]], design: sequential.Design, h2: float,
             min_agreement: float, blocks_run: int | None = None) -> Outcome:
    """The looks whose blocks have all run (``blocks_run``: the blocks started so far, default all there are)."""
    present = max((i + 1 for group in groups.values() for case in group.values() for i in case.blocks), default=0)
    blocks = min(design.max_blocks, present if blocks_run is None else blocks_run)
    pairs = {key: [(_medians(group[CANDIDATE_LABEL], blocks), _medians(group[b], blocks)) for b in baselines]
             for key, group in groups.items() for baselines in [judged(group, min_agreement)] if baselines}
    keys, d = sequential.differences(pairs, h2, blocks)
    result = sequential.run_looks(design, d)
    looks = []
    taken = result.p_for.shape[1] if result.stopped_at[0] < 0 else int(result.stopped_at[0]) + 1
    for k in range(taken):  # none after the look the run stopped at
        entries = tuple(HeadlineLook(*key, float(result.p_for[0, k, h]), float(result.holm_for[0, k, h]),
                                     float(result.p_against[0, k, h]), float(result.holm_against[0, k, h]),
                                     result.decision[0, h] if result.decided_at[0, h] == k else None)
                        for h, key in enumerate(keys))
        still_open = sum(1 for h in range(len(keys)) if not 0 <= result.decided_at[0, h] <= k)
        looks.append(Look(k + 1, design.looks[k], design.alphas[k], entries, still_open))
    stopped = int(result.stopped_at[0]) if keys else (0 if design.looks[0] <= blocks else -1)
    if stopped >= 0 and (not looks or looks[stopped].still_open == 0):
        reason, after = DECIDED, design.looks[stopped]
    elif stopped >= 0 and design.looks[stopped] == design.max_blocks:
        reason, after = MAX_BLOCKS, design.max_blocks
    else:
        reason, after = None, None
    decisions = {key: (result.decision[0, h], int(result.decided_at[0, h]) if result.decided_at[0, h] >= 0 else None)
                 for h, key in enumerate(keys)}
    return Outcome(design.to_dict(), tuple(looks), after, reason, decisions)


def apply(headlines: Sequence[Headline], outcome: Outcome) -> list[Headline]:
    """The H2 headlines with the verdicts the looks gave them; the fixed rules' stand for the others."""
    out = []
    for h in headlines:
        decided = outcome.decisions.get(h.group_key)
        if h.hypothesis != "H2" or decided is None or not outcome.looks:
            out.append(h)
            continue
        verdict, at = decided
        last = outcome.looks[-1] if at is None else outcome.looks[at]
        entry = next(e for e in last.headlines if (e.model, e.phase, e.link_rate, e.decode_steps) == h.group_key)
        where = f"look {last.look} of {len(outcome.design['looks'])} ({last.blocks} blocks)"
        if verdict == stats.SUPPORTED:
            reason = (f"sequential design, {where}: headline p={entry.p_for:.2g}, Holm {entry.holm_for:.2g} "
                      f"< this look's alpha {last.alpha:.3g}")
        elif verdict == stats.NOT_SUPPORTED:
            reason = (f"sequential design, {where}: p(reduction >= {h.threshold:.0%}) over the baselines "
                      f"{entry.p_against:.2g}, Holm {entry.holm_against:.2g} < this look's alpha {last.alpha:.3g}")
        else:
            ending = "the run was cut short" if outcome.stop_reason is None else "at the last look"
            reason = (f"undecided after {where}, {ending}: p={entry.holm_for:.2g} and "
                      f"p(reduction >= {h.threshold:.0%})={entry.holm_against:.2g}, neither < {last.alpha:.3g}")
        out.append(replace(h, verdict=verdict, reason=reason, p_holm=entry.holm_for))
    return out
