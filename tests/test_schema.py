"""The benchmark record round-trips: what the runner writes into extra_info is what the analysis reads back."""
from dataclasses import asdict, fields

import pytest

from semgap import schema
from semgap.analysis.measurements import read_run
from semgap.schema import CaseInfo, RoundRecord, TokenRecord

IDENTITY = CaseInfo(
    case="semantic-decode-1gbit", block=3, blocks=10, position_in_block=2, mode="semantic", phase="decode",
    model="gpt2-mini", role="semantic", lossless=True, weights="random", device="cpu", prompt_tokens=128,
    decode_steps=5, link="netns", link_rate="1gbit", link_rate_bps=10**9, label="semantic", sampler="greedy",
    program="generate", fast_path="eager-dynamic", setup_bytes_sent=32_577_288, setup_bytes_received=57, techniques="prune,token-only",
    technique_spec="prune,token-only", zstd_level=None,
)
ROUNDS = [RoundRecord(payload_bytes_sent=100 + i, payload_bytes_received=40 + i, wire_tcp_bytes_sent=160 + i,
                      wire_tcp_bytes_received=80 + i, wire_link_bytes_sent=400 + i, wire_link_bytes_received=300 + i,
                      rpc_round_trips=5, rpc_posts=0, server_compute_ms=10.0 + i, encode_ms=0.1, decode_ms=0.2,
                      wire_tcp_bytes_retransmitted_sent=i, wire_tcp_bytes_retransmitted_received=0,
                      round_ms=20.0 + i, wait_ms=15.0 + i, server_queue_ms=0.5 + i, server_decode_ms=0.3,
                      server_encode_ms=0.4 + i, server_handler_ms=11.0 + i)
          for i in range(3)]
TOKENS = TokenRecord.measure([7, 8, 9, 1, 2], [[7, 8, 9, 1, 2], [7, 8, 9, 1, 2], [7, 8, 0, 1, 2]])


def benchmark_json(info: dict) -> dict:
    return {"benchmarks": [{"name": "test_semantic_gap[x]", "stats": {"data": [0.01, 0.011, 0.012]},
                            "extra_info": info}], "semgap": {"model": "gpt2-mini"}}


def test_what_the_runner_writes_the_analysis_reads_back():
    info = schema.matrix_extra_info(IDENTITY, ROUNDS, TOKENS)
    run = read_run(benchmark_json(info))
    (case,) = run.cases
    assert (case.case, case.label, case.mode, case.role, case.lossless, case.weights, case.model, case.phase,
            case.decode_steps, case.link, case.link_rate, case.link_rate_bps, case.techniques) == (
        IDENTITY.case, IDENTITY.label, IDENTITY.mode, IDENTITY.role, IDENTITY.lossless, IDENTITY.weights,
        IDENTITY.model, IDENTITY.phase, IDENTITY.decode_steps, IDENTITY.link, IDENTITY.link_rate,
        IDENTITY.link_rate_bps, IDENTITY.techniques)
    block = case.blocks[IDENTITY.block]
    assert block.position_in_block == IDENTITY.position_in_block
    for level in schema.LEVEL_PREFIX:
        for direction in schema.DIRECTIONS:
            written = tuple(float(getattr(r, schema.level_key(level, direction))) for r in ROUNDS)
            assert getattr(block, f"bytes_{direction}_rounds")[level] == written, (level, direction)
    assert block.retransmitted_rounds == {"sent": (0, 1, 2), "received": (0, 0, 0)}
    assert block.round_trips == 5 and block.server_compute_ms == 11.0
    assert block.token_agreement_with_local == 0.8  # the worst round's: one token of five differs
    assert block.first_mismatch == "measured round 2, token 2: 0 where local has 9"
    assert case.invalid == f"{IDENTITY.case} generated other tokens than local (block 3, {block.first_mismatch})"
    assert CaseInfo.from_extra_info(info) == IDENTITY


def test_a_lossy_case_with_other_tokens_is_not_invalid():
    lossy = CaseInfo(**{**asdict(IDENTITY), "lossless": False})
    (case,) = read_run(benchmark_json(schema.matrix_extra_info(lossy, ROUNDS, TOKENS))).cases
    assert case.invalid is None and case.token_agreement == 0.8


def test_a_level_no_round_measured_is_not_read_as_zero():
    rounds = [RoundRecord(**{**asdict(r), "wire_link_bytes_sent": None, "wire_link_bytes_received": None}) for r in ROUNDS]
    info = schema.matrix_extra_info(IDENTITY, rounds, TOKENS)
    assert info[schema.WIRE_LEVELS] == ["payload", "tcp"]
    (case,) = read_run(benchmark_json(info)).cases
    assert case.levels == {"payload", "tcp"}


def test_a_blind_row_writes_no_technique_fields_and_reads_none():
    blind = CaseInfo(**{**asdict(IDENTITY), "mode": "remote_cache", "label": "remote_cache", "role": "blind",
                        "techniques": None, "technique_spec": None, "zstd_level": None})
    info = schema.matrix_extra_info(blind, ROUNDS, TOKENS)
    assert not {"techniques", "technique_spec", "zstd_level"} & set(info)
    assert CaseInfo.from_extra_info(info) == blind


@pytest.mark.parametrize("name", [item.name for item in fields(RoundRecord)])
def test_every_round_field_is_written_per_round_and_as_its_median(name):
    info = schema.matrix_extra_info(IDENTITY, ROUNDS, TOKENS)
    values = [getattr(r, name) for r in ROUNDS]
    assert info[schema.rounds_key(name)] == values and info[name] == sorted(values)[1]


def test_token_agreement_is_the_worst_measured_round_not_the_last():
    expected = [1, 2, 3, 4]
    rounds = [[1, 2, 3, 4], [1, 9, 9, 4], [1, 2, 3, 9], [1, 2, 3, 4]]  # the worst round is neither first nor last
    record = TokenRecord.measure(expected, rounds)
    assert record.token_agreement_with_local == 0.5 == min(schema.agreement(expected, tokens) for tokens in rounds)
    assert (record.token_ids, record.tokens_same_every_round) == ([1, 2, 3, 4], False)
    assert record.first_mismatch == "measured round 1, token 1: 9 where local has 2"
    assert TokenRecord.measure(expected, [expected, expected]).token_agreement_with_local == 1.0
