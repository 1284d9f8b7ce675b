"""Calibration of the H2 verdict by seeded simulation: how often it says SUPPORTED, at the default design.

The simulated machine: every round's latency is lognormal around its case's true median
(sigma 0.25, the spread of a CPU run's RPC rounds), times a drift that wanders through the run as
a Gaussian random walk in log space (sd 0.10 per block's worth of time, within blocks too). A run
has the default matrix's 8 cases; the candidate is the last (semantic-decode), the baseline two
cases before it (remote_cache-decode), as in the mode-major order semgap used to run.

- The interleaved design (10 blocks x 3 rounds, shuffled inside each block) judged on paired
  blocks must say SUPPORTED at most alpha + 2 pp of the time when the true reduction is exactly
  the threshold, and at least 80 % of the time at the threshold + 20 pp.
- The old design and method (each case's 30 rounds back to back, pooled; independent bootstrap
  of medians and a Mann-Whitney test of "any shift") must fail the first criterion: the drift
  between the two cases' stretches of time reads as a mode effect.

The bootstrap uses 1,000 resamples instead of the verdicts' 10,000, to keep the test fast.
"""
import functools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from semgap.analysis import stats

ALPHA, THRESHOLD = 0.05, 0.15
BLOCKS, ROUNDS, CASES = 10, 3, 8
CANDIDATE, BASELINE = 7, 5
NOISE_SIGMA, DRIFT_SD_PER_BLOCK = 0.25, 0.10
RESAMPLES, SIMULATIONS = 1000, 500


def simulate(rng, reduction, interleaved):
    """One run's candidate and baseline rounds, as per-block lists (the old design: one block of all rounds)."""
    slots_per_block = CASES * ROUNDS
    drift = np.cumsum(rng.normal(0.0, DRIFT_SD_PER_BLOCK / np.sqrt(slots_per_block), BLOCKS * slots_per_block))
    log_median = {CANDIDATE: np.log(1.0 - reduction), BASELINE: 0.0}
    rounds = {CANDIDATE: [], BASELINE: []}
    for case in (CANDIDATE, BASELINE):
        if interleaved:  # block b holds every case's rounds, in a shuffled order
            orders = [rng.permutation(np.repeat(np.arange(CASES), ROUNDS)) for _ in range(BLOCKS)]
            slot_groups = [b * slots_per_block + np.flatnonzero(order == case) for b, order in enumerate(orders)]
        else:  # mode-major: each case's rounds back to back
            slot_groups = [case * BLOCKS * ROUNDS + np.arange(BLOCKS * ROUNDS)]
        for slots in slot_groups:
            noise = rng.normal(0.0, NOISE_SIGMA, slots.size)
            rounds[case].append(list(np.exp(log_median[case] + drift[slots] + noise)))
    return rounds[CANDIDATE], rounds[BASELINE]


def blocked_verdict(candidate, baseline, seed):
    """semgap's H2 verdict (paired blocks, signed-rank test of the threshold, bootstrap over blocks) and its p."""
    result = stats.threshold_test(candidate, baseline, THRESHOLD, ALPHA, n_resamples=RESAMPLES, seed=seed)
    return stats.judge_threshold_test(result, ALPHA).verdict, result.p_value


def old_verdict(candidate, baseline, seed):
    """The method before blocks: pooled rounds, independent bootstrap of medians, Mann-Whitney 'any shift'."""
    (cand,), (base,) = candidate, baseline
    interval = stats.median_ratio_interval(cand, base, 0.95, RESAMPLES, seed)
    p_value = scipy_stats.mannwhitneyu(cand, base, alternative="less").pvalue
    low = 1.0 - interval.high
    return (stats.SUPPORTED if low >= THRESHOLD and p_value < ALPHA else stats.INCONCLUSIVE), p_value


@functools.cache
def simulated(reduction, interleaved, seed):
    """(verdict, p-value) of SIMULATIONS seeded runs, judged as their design was."""
    rng = np.random.default_rng(seed)
    verdict = blocked_verdict if interleaved else old_verdict
    return [verdict(*simulate(rng, reduction, interleaved), seed=i) for i in range(SIMULATIONS)]


def supported_rate(reduction, interleaved, seed):
    return sum(verdict == stats.SUPPORTED for verdict, _ in simulated(reduction, interleaved, seed)) / SIMULATIONS


def test_a_reduction_of_exactly_the_threshold_is_rarely_supported():
    rate = supported_rate(THRESHOLD, True, seed=1)
    assert rate <= ALPHA + 0.02, f"SUPPORTED {rate:.1%} of the time at the threshold"


def test_the_signed_rank_test_alone_holds_its_level_at_the_threshold():
    # The verdict also needs the interval above the threshold; the test must hold alpha by itself.
    results = simulated(THRESHOLD, True, seed=1)
    rate = sum(p is not None and p < ALPHA for _, p in results) / SIMULATIONS
    assert rate <= ALPHA + 0.02, f"p < alpha {rate:.1%} of the time at the threshold"


def test_a_reduction_twenty_points_above_the_threshold_is_mostly_supported():
    rate = supported_rate(THRESHOLD + 0.20, True, seed=2)
    assert rate >= 0.80, f"SUPPORTED only {rate:.1%} of the time at the threshold + 20 pp"


def test_the_old_design_and_method_are_anti_conservative_under_drift():
    rate = supported_rate(THRESHOLD, False, seed=1)
    assert rate > ALPHA + 0.02, f"the old method said SUPPORTED {rate:.1%} of the time at the threshold"


@pytest.mark.parametrize("interleaved", [True, False])
def test_simulated_runs_hold_the_default_design(interleaved):
    candidate, baseline = simulate(np.random.default_rng(0), 0.3, interleaved)
    shape = (BLOCKS, ROUNDS) if interleaved else (1, BLOCKS * ROUNDS)
    assert np.shape(candidate) == np.shape(baseline) == shape
    assert np.median(candidate) < np.median(baseline)
