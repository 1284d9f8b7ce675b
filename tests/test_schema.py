"""The benchmark record's token figures: what "agreement with local" means when rounds differ."""
from semgap.schema import TokenRecord, agreement


def test_token_agreement_is_the_worst_measured_round_not_the_last():
    expected = [1, 2, 3, 4]
    rounds = [[1, 2, 3, 4], [1, 9, 9, 4], [1, 2, 3, 9], [1, 2, 3, 4]]  # the worst round is neither first nor last
    record = TokenRecord.measure(expected, rounds)
    assert record.token_agreement_with_local == 0.5 == min(agreement(expected, tokens) for tokens in rounds)
    assert (record.token_ids, record.tokens_same_every_round) == ([1, 2, 3, 4], False)
    assert TokenRecord.measure(expected, [expected, expected]).token_agreement_with_local == 1.0
