"""Pure statistics for the semantic-gap hypotheses (no I/O, no globals).

Conventions used throughout:

* A *reduction* is ``1 - candidate / baseline``: 0.40 means the candidate needs
  40 % less than the baseline; a negative reduction means it needs more.
* A *ratio* is ``candidate / baseline``: 1.25 means 25 % more (a "tax").
* Latencies come in seconds (pytest-benchmark's raw ``stats.data``).
* A *block* is one pass of the interleaved design: every case of the run ran a
  few rounds in it, in a shuffled order. Latency inputs are per-block lists of
  round times, ``blocks[b] = [round, round, ...]``; two cases' blocks with the
  same index ran side by side, so they are *paired*.
* Verdict strings are ``SUPPORTED``, ``NOT SUPPORTED`` and ``INCONCLUSIVE``.

How to read a latency verdict (:func:`threshold_test` and
:func:`judge_threshold_test`): the unit is the block, not the round. Each
block gives one paired ratio ``median(candidate rounds) / median(baseline
rounds)``; anything that drifts between blocks (load, frequency, page cache)
multiplies both sides of a pair alike and cancels. SUPPORTED means a one-sided
signed-rank test rejects "the reduction is at most the threshold" and the
bootstrap interval over blocks lies above the threshold; NOT SUPPORTED means
the mirror test rejects "the reduction is at least the threshold" and the
interval lies below it; INCONCLUSIVE means neither (the interval straddles the
threshold, or too few blocks to ever reach alpha). INCONCLUSIVE is not
evidence either way: it calls for more blocks or a steadier machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import stats as _sps

SUPPORTED = "SUPPORTED"
NOT_SUPPORTED = "NOT SUPPORTED"
INCONCLUSIVE = "INCONCLUSIVE"

Blocks = Sequence[Sequence[float]]


@dataclass(frozen=True)
class Judgement:
    """A verdict and the one-sentence reason for it."""

    verdict: str
    reason: str


@dataclass(frozen=True)
class RatioInterval:
    """A ratio ``candidate/baseline`` with a bootstrap interval (``None`` when it cannot be had)."""

    ratio: float
    low: float | None
    high: float | None
    confidence: float
    n_candidate: int
    n_baseline: int


@dataclass(frozen=True)
class ThresholdTest:
    """Paired-block test of "the reduction exceeds ``threshold``" (see :func:`threshold_test`).

    ``p_value`` tests the null "reduction <= threshold" (small: evidence for the
    hypothesis); ``p_value_against`` tests the null "reduction >= threshold"
    (small: evidence against it). Both are ``None`` when ``powered`` is False,
    i.e. when ``min_attainable_p`` (``2**-n_blocks``) is not below alpha.
    ``block_reductions`` are the per-block reductions ``1 - ratio_b``.
    """

    estimate: float
    low: float | None
    high: float | None
    confidence: float
    threshold: float
    p_value: float | None
    p_value_against: float | None
    min_attainable_p: float
    powered: bool
    n_blocks: int
    block_reductions: tuple[float, ...]


def median(values: Sequence[float]) -> float:
    """Sample median (``numpy.median``); raises ``ValueError`` on empty input."""
    if len(values) == 0:
        raise ValueError("median of an empty sequence")
    return float(np.median(np.asarray(values, dtype=float)))


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (linear interpolation, numpy default)."""
    if len(values) == 0:
        raise ValueError("IQR of an empty sequence")
    q1, q3 = np.percentile(np.asarray(values, dtype=float), [25, 75])
    return float(q1), float(q3)


def block_medians(blocks: Blocks) -> np.ndarray:
    """The median of each block's rounds; every block needs at least one round."""
    if len(blocks) == 0 or any(len(block) == 0 for block in blocks):
        raise ValueError("every block needs at least one round")
    if len({len(block) for block in blocks}) == 1:  # the usual case: one median per row, at once
        return np.median(np.asarray(blocks, dtype=float), axis=1)
    return np.array([np.median(np.asarray(block, dtype=float)) for block in blocks])


def blocked_median(blocks: Blocks) -> float:
    """A case's figure: the median over its blocks of each block's median round."""
    return float(np.median(block_medians(blocks)))


