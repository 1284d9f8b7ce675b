"""H2's sequential design: blocks are added until every headline is decided (pure; no I/O).

A fixed number of blocks leaves H2 INCONCLUSIVE or flipping between runs whenever the effect is near the
threshold: 10 blocks gave a true 25 % reduction (threshold 15 %) SUPPORTED in 26-56 % of runs. Here the
run looks at its blocks after ``first_look`` blocks and every ``every`` blocks after, up to ``max_blocks``,
and stops at the first look where every H2 headline is decided.

**Test at a look.** For each headline still open, and each blind baseline b, the paired per-block
differences ``d = log(candidate block median / baseline block median) - log(1 - threshold)`` of the
blocks so far give two one-sided Wilcoxon signed-rank p-values, as the fixed design's
(:func:`semgap.analysis.stats.signed_rank_rows`):
"less" (against "reduction <= threshold") and "greater" (against "reduction >= threshold").
- SUPPORTED needs the claim against every baseline: the intersection-union p is the largest "less" p.
- NOT SUPPORTED needs the claim to fail against some baseline: the smallest "greater" p, times the
  number of baselines (Bonferroni over the baselines).
- Each of the two is Holm-adjusted over the headlines still open at that look, and compared with that
  look's share of alpha, ``alpha_k``. A headline decided at a look keeps its verdict; the run stops
  when none is open. At the last look, an open headline is INCONCLUSIVE.

**Alpha spending.** ``alpha_k = a(t_k) - a(t_{k-1})`` with the Lan-DeMets Pocock-type function
``a(t) = alpha ln(1 + (e - 1) t)``, ``t_k = blocks at look k / max_blocks`` (Lan and DeMets 1983). The
looks' shares sum to alpha, and each look is a valid level-``alpha_k`` test, so by the union bound
the chance of any false SUPPORTED over all looks is at most alpha (and the same for NOT SUPPORTED),
whatever the correlation between looks. This is conservative (it ignores that looks share blocks),
which costs some power but needs no assumption about the statistic's joint distribution.

**Assumptions.** As for the fixed design (:func:`semgap.analysis.stats.threshold_test`): blocks are
independent given the drift they share, the order inside a block is shuffled, and the ``d`` are
symmetric about their centre. The look schedule is fixed before the run. The estimate and interval
a report shows beside the verdict are the fixed-sample ones on the blocks that ran: descriptive, not
adjusted for the looks (after early stopping they lean towards larger effects); the verdict comes
only from the spending rule above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from semgap.analysis import stats

FIRST_LOOK = 8  # blocks before the first look: 2**-8 = 0.004 lets the first look's share of alpha decide
LOOK_EVERY = 6
DEFAULT_MAX_BLOCKS = 26


@dataclass(frozen=True)
class Design:
    """When the run looks: after ``looks[k]`` blocks, with ``alphas[k]`` of alpha to spend there."""

    looks: tuple[int, ...]
    alphas: tuple[float, ...]
    max_blocks: int
    alpha: float

    @classmethod
    def plan(cls, max_blocks: int, alpha: float, first_look: int = FIRST_LOOK, every: int = LOOK_EVERY) -> "Design":
        if max_blocks < 1:
            raise ValueError("max_blocks must be at least 1")
        looks = [n for n in range(min(first_look, max_blocks), max_blocks, every)] + [max_blocks]
        spent = [alpha * math.log(1 + (math.e - 1) * n / max_blocks) for n in looks]
        alphas = [spent[0]] + [b - a for a, b in zip(spent, spent[1:])]
        return cls(tuple(looks), tuple(alphas), max_blocks, alpha)

    def to_dict(self) -> dict:
        return {"kind": "sequential", "looks": list(self.looks), "alphas": list(self.alphas),
                "max_blocks": self.max_blocks, "alpha": self.alpha, "spending": "Lan-DeMets Pocock-type, union bound"}


# ---------------------------------------------------------------- looks

def holm_rows(p: np.ndarray, open_: np.ndarray) -> np.ndarray:
    """Holm-adjusted p over the open entries of each row (``p``, ``open_`` shape ``[reps, H]``); closed: 1."""
    masked = np.where(open_, p, np.inf)
    order = np.argsort(masked, axis=1)
    sorted_p = np.take_along_axis(masked, order, axis=1)
    m = open_.sum(axis=1, keepdims=True)
    factor = np.maximum(m - np.arange(p.shape[1])[np.newaxis, :], 1)  # past the open ones: inf, set to 1 below
    adjusted = np.maximum.accumulate(np.minimum(1.0, np.where(np.isinf(sorted_p), 1.0, sorted_p * factor)), axis=1)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=1)
    return np.where(open_, out, 1.0)


@dataclass(frozen=True)
class Looks:
    """Every look of ``reps`` designs at once (a run is ``reps == 1``); arrays are ``[reps, looks, H]``."""

    design: Design
    p_for: np.ndarray  # the intersection-union p (largest "less" p over the baselines)
    p_against: np.ndarray  # the smallest "greater" p, times the number of baselines (capped at 1)
    holm_for: np.ndarray  # Holm over the headlines open at that look (1 where not open)
    holm_against: np.ndarray
    decision: np.ndarray  # [reps, H]: stats.SUPPORTED, NOT_SUPPORTED or INCONCLUSIVE
    decided_at: np.ndarray  # [reps, H]: the look that decided it, -1 if none
    stopped_at: np.ndarray  # [reps]: the last look the run took (every headline decided there, or the last)


def run_looks(design: Design, differences: np.ndarray, looks_available: int | None = None) -> Looks:
    """The design's looks over ``differences`` (shape ``[reps, H, B, blocks]``: per replicate, headline,
    baseline and block, the d of the module docstring, in block order; NaN for a baseline a headline lacks).

    Only the looks whose blocks are all present are taken (or the first ``looks_available``).
    """
    d = np.asarray(differences, dtype=float)
    reps, heads, _, blocks = d.shape
    takes = [k for k, n in enumerate(design.looks) if n <= blocks][:looks_available]
    shape = (reps, len(takes), heads)
    p_for, p_against = np.ones(shape), np.ones(shape)
    holm_for, holm_against = np.ones(shape), np.ones(shape)
    decision = np.full((reps, heads), stats.INCONCLUSIVE, dtype=object)
    decided_at = np.full((reps, heads), -1)
    stopped_at = np.full(reps, -1)
    present = ~np.isnan(d).all(axis=3)  # [reps, H, B]: the baselines each headline has
    n_baselines = present.sum(axis=2)
    for k in takes:
        n = design.looks[k]
        usable = ((~np.isnan(d[..., :n])).all(axis=3) | ~present).all(axis=2) & (n_baselines > 0)  # no block missing
        window = np.nan_to_num(d[..., :n], nan=1.0)
        less = np.where(present, stats.signed_rank_rows(window, "less"), -np.inf)
        greater = np.where(present, stats.signed_rank_rows(window, "greater"), np.inf)
        p_for[:, k] = np.where(n_baselines > 0, less.max(axis=2), 1.0)
        p_against[:, k] = np.minimum(1.0, greater.min(axis=2) * np.maximum(n_baselines, 1))
        open_ = (decided_at < 0) & usable & (stopped_at < 0)[:, np.newaxis]
        holm_for[:, k] = holm_rows(p_for[:, k], open_)
        holm_against[:, k] = holm_rows(p_against[:, k], open_)
        supported = open_ & (holm_for[:, k] < design.alphas[k])
        short = open_ & ~supported & (holm_against[:, k] < design.alphas[k])
        decision[supported], decision[short] = stats.SUPPORTED, stats.NOT_SUPPORTED
        decided_at[supported | short] = k
        running = stopped_at < 0
        done = running & ~((decided_at < 0) & (n_baselines > 0)).any(axis=1)
        stopped_at[done | (running & (k == takes[-1]))] = k
    return Looks(design, p_for, p_against, holm_for, holm_against, decision, decided_at, stopped_at)


def differences(pairs: Mapping[object, Sequence[tuple[np.ndarray, np.ndarray]]], threshold: float,
                blocks: int) -> tuple[list, np.ndarray]:
    """``(headline keys, d of shape [1, H, B, blocks])`` from each headline's (candidate, baseline) block
    medians, paired and in block order; a headline with fewer baselines is padded with NaN."""
    keys = list(pairs)
    width = max((len(v) for v in pairs.values()), default=0)
    d = np.full((1, len(keys), max(width, 1), blocks), np.nan)
    for h, key in enumerate(keys):
        for b, (candidate, baseline) in enumerate(pairs[key]):
            row = np.log(np.asarray(candidate, dtype=float)) - np.log(np.asarray(baseline, dtype=float))
            d[0, h, b, :min(blocks, row.size)] = row[:blocks] - math.log(1.0 - threshold)
    return keys, d
