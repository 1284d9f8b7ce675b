"""Tests of semgap.stats on synthetic data whose answer is known."""
import math

import numpy as np
import pytest

from semgap import stats


def rounds(median_s: float, rel_spread: float, n: int) -> list[float]:
    """Deterministic rounds evenly spread +-rel_spread around median_s."""
    return list(median_s * (1.0 + rel_spread * np.linspace(-1.0, 1.0, n)))


def noisy_rounds(median_s: float, rel_sd: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(np.abs(median_s * (1.0 + rel_sd * rng.standard_normal(n))))


# ---------------------------------------------------------------- H2-style latency verdicts

def test_forty_percent_tight_noise_is_supported():
    res = stats.latency_reduction(rounds(0.060, 0.01, 30), rounds(0.100, 0.01, 30), alpha=0.05, seed=1)
    assert res.estimate == pytest.approx(0.40, abs=1e-9)
    assert 0.38 < res.low < 0.40 < res.high < 0.42
    assert res.powered and res.p_value < 1e-6
    assert stats.judge_latency(res, 0.15, 0.05).verdict == stats.SUPPORTED


def test_ten_percent_tight_noise_is_not_supported():
    res = stats.latency_reduction(rounds(0.090, 0.01, 30), rounds(0.100, 0.01, 30), seed=1)
    assert res.estimate == pytest.approx(0.10, abs=1e-9)
    assert res.high < 0.15
    judgement = stats.judge_latency(res, 0.15, 0.05)
    assert judgement.verdict == stats.NOT_SUPPORTED
    assert "upper bound" in judgement.reason


def test_noisy_fifteen_percent_is_inconclusive():
    res = stats.latency_reduction(rounds(0.085, 0.5, 15), rounds(0.100, 0.5, 15), seed=1)
    assert res.estimate == pytest.approx(0.15)
    assert res.low < 0.05 and res.high > 0.25
    judgement = stats.judge_latency(res, 0.15, 0.05)
    assert judgement.verdict == stats.INCONCLUSIVE
    assert "straddles" in judgement.reason


def test_three_rounds_per_side_cannot_reach_alpha():
    res = stats.latency_reduction([0.050, 0.051, 0.052], [0.100, 0.101, 0.102], alpha=0.05, seed=1)
    assert res.min_attainable_p == pytest.approx(0.05)
    assert not res.powered and res.p_value is None
    judgement = stats.judge_latency(res, 0.15, 0.05)
    assert judgement.verdict == stats.INCONCLUSIVE
    assert "too few rounds" in judgement.reason


def test_four_rounds_per_side_can_be_supported():
    res = stats.latency_reduction([0.050, 0.051, 0.052, 0.053], [0.100, 0.101, 0.102, 0.103], seed=1)
    assert res.powered
    assert res.p_value == pytest.approx(1 / 70)
    assert stats.judge_latency(res, 0.15, 0.05).verdict == stats.SUPPORTED


def test_min_attainable_p():
    assert stats.min_attainable_p_one_sided(3, 3) == pytest.approx(1 / math.comb(6, 3))
    assert stats.min_attainable_p_one_sided(4, 4) == pytest.approx(1 / 70)
    assert not stats.can_reach_alpha(3, 3, 0.05)
    assert stats.can_reach_alpha(3, 4, 0.05)
    assert stats.min_attainable_p_one_sided(0, 5) == 1.0


def test_large_interval_but_insignificant_is_inconclusive():
    judgement = stats.judge(0.20, 0.30, 0.15, p_value=0.2, alpha=0.05)
    assert judgement.verdict == stats.INCONCLUSIVE


def test_bootstrap_is_reproducible_with_seed():
    cand, base = noisy_rounds(0.08, 0.1, 20, 5), noisy_rounds(0.1, 0.1, 20, 6)
    a = stats.median_ratio_interval(cand, base, seed=7)
    b = stats.median_ratio_interval(cand, base, seed=7)
    c = stats.median_ratio_interval(cand, base, seed=8)
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low <= a.ratio <= a.high


def test_single_round_gives_no_interval():
    res = stats.median_ratio_interval([0.05], [0.1])
    assert res.ratio == pytest.approx(0.5)
    assert res.low is None and res.high is None


def test_mann_whitney_direction():
    fast, slow = rounds(0.05, 0.01, 10), rounds(0.10, 0.01, 10)
    assert stats.mann_whitney_less_p(fast, slow) < 0.001
    assert stats.mann_whitney_less_p(slow, fast) > 0.99
    assert stats.mann_whitney_greater_p(slow, fast) < 0.001


# ---------------------------------------------------------------- bytes (H1)

def test_constant_bytes_give_exact_ratio():
    red = stats.byte_reduction([600, 600, 600], [1000, 1000, 1000])
    assert red.estimate == pytest.approx(0.4)
    assert red.low == red.high == red.estimate
    assert red.exact
    assert stats.judge(red.low, red.high, 0.30).verdict == stats.SUPPORTED


def test_bytes_exactly_at_threshold_supported_and_just_below_not():
    at = stats.byte_reduction([700], [1000])
    below = stats.byte_reduction([701], [1000])
    assert stats.judge(at.low, at.high, 0.30).verdict == stats.SUPPORTED
    assert stats.judge(below.low, below.high, 0.30).verdict == stats.NOT_SUPPORTED


def test_varying_bytes_use_medians_and_min_max():
    red = stats.byte_reduction([500, 600, 700], [900, 1000, 1100])
    assert red.estimate == pytest.approx(0.4)
    assert red.low == pytest.approx(1 - 700 / 900)
    assert red.high == pytest.approx(1 - 500 / 1100)
    assert not red.exact and "medians" in red.note


def test_different_round_counts_use_medians():
    red = stats.byte_reduction([500, 500], [1000, 1000, 1000])
    assert red.estimate == pytest.approx(0.5)
    assert red.exact


def test_zero_byte_baseline_is_undefined():
    red = stats.byte_reduction([10], [0])
    assert red.estimate is None
    assert stats.judge(red.low, red.high, 0.3).verdict == stats.INCONCLUSIVE


# ---------------------------------------------------------------- byte level selection

@pytest.mark.parametrize("available,expected", [
    (["payload", "tcp", "link"], "link"),
    (["tcp", "payload"], "tcp"),
    (["payload"], "payload"),
    ([], "payload"),
])
def test_choose_byte_level(available, expected):
    assert stats.choose_byte_level(available) == expected


# ---------------------------------------------------------------- link-rate crossover

def test_crossover_interpolates_in_log_rate():
    c = stats.crossover_rate([1e10, 1e8, 1e9], [0.1, 0.4, 0.2], 0.15)
    assert c.rate_bps == pytest.approx(10 ** 9.5)
    assert c.holds_below is True
    assert c.interpolated
    assert "interpolated" in c.note


def test_crossover_when_hypothesis_holds_at_high_rates():
    c = stats.crossover_rate([1e6, 1e7], [0.05, 0.25], 0.10)
    assert c.rate_bps == pytest.approx(10 ** 6.25)  # a quarter of the way in log10(rate)
    assert c.holds_below is False


def test_crossover_on_a_measured_point_is_not_interpolated():
    c = stats.crossover_rate([1e8, 1e9, 1e10], [0.3, 0.15, 0.05], 0.15)
    assert c.rate_bps == pytest.approx(1e9)
    assert not c.interpolated


def test_no_crossover_inside_range():
    above = stats.crossover_rate([1e8, 1e9], [0.3, 0.2], 0.15)
    below = stats.crossover_rate([1e8, 1e9], [0.1, 0.05], 0.15)
    assert above.rate_bps is None and "every" in above.note
    assert below.rate_bps is None and "no measured" in below.note


# ---------------------------------------------------------------- RTT projection and summaries

def test_rtt_projection_adds_round_trips_times_rtt():
    assert stats.project_latency_ms(5.0, 3) == pytest.approx([5.03, 5.3, 8.0])
    assert stats.project_latency_ms(2.0, 10, rtts_s=[0.002]) == pytest.approx([22.0])


def test_iqr_and_median():
    assert stats.iqr([1, 2, 3, 4, 5]) == (2.0, 4.0)
    assert stats.median([3, 1, 2]) == 2.0
    with pytest.raises(ValueError):
        stats.median([])