def judge(low: float | None, high: float | None, threshold: float) -> Judgement:
    """Verdict for "the reduction is at least ``threshold``" from an interval.

    SUPPORTED when ``low >= threshold``; NOT SUPPORTED when ``high <
    threshold``; otherwise INCONCLUSIVE. For an exact (point) estimate pass
    ``low == high``. Missing bounds give INCONCLUSIVE.
    """
    if low is None or high is None:
        return Judgement(INCONCLUSIVE, "no interval (too few rounds or missing data)")
    if high < threshold:
        return Judgement(NOT_SUPPORTED, f"upper bound {high:.1%} < threshold {threshold:.0%}")
    if low >= threshold:
        return Judgement(SUPPORTED, f"lower bound {low:.1%} >= threshold {threshold:.0%}")
    return Judgement(INCONCLUSIVE, f"interval [{low:.1%}, {high:.1%}] straddles threshold {threshold:.0%}")


# ---------------------------------------------------------------- latency (H2) on blocks

def hodges_lehmann(values: Sequence[float]) -> float:
    """Hodges-Lehmann location: the median of all Walsh averages ``(x_i + x_j) / 2``, ``i <= j``.

    The estimator that goes with the signed-rank test: robust to one wild value
    (a block hit by a load spike) yet smoother than the plain median.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("Hodges-Lehmann of an empty sequence")
    return float(_walsh_medians(x[np.newaxis, :])[0])


def _walsh_medians(samples: np.ndarray) -> np.ndarray:
    """Hodges-Lehmann estimate of each row of ``samples`` (shape ``[resamples, n]``)."""
    i, j = np.triu_indices(samples.shape[1])
    return np.median((samples[:, i] + samples[:, j]) / 2.0, axis=1)


def _bootstrap(values: np.ndarray, statistic, n_resamples: int, rng: np.random.Generator,
               chunk: int = 2000) -> np.ndarray:
    """``statistic`` (row-wise on ``[resamples, n]``) of ``n_resamples`` resamples with replacement."""
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, values.size, size=(stop - start, values.size))
        out[start:stop] = statistic(values[idx])
    return out


def _row_medians(samples: np.ndarray) -> np.ndarray:
    return np.median(samples, axis=1)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_log_ratios(candidate_blocks: Blocks, baseline_blocks: Blocks) -> np.ndarray:
    """``log(median(candidate_b) / median(baseline_b))`` for each paired block ``b``."""
    if len(candidate_blocks) != len(baseline_blocks):
        raise ValueError(f"paired blocks differ in number: {len(candidate_blocks)} vs {len(baseline_blocks)}")
    cand, base = block_medians(candidate_blocks), block_medians(baseline_blocks)
    if np.any(cand <= 0) or np.any(base <= 0):
        raise ValueError("block medians must be positive")
    return np.log(cand) - np.log(base)


def paired_ratio_interval(candidate_blocks: Blocks, baseline_blocks: Blocks, confidence: float = 0.90,
                          n_resamples: int = 10_000, seed: int = 0) -> RatioInterval:
    """Ratio candidate/baseline over paired blocks, with a bootstrap interval over blocks.

    Method: the per-block log ratios ``log(median(c_b)/median(b_b))``; the ratio
    is ``exp`` of their Hodges-Lehmann estimate; the interval is the seeded
    percentile bootstrap of that estimate, resampling whole blocks (pairs stay
    together). Assumes blocks are exchangeable: the drift a block shares with
    its partner cancels, what remains is independent between blocks. With fewer
    than 2 blocks no interval is given (``low``/``high`` are None).
    """
    logs = paired_log_ratios(candidate_blocks, baseline_blocks)
    ratio = math.exp(hodges_lehmann(logs))
    n = int(logs.size)
    if n < 2:
        return RatioInterval(ratio, None, None, confidence, n, n)
    boot = _bootstrap(logs, _walsh_medians, n_resamples, np.random.default_rng(seed))
    low, high = _percentiles(boot, confidence)
    return RatioInterval(ratio, math.exp(low), math.exp(high), confidence, n, n)


def min_attainable_p_signed_rank(n: int) -> float:
    """Smallest one-sided exact signed-rank p-value for ``n`` non-zero differences: ``2**-n``.

    Every sign the same has probability ``2**-n`` under the null of symmetry.
    If that is not below alpha, no data of that size can ever be significant
    (4 blocks cannot go below 0.0625; 5 reach 0.031).
    """
    return 1.0 if n < 1 else 2.0 ** -n


EXACT_SIGNED_RANK_MAX_N = 50  # scipy's wilcoxon(method="auto") is exact up to here, without zeros or ties


def signed_rank_p(differences: Sequence[float], alternative: str) -> float:
    """One-sided Wilcoxon signed-rank p-value that the differences centre ``alternative`` ("less"/"greater") than 0.

    ``scipy.stats.wilcoxon(method="auto")``: exact without ties or zeros (up to
    50 values), the normal approximation otherwise; zeros are dropped. Assumes
    the differences are independent and symmetric about their centre. All
    differences zero gives 1.0. Computed by :func:`signed_rank_rows`.
    """
    return float(signed_rank_rows(np.asarray(differences, dtype=float)[np.newaxis, :], alternative)[0])


@lru_cache(maxsize=None)
def _signed_rank_null_cdf(n: int) -> np.ndarray:
    """P(W+ <= w) for w = 0 .. n(n+1)/2 under the null (each sign +/- with probability 1/2, no ties)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for rank in range(1, n + 1):
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    return np.cumsum(counts) / 2.0 ** n


