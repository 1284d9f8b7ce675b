"""Tests of semgap.analysis.stats on synthetic data whose answer is known."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from semgap.analysis import effects, stats


def blocks(median_s, n_blocks=10, rounds=3, noise=0.01, drift=0.0, seed=0):
    """Seeded lognormal rounds around ``median_s``, each block scaled by a drift shared with its partner."""
    rng = np.random.default_rng(seed)
    return [list(median_s * (1 + drift * math.sin(b)) * np.exp(noise * rng.standard_normal(rounds)))
            for b in range(n_blocks)]


def test_forty_percent_with_tight_noise_is_supported():
    result = stats.threshold_test(blocks(0.060, seed=1), blocks(0.100, seed=2), 0.15, 0.05, seed=1)
    assert result.estimate == pytest.approx(0.40, abs=0.01)
    assert 0.15 < result.low < result.estimate < result.high
    assert result.confidence == pytest.approx(0.90)
    assert result.powered and result.p_value == pytest.approx(2 ** -10) and result.p_value_against > 0.99
    judgement = stats.judge_threshold_test(result, 0.05)
    assert judgement.verdict == stats.SUPPORTED and "p=0.00098" in judgement.reason


def test_five_percent_with_tight_noise_is_not_supported():
    result = stats.threshold_test(blocks(0.095, seed=1), blocks(0.100, seed=2), 0.15, 0.05, seed=1)
    assert result.high < 0.15 and result.p_value_against == pytest.approx(2 ** -10)
    judgement = stats.judge_threshold_test(result, 0.05)
    assert judgement.verdict == stats.NOT_SUPPORTED and "upper bound" in judgement.reason


def test_a_reduction_at_the_threshold_with_noise_is_inconclusive():
    result = stats.threshold_test(blocks(0.085, noise=0.3, seed=1), blocks(0.100, noise=0.3, seed=2), 0.15, 0.05)
    assert result.low < 0.15 < result.high
    judgement = stats.judge_threshold_test(result, 0.05)
    assert judgement.verdict == stats.INCONCLUSIVE and "neither" in judgement.reason


def test_drift_shared_by_a_block_cancels():
    # The machine doubles in speed and halves again between blocks: the pairs see the same machine.
    cand, base = blocks(0.060, drift=0.9, noise=0.0), blocks(0.100, drift=0.9, noise=0.0)
    result = stats.threshold_test(cand, base, 0.15, 0.05)
    assert result.estimate == pytest.approx(0.40) and result.low == pytest.approx(0.40)
    assert result.block_reductions == pytest.approx([0.40] * 10)


def test_four_blocks_cannot_reach_alpha_but_five_can():
    four = stats.threshold_test(blocks(0.05, 4, seed=1), blocks(0.1, 4, seed=2), 0.15, 0.05)
    assert four.min_attainable_p == 1 / 16 and not four.powered and four.p_value is None
    judgement = stats.judge_threshold_test(four, 0.05)
    assert judgement.verdict == stats.INCONCLUSIVE and "too few blocks (4)" in judgement.reason
    five = stats.threshold_test(blocks(0.05, 5, seed=1), blocks(0.1, 5, seed=2), 0.15, 0.05)
    assert five.powered and five.p_value == pytest.approx(1 / 32)
    assert stats.judge_threshold_test(five, 0.05).verdict == stats.SUPPORTED


def test_adjusted_p_values_decide_over_raw_ones():
    result = stats.threshold_test(blocks(0.05, 6, seed=1), blocks(0.1, 6, seed=2), 0.15, 0.05)
    assert result.p_value == pytest.approx(1 / 64)
    assert stats.judge_threshold_test(result, 0.05).verdict == stats.SUPPORTED
    held_back = stats.judge_threshold_test(result, 0.05, p_value=4 / 64, p_value_against=1.0)
    assert held_back.verdict == stats.INCONCLUSIVE and "p=0.062" in held_back.reason


def test_paired_blocks_must_match_in_number():
    with pytest.raises(ValueError, match="differ in number"):
        stats.threshold_test(blocks(0.05, 5), blocks(0.1, 6), 0.15, 0.05)


def test_min_attainable_p_signed_rank():
    assert stats.min_attainable_p_signed_rank(10) == 2 ** -10
    assert stats.min_attainable_p_signed_rank(0) == 1.0


def test_signed_rank_direction_and_all_zero():
    below = [-0.3, -0.2, -0.1, -0.25, -0.15, -0.05]
    assert stats.signed_rank_p(below, "less") == pytest.approx(1 / 64)
    assert stats.signed_rank_p(below, "greater") == pytest.approx(1.0)
    assert stats.signed_rank_p([0.0, 0.0], "less") == 1.0


@pytest.mark.parametrize("n", [6, 12, 50, 51])
def test_the_signed_rank_p_of_each_row_is_scipys_automatic_one(n):
    """Exact rows are computed from the null distribution (n <= 50); rows with a zero, a tied magnitude or
    more than 50 values, and all-zero rows, are scipy's (or 1.0): every row equals scipy's method="auto"."""
    rows = np.random.default_rng(n).normal(0.1, 1.0, size=(30, n))
    rows[1, 2] = 0.0  # a zero
    rows[2, 3] = -rows[2, 4]  # a tied magnitude
    rows[3] = 0.0
    for alternative in ("less", "greater"):
        ours = stats.signed_rank_rows(rows, alternative)
        theirs = [1.0 if not row.any() else scipy_stats.wilcoxon(row, alternative=alternative, method="auto").pvalue
                  for row in rows]
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-300)
        assert [stats.signed_rank_p(row, alternative) for row in rows[:4]] == list(ours[:4])


def test_hodges_lehmann_is_the_median_of_walsh_averages():
    # Walsh averages of 1, 2, 3, 10: 1, 1.5, 2, 2, 2.5, 3, 5.5, 6, 6.5, 10 -> median 2.75 (the mean is 4).
    assert stats.hodges_lehmann([1, 2, 3, 10]) == pytest.approx(2.75)
    assert stats.hodges_lehmann([1, 2, 3, 1000]) == pytest.approx(2.75)  # one wild block moves it no further


def test_paired_interval_is_reproducible_with_seed_and_needs_two_blocks():
    cand, base = blocks(0.08, noise=0.1, seed=5), blocks(0.1, noise=0.1, seed=6)
    a, b = (stats.paired_ratio_interval(cand, base, seed=7) for _ in range(2))
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low <= a.ratio <= a.high
    single = stats.paired_ratio_interval([[0.05]], [[0.1]])
    assert single.ratio == pytest.approx(0.5) and single.low is None


def test_holm_adjusts_step_down_and_keeps_order():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_unpaired_median_ratio_interval():
    result = stats.median_ratio_interval([2.0, 2.1, 1.9, 2.0], [1.0, 1.05, 0.95, 1.0], confidence=0.9)
    assert result.ratio == pytest.approx(2.0) and result.low < 2.0 < result.high
    assert stats.median_ratio_interval([0.05], [0.1]).low is None


# ---------------------------------------------------------------- bytes (H1)

def test_constant_bytes_give_exact_ratio():
    red = effects.byte_reduction([[600, 600]] * 3, [[1000, 1000]] * 3)
    assert red.estimate == pytest.approx(0.4) and red.low == red.high == red.estimate and red.exact
    assert stats.judge(red.low, red.high, 0.30).verdict == stats.SUPPORTED


def test_bytes_exactly_at_threshold_supported_and_just_below_not():
    at, below = effects.byte_reduction([[700]], [[1000]]), effects.byte_reduction([[701]], [[1000]])
    assert stats.judge(at.low, at.high, 0.30).verdict == stats.SUPPORTED
    assert stats.judge(below.low, below.high, 0.30).verdict == stats.NOT_SUPPORTED


def test_varying_bytes_use_the_median_over_blocks_and_min_max_over_rounds():
    red = effects.byte_reduction([[500, 600], [600, 600], [700, 700]], [[900], [1000], [1100]])
    assert red.candidate_bytes_per_round == 600  # block medians 550, 600, 700
    assert red.estimate == pytest.approx(0.4)
    assert (red.low, red.high) == (pytest.approx(1 - 700 / 900), pytest.approx(1 - 500 / 1100))
    assert not red.exact and "medians" in red.note


def test_zero_byte_baseline_is_undefined():
    red = effects.byte_reduction([[10]], [[0]])
    assert red.estimate is None
    assert stats.judge(red.low, red.high, 0.3).verdict == stats.INCONCLUSIVE


@pytest.mark.parametrize("available,expected", [
    (["payload", "tcp", "link"], "tcp"),
    (["link", "payload"], "payload"),  # link counts retransmissions and headers: never judged
    (["payload"], "payload"),
    ([], "payload"),
])
def test_choose_byte_level(available, expected):
    assert effects.choose_byte_level(available) == expected


# ---------------------------------------------------------------- link-rate crossover

def test_crossover_interpolates_in_log_rate():
    c = effects.crossover_rate([1e10, 1e8, 1e9], [0.1, 0.4, 0.2], 0.15)
    assert c.rate_bps == pytest.approx(10 ** 9.5)
    assert c.holds_below is True and c.interpolated and "interpolated" in c.note


def test_crossover_when_hypothesis_holds_at_high_rates():
    c = effects.crossover_rate([1e6, 1e7], [0.05, 0.25], 0.10)
    assert c.rate_bps == pytest.approx(10 ** 6.25)  # a quarter of the way in log10(rate)
    assert c.holds_below is False


def test_crossover_on_a_measured_point_is_not_interpolated():
    c = effects.crossover_rate([1e8, 1e9, 1e10], [0.3, 0.15, 0.05], 0.15)
    assert c.rate_bps == pytest.approx(1e9) and not c.interpolated


def test_no_crossover_inside_range():
    above = effects.crossover_rate([1e8, 1e9], [0.3, 0.2], 0.15)
    below = effects.crossover_rate([1e8, 1e9], [0.1, 0.05], 0.15)
    assert above.rate_bps is None and "every" in above.note
    assert below.rate_bps is None and "no measured" in below.note


# ---------------------------------------------------------------- RTT projection and summaries

def test_rtt_projection_adds_round_trips_times_rtt():
    assert effects.project_latency_ms(5.0, 3) == pytest.approx([5.03, 5.3, 8.0])
    assert effects.project_latency_ms(2.0, 10, rtts_s=[0.002]) == pytest.approx([22.0])


def test_iqr_median_and_blocked_median():
    assert stats.iqr([1, 2, 3, 4, 5]) == (2.0, 4.0)
    assert stats.median([3, 1, 2]) == 2.0
    assert stats.blocked_median([[1, 2, 30], [4], [5, 6]]) == 4.0  # block medians 2, 4, 5.5
    with pytest.raises(ValueError):
        stats.median([])
    with pytest.raises(ValueError):
        stats.blocked_median([[1], []])
