"""Tests of semgap.analysis.frames: the tidy frame of every round, and per-case aggregates over it."""
import math

import pytest

from semgap.analysis import frames
from semgap.analysis.measurements import InvalidBenchmarkJSON

from .synthetic import case, legacy, run_json, standard


def test_one_row_per_measured_round_with_its_own_values():
    data = run_json(standard(), blocks=3, rounds=2)
    naive = next(b for b in data["benchmarks"] if b["extra_info"]["mode"] == "naive" and b["extra_info"]["block"] == 1)
    naive["extra_info"]["wire_tcp_bytes_sent_rounds"] = [111, 222]
    naive["extra_info"]["ops_forwarded_rounds"] = [5, 6]  # a mode's own counter
    frame = frames.rounds(data)
    assert len(frame) == 4 * 3 * 2
    assert list(frame.columns[:len(frames.IDENTITY)]) == list(frames.IDENTITY)
    rows = frame[(frame["label"] == "naive") & (frame["block"] == 1)]
    assert rows["round"].tolist() == [0, 1]
    assert rows["latency_ms"].tolist() == pytest.approx([x * 1e3 for x in naive["stats"]["data"]])
    assert rows["wire_tcp_bytes_sent"].tolist() == [111, 222]
    assert rows["ops_forwarded"].tolist() == [5, 6]
    assert rows["load_avg_1m"].tolist() == [0.4, 0.4]  # a benchmark's scalar, on each of its rows
    assert frame[frame["role"] == "semantic"]["payload_bytes_received"].unique().tolist() == [300]
    assert math.isnan(frame["server_codec_ms"].iloc[0])  # guaranteed, NaN where the run did not measure it
    assert "token_ids" not in frame.columns


def test_legacy_json_and_json_without_raw_rounds():
    frame = frames.rounds(legacy(run_json(standard(), blocks=2, rounds=3)))
    assert len(frame) == 4 * 6 and set(frame["block"]) == {0}
    assert frame["role"].tolist()[:6] == ["local"] * 6  # a role from the mode's name
    frame = frames.rounds(run_json([case("remote_cache")], blocks=1, rounds=3, data=False))
    assert len(frame) == 3 and frame["latency_ms"].isna().all() and frame["payload_bytes_sent"].tolist() == [1000] * 3


def test_invalid_json_is_refused_as_the_report_refuses_it():
    with pytest.raises(InvalidBenchmarkJSON, match="missing 'benchmarks'"):
        frames.rounds({"machine_info": {}})


def test_a_case_median_is_the_median_of_its_block_medians():
    data = run_json([case("remote_cache")], blocks=3, rounds=3)
    for bench, values in zip(data["benchmarks"], ([1, 1, 1], [1, 9, 9], [1, 9, 9])):
        bench["extra_info"]["server_codec_ms_rounds"] = values  # block medians 1, 9, 9: 9; all rounds pooled: 1
        bench["extra_info"]["encode_ms_rounds"] = [2, 2, 2]
    frame = frames.rounds(data)
    key = ("gpt2-test", "decode", None, 5, "remote_cache")
    medians = frames.per_case(frame, ("server_codec_ms", "encode_ms", "decode_ms", "absent"))
    assert medians[key] == {"server_codec_ms": 9, "encode_ms": 2, "decode_ms": None, "absent": None}
    assert frames.per_case(frame, ("server_codec_ms",), statistic="max")[key] == {"server_codec_ms": 9}
    with pytest.raises(ValueError, match="unknown statistic 'mean'; choose from median, max"):
        frames.per_case(frame, ("encode_ms",), statistic="mean")


def test_cases_at_link_rates_stay_apart():
    data = run_json([case("remote_cache", rate="1gbit", bps=10**9, latency_s=0.1),
                     case("remote_cache", rate="10gbit", bps=10**10, latency_s=0.01)], noise=0.0, drift=0.0)
    medians = frames.per_case(frames.rounds(data), ("latency_ms",))
    assert medians[("gpt2-test", "decode", "1gbit", 5, "remote_cache")]["latency_ms"] == pytest.approx(100)
    assert medians[("gpt2-test", "decode", "10gbit", 5, "remote_cache")]["latency_ms"] == pytest.approx(10)