def signed_rank_rows(differences: np.ndarray, alternative: str) -> np.ndarray:
    """:func:`signed_rank_p` of each row of ``differences`` (shape ``[..., n]``), at once.

    Rows where ``scipy.stats.wilcoxon(method="auto")`` is exact (no zero, no tied magnitude, all finite,
    n <= 50) are computed here from the exact null distribution of W+ ("less": p = P(W+ <= w); "greater":
    P(W+ >= w)), about a thousand times faster than a call to scipy each; the other rows go to scipy.
    """
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
    d = np.asarray(differences, dtype=float)
    n = d.shape[-1]
    flat = d.reshape(math.prod(d.shape[:-1]), n)  # also rows of no difference at all
    magnitudes = np.abs(flat)
    ranks = magnitudes.argsort(axis=1).argsort(axis=1) + 1
    w_plus = np.where(flat > 0, ranks, 0).sum(axis=1)
    cdf = _signed_rank_null_cdf(n)
    if alternative == "less":
        p = cdf[w_plus]
    else:
        p = 1.0 - np.where(w_plus > 0, cdf[np.maximum(w_plus - 1, 0)], 0.0)
    irregular = ((magnitudes == 0).any(axis=1) | ~np.isfinite(magnitudes).all(axis=1)
                 | (np.diff(np.sort(magnitudes, axis=1), axis=1) == 0).any(axis=1) | (n > EXACT_SIGNED_RANK_MAX_N))
    for row in np.flatnonzero(irregular):
        p[row] = 1.0 if not np.any(flat[row] != 0) else _sps.wilcoxon(flat[row], alternative=alternative,
                                                                     method="auto").pvalue
    return p.reshape(d.shape[:-1])


def threshold_test(candidate_blocks: Blocks, baseline_blocks: Blocks, threshold: float, alpha: float,
                   confidence: float | None = None, n_resamples: int = 10_000, seed: int = 0) -> ThresholdTest:
    """Test "the candidate cuts latency by more than ``threshold``" on paired blocks.

    Method: per block ``d_b = log(median(c_b)) - log((1 - threshold) *
    median(b_b))``; the one-sided signed-rank test of "d centres below 0"
    rejects the null "reduction <= threshold" (``p_value``), the mirror test
    rejects "reduction >= threshold" (``p_value_against``). The estimate and
    interval come from :func:`paired_ratio_interval` mapped through ``1 -
    ratio``; the interval's confidence defaults to ``1 - 2 * alpha`` so each
    bound is the one-sided bound that matches a test at ``alpha``.

    Assumptions: blocks are independent given the drift they share; within a
    pair the candidate and baseline meet the same conditions (the order inside
    a block is shuffled, so no case is always first); the ``d_b`` are symmetric
    about their centre (log ratios of medians usually are). Rounds inside a
    block need not be independent: only their median is used.
    """
    confidence = 1.0 - 2.0 * alpha if confidence is None else confidence
    interval = paired_ratio_interval(candidate_blocks, baseline_blocks, confidence, n_resamples, seed)
    logs = paired_log_ratios(candidate_blocks, baseline_blocks)
    differences = logs - math.log(1.0 - threshold)
    n_used = int(np.count_nonzero(differences))
    min_p = min_attainable_p_signed_rank(n_used)
    powered = min_p < alpha
    return ThresholdTest(
        estimate=1.0 - interval.ratio,
        low=None if interval.high is None else 1.0 - interval.high,
        high=None if interval.low is None else 1.0 - interval.low,
        confidence=confidence, threshold=threshold,
        p_value=signed_rank_p(differences, "less") if powered else None,
        p_value_against=signed_rank_p(differences, "greater") if powered else None,
        min_attainable_p=min_p, powered=powered, n_blocks=int(logs.size),
        block_reductions=tuple(float(x) for x in 1.0 - np.exp(logs)),
    )


