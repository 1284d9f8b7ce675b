"""Pure statistics for the semantic-gap hypotheses (no I/O, no globals).

Conventions used throughout:

* A *reduction* is ``1 - candidate / baseline``: 0.40 means the candidate needs
  40 % less than the baseline; a negative reduction means it needs more.
* A *ratio* is ``candidate / baseline``: 1.25 means 25 % more (a "tax").
* Latencies come in seconds (pytest-benchmark's raw ``stats.data``).
* Verdict strings are ``SUPPORTED``, ``NOT SUPPORTED`` and ``INCONCLUSIVE``.

How to read a verdict: SUPPORTED means even the pessimistic end of the interval
clears the threshold (and, for latency, the one-sided Mann-Whitney test is
significant); NOT SUPPORTED means even the optimistic end misses it;
INCONCLUSIVE means the data cannot decide (interval straddles the threshold,
too few rounds to ever reach alpha, or a missing/degenerate baseline) -- it is
not evidence either way and calls for more rounds or a steadier machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _sps

SUPPORTED = "SUPPORTED"
NOT_SUPPORTED = "NOT SUPPORTED"
INCONCLUSIVE = "INCONCLUSIVE"

#: Byte-counting levels from most to least trustworthy.
BYTE_LEVELS_BEST_FIRST = ("link", "tcp", "payload")

#: Round-trip times used by :func:`project_latency_ms` (seconds): 10 us, 100 us, 1 ms.
DEFAULT_RTTS_S = (10e-6, 100e-6, 1e-3)


@dataclass(frozen=True)
class Judgement:
    """A verdict and the one-sentence reason for it."""

    verdict: str
    reason: str


@dataclass(frozen=True)
class ByteReduction:
    """Exact byte reduction of a candidate against a baseline (per round).

    ``estimate`` is ``1 - candidate/baseline`` of the per-round totals;
    ``low``/``high`` equal it when every round sent the same bytes, otherwise
    they are the extreme reductions reachable from the min/max rounds and
    ``note`` says medians were used.
    """

    estimate: float | None
    low: float | None
    high: float | None
    candidate_bytes_per_round: float
    baseline_bytes_per_round: float
    exact: bool
    note: str


@dataclass(frozen=True)
class RatioInterval:
    """Median ratio ``median(candidate)/median(baseline)`` with a bootstrap CI."""

    ratio: float
    low: float | None
    high: float | None
    confidence: float
    n_candidate: int
    n_baseline: int


@dataclass(frozen=True)
class LatencyReduction:
    """Latency reduction ``1 - median(cand)/median(base)`` with CI and test.

    ``p_value`` is the one-sided Mann-Whitney U p-value for "candidate is
    faster"; it is ``None`` when ``powered`` is False, i.e. when the smallest
    attainable p-value (``min_attainable_p``) cannot get below alpha.
    """

    estimate: float
    low: float | None
    high: float | None
    confidence: float
    p_value: float | None
    min_attainable_p: float
    powered: bool
    n_candidate: int
    n_baseline: int
    median_candidate_s: float
    median_baseline_s: float


@dataclass(frozen=True)
class Crossover:
    """Where a reduction-versus-link-rate curve crosses the threshold.

    ``rate_bps`` is the first crossing (lowest rate) or ``None`` when the curve
    never crosses inside the measured range; ``holds_below`` is True when the
    hypothesis holds at rates below the crossing, False when above.
    ``interpolated`` is True when the rate lies between two measured rates.
    ``all_crossings_bps`` lists every crossing, lowest first.
    """

    rate_bps: float | None
    holds_below: bool | None
    interpolated: bool
    all_crossings_bps: tuple[float, ...]
    note: str


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


def choose_byte_level(available: Sequence[str]) -> str:
    """Pick the most trustworthy byte level among ``available``.

    Order: ``link`` (veth interface counters, includes headers and
    retransmits) > ``tcp`` (kernel TCP counters) > ``payload`` (bytes the mode
    serialised; not kernel-counted). Falls back to ``payload`` when nothing
    better is available, so a caller must say "payload only" in that case.
    """
    for level in BYTE_LEVELS_BEST_FIRST:
        if level in available:
            return level
    return "payload"


def min_attainable_p_one_sided(n1: int, n2: int) -> float:
    """Smallest one-sided exact Mann-Whitney U p-value for sizes n1, n2.

    The most extreme ordering (all of one sample below all of the other) has
    probability ``1 / C(n1+n2, n1)`` under the null of exchangeability. If this
    is not below alpha, no data of that size can ever be significant.
    """
    if n1 < 1 or n2 < 1:
        return 1.0
    return 1.0 / math.comb(n1 + n2, n1)


def can_reach_alpha(n1: int, n2: int, alpha: float) -> bool:
    """True when ``min_attainable_p_one_sided(n1, n2) < alpha``."""
    return min_attainable_p_one_sided(n1, n2) < alpha


def mann_whitney_less_p(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "candidate tends to be smaller".

    Uses ``scipy.stats.mannwhitneyu(alternative="less", method="auto")``:
    exact for small samples without ties, normal approximation otherwise.
    Assumes independent rounds; it tests a location shift, not its size.
    """
    result = _sps.mannwhitneyu(candidate, baseline, alternative="less", method="auto")
    return float(result.pvalue)