def judge_threshold_test(result: ThresholdTest, alpha: float, p_value: float | None = None,
                         p_value_against: float | None = None) -> Judgement:
    """Verdict of a :class:`ThresholdTest`, with (for instance Holm-) adjusted p-values if given.

    SUPPORTED: ``p_value < alpha`` and the interval's low end at or above the
    threshold. NOT SUPPORTED: ``p_value_against < alpha`` and its high end below
    the threshold. INCONCLUSIVE otherwise, or when too few blocks can reach
    alpha at all; the reason says which.
    """
    t = result.threshold
    if not result.powered:
        return Judgement(INCONCLUSIVE, f"too few blocks ({result.n_blocks}): smallest attainable "
                                       f"p={result.min_attainable_p:.3g} is not < alpha={alpha}")
    p_for = result.p_value if p_value is None else p_value
    p_against = result.p_value_against if p_value_against is None else p_value_against
    if result.low is None or result.high is None or p_for is None or p_against is None:
        return Judgement(INCONCLUSIVE, "no interval or p-value")
    if p_for < alpha and result.low >= t:
        return Judgement(SUPPORTED, f"lower bound {result.low:.1%} >= threshold {t:.0%}, p={p_for:.2g} < {alpha}")
    if p_against < alpha and result.high < t:
        return Judgement(NOT_SUPPORTED, f"upper bound {result.high:.1%} < threshold {t:.0%}, "
                                        f"p(reduction >= {t:.0%})={p_against:.2g} < {alpha}")
    return Judgement(INCONCLUSIVE, f"interval [{result.low:.1%}, {result.high:.1%}] vs threshold {t:.0%}, "
                                   f"p={p_for:.2g}, p(reduction >= {t:.0%})={p_against:.2g}: neither < {alpha}")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Controls the family-wise error rate at alpha over all the tests given,
    under any dependence between them: reject test ``i`` when its adjusted p is
    below alpha. ``adjusted_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))`` over
    the p-values sorted ascending.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------- comparing runs

def median_ratio_interval(candidate: Sequence[float], baseline: Sequence[float],
                          confidence: float = 0.95, n_resamples: int = 10_000,
                          seed: int = 0) -> RatioInterval:
    """Percentile-bootstrap interval of ``median(candidate)/median(baseline)`` for unpaired samples.

    Each side is resampled independently with replacement; a seeded ``numpy``
    Generator makes the interval reproducible. With fewer than 2 values on a
    side no interval is given (``low``/``high`` are None). Assumes the values
    are i.i.d. within a side: pass block medians (two runs' blocks are not
    paired), never the rounds of a run whose cases ran one after another.
    """
    cand = np.asarray(candidate, dtype=float)
    base = np.asarray(baseline, dtype=float)
    if cand.size == 0 or base.size == 0:
        raise ValueError("ratio needs at least one value on each side")
    base_median = float(np.median(base))
    if base_median <= 0:
        raise ValueError("baseline median must be positive")
    ratio = float(np.median(cand)) / base_median
    if cand.size < 2 or base.size < 2:
        return RatioInterval(ratio, None, None, confidence, int(cand.size), int(base.size))
    rng = np.random.default_rng(seed)
    ratios = _bootstrap(cand, _row_medians, n_resamples, rng) / _bootstrap(base, _row_medians, n_resamples, rng)
    low, high = _percentiles(ratios, confidence)
    return RatioInterval(ratio, low, high, confidence, int(cand.size), int(base.size))


# ---------------------------------------------------------------- link-rate sweeps