def mann_whitney_greater_p(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "candidate tends to be larger"."""
    result = _sps.mannwhitneyu(candidate, baseline, alternative="greater", method="auto")
    return float(result.pvalue)


def _bootstrap_medians(values: np.ndarray, n_resamples: int, rng: np.random.Generator,
                       chunk: int = 2000) -> np.ndarray:
    """Medians of ``n_resamples`` resamples (with replacement) of ``values``."""
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, values.size, size=(stop - start, values.size))
        out[start:stop] = np.median(values[idx], axis=1)
    return out


def median_ratio_interval(candidate: Sequence[float], baseline: Sequence[float],
                          confidence: float = 0.95, n_resamples: int = 10_000,
                          seed: int = 0) -> RatioInterval:
    """Percentile-bootstrap CI of ``median(candidate)/median(baseline)``.

    Each side is resampled independently with replacement (the rounds of two
    benchmarks are not paired); a seeded ``numpy`` Generator makes the interval
    reproducible. With fewer than 2 rounds on a side no interval is given
    (``low``/``high`` are None). Assumes rounds are i.i.d. within a side.
    """
    cand = np.asarray(candidate, dtype=float)
    base = np.asarray(baseline, dtype=float)
    if cand.size == 0 or base.size == 0:
        raise ValueError("ratio needs at least one round on each side")
    base_median = float(np.median(base))
    if base_median <= 0:
        raise ValueError("baseline median must be positive")
    ratio = float(np.median(cand)) / base_median
    if cand.size < 2 or base.size < 2:
        return RatioInterval(ratio, None, None, confidence, int(cand.size), int(base.size))
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_medians(cand, n_resamples, rng) / _bootstrap_medians(base, n_resamples, rng)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return RatioInterval(ratio, float(low), float(high), confidence, int(cand.size), int(base.size))


def latency_reduction(candidate_s: Sequence[float], baseline_s: Sequence[float],
                      alpha: float = 0.05, confidence: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0) -> LatencyReduction:
    """Latency reduction of candidate vs baseline from raw round times.

    Method: point estimate ``1 - median(cand)/median(base)``; CI from
    :func:`median_ratio_interval` mapped through ``1 - ratio`` (so
    ``low = 1 - ratio_high``); one-sided Mann-Whitney U p-value for
    "candidate faster", computed only when the sample sizes can reach alpha
    at all (see :func:`min_attainable_p_one_sided`).
    """
    interval = median_ratio_interval(candidate_s, baseline_s, confidence, n_resamples, seed)
    n1, n2 = len(candidate_s), len(baseline_s)
    min_p = min_attainable_p_one_sided(n1, n2)
    powered = min_p < alpha
    p_value = mann_whitney_less_p(candidate_s, baseline_s) if powered else None
    return LatencyReduction(
        estimate=1.0 - interval.ratio,
        low=None if interval.high is None else 1.0 - interval.high,
        high=None if interval.low is None else 1.0 - interval.low,
        confidence=confidence,
        p_value=p_value,
        min_attainable_p=min_p,
        powered=powered,
        n_candidate=n1,
        n_baseline=n2,
        median_candidate_s=median(candidate_s),
        median_baseline_s=median(baseline_s),
    )


def byte_reduction(candidate_rounds: Sequence[float], baseline_rounds: Sequence[float]) -> ByteReduction:
    """Exact byte reduction ``1 - candidate/baseline`` of per-round totals.

    Bytes are deterministic, so no sampling statistics are involved. When all
    rounds on both sides carry the same byte count the result is exact and the
    interval collapses to the point. When rounds differ (count or value), the
    point uses medians and the interval spans the extremes
    ``[1 - max(c)/min(b), 1 - min(c)/max(b)]``; ``note`` says so. A baseline of
    zero bytes gives ``estimate=None`` (nothing to reduce).
    """
    cand = np.asarray(candidate_rounds, dtype=float)
    base = np.asarray(baseline_rounds, dtype=float)
    if cand.size == 0 or base.size == 0:
        raise ValueError("byte reduction needs at least one round on each side")
    cand_med, base_med = float(np.median(cand)), float(np.median(base))
    constant = bool(np.all(cand == cand[0]) and np.all(base == base[0]))
    if base.min() <= 0:
        return ByteReduction(None, None, None, cand_med, base_med, constant,
                             "baseline sends no bytes; reduction undefined")
    estimate = 1.0 - cand_med / base_med
    if constant:
        return ByteReduction(estimate, estimate, estimate, cand_med, base_med, True,
                             "exact (bytes identical in every round)")
    low = 1.0 - float(cand.max()) / float(base.min())
    high = 1.0 - float(cand.min()) / float(base.max())
    return ByteReduction(estimate, low, high, cand_med, base_med, False,
                         "per-round bytes vary; medians used, interval is min/max over rounds")


def judge(low: float | None, high: float | None, threshold: float,
          p_value: float | None = None, alpha: float | None = None) -> Judgement:
    """Verdict for "the reduction is at least ``threshold``".

    SUPPORTED when ``low >= threshold`` (and ``p_value < alpha`` if alpha is
    given); NOT SUPPORTED when ``high < threshold``; otherwise INCONCLUSIVE.
    For an exact (point) estimate pass ``low == high``. Missing bounds give
    INCONCLUSIVE. Power problems must be caught by the caller before this.
    """
    if low is None or high is None:
        return Judgement(INCONCLUSIVE, "no interval (too few rounds or missing data)")
    if high < threshold:
        return Judgement(NOT_SUPPORTED, f"upper bound {high:.1%} < threshold {threshold:.0%}")
    if low >= threshold:
        if alpha is None:
            return Judgement(SUPPORTED, f"lower bound {low:.1%} >= threshold {threshold:.0%}")
        if p_value is None:
            return Judgement(INCONCLUSIVE, "no p-value available")
        if p_value < alpha:
            return Judgement(SUPPORTED, f"lower bound {low:.1%} >= threshold {threshold:.0%}, "
                                        f"p={p_value:.2g} < {alpha}")
        return Judgement(INCONCLUSIVE, f"interval clears threshold but p={p_value:.2g} >= {alpha}")
    return Judgement(INCONCLUSIVE, f"interval [{low:.1%}, {high:.1%}] straddles threshold {threshold:.0%}")


def judge_latency(result: LatencyReduction, threshold: float, alpha: float) -> Judgement:
    """Verdict for a latency hypothesis, checking power before the interval."""
    if not result.powered:
        return Judgement(INCONCLUSIVE,
                         f"too few rounds ({result.n_candidate} vs {result.n_baseline}): smallest "
                         f"attainable p={result.min_attainable_p:.3g} is not < alpha={alpha}")
    return judge(result.low, result.high, threshold, result.p_value, alpha)


def crossover_rate(rates_bps: Sequence[float], reductions: Sequence[float],
                   threshold: float) -> Crossover:
    """Link rate at which a reduction curve crosses ``threshold``.

    Method: sort by rate, then between neighbouring rates where
    ``reduction - threshold`` changes sign, interpolate linearly in
    ``log10(rate)``; "holds" means ``reduction >= threshold`` and a measured
    point exactly on the threshold is itself the crossing (not interpolated).
    When the curve holds above the crossing, ``rate_bps`` is the lowest
    bandwidth at which the hypothesis still holds; when it holds below, the
    highest. Uses point estimates, not verdicts: read it as "where the curve
    crosses", not as a significance statement. With fewer than two rates, or
    no crossing, ``rate_bps`` is None and ``note`` says whether the hypothesis
    held at every measured rate or at none.
    """
    if len(rates_bps) != len(reductions):
        raise ValueError("rates and reductions differ in length")
    pairs = sorted((float(r), float(x)) for r, x in zip(rates_bps, reductions))
    if any(r <= 0 for r, _ in pairs):
        raise ValueError("link rates must be positive")
    if len(pairs) < 2:
        return Crossover(None, None, False, (), "fewer than two link rates")
    crossings: list[tuple[float, bool, bool]] = []  # (rate, holds_below, interpolated)
    for (r0, x0), (r1, x1) in zip(pairs, pairs[1:]):
        holds0, holds1 = x0 >= threshold, x1 >= threshold
        if holds0 == holds1:
            continue
        if x0 == threshold:
            crossings.append((r0, holds0, False))
        elif x1 == threshold:
            crossings.append((r1, holds0, False))
        else:
            frac = (x0 - threshold) / (x0 - x1)
            log_rate = math.log10(r0) + frac * (math.log10(r1) - math.log10(r0))
            crossings.append((10 ** log_rate, holds0, True))
    if not crossings:
        held = all(x >= threshold for _, x in pairs)
        note = "holds at every measured rate" if held else "holds at no measured rate"
        return Crossover(None, None, False, (), note)
    rate, below, interp = crossings[0]
    side = "below" if below else "above"
    note = f"holds {side} {rate:.3g} bit/s" + (" (interpolated)" if interp else "")
    if len(crossings) > 1:
        note += f"; curve crosses {len(crossings)} times"
    return Crossover(rate, below, interp, tuple(c[0] for c in crossings), note)


def project_latency_ms(median_ms: float, round_trips: float,
                       rtts_s: Sequence[float] = DEFAULT_RTTS_S) -> list[float]:
    """Project latency onto links with a given round-trip time.

    Model: ``projected = measured_median + round_trips * RTT``. Delay cannot be
    emulated here (netem is absent), so each RPC round trip is assumed to wait
    one full RTT with nothing overlapping; TCP slow start, window limits and
    queueing are ignored, so the projection is a lower bound on the added
    delay for bulk transfers. Returns one value per RTT, in milliseconds.
    """
    return [median_ms + round_trips * rtt * 1000.0 for rtt in rtts_s]
