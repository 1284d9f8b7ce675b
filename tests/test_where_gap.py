"""Tests of "where the gap is" (semgap.analysis.gap, semgap.report.where_gap): one row per scenario a run measured."""
import json

import pytest

from semgap.analysis import gap, stats, verdicts
from semgap.report import where_gap, writer

from .markdown import rows
from .synthetic import case, run_json, standard


def batching_info(flavour, role, sessions, tcp_per_token, latency_ms, agreement=1.0):
    return {"extra_info": {
        "batching": f"{flavour}-{sessions}sessions", "model": "gpt2-test", "weights": "random", "sessions": sessions,
        "flavour": flavour, "role": role, "tokens_per_s": 100.0, "token_latency_ms": latency_ms,
        "token_latency_p90_ms": 2 * latency_ms, "payload_bytes_per_token": tcp_per_token - 2.0,
        "wire_tcp_bytes_per_token": tcp_per_token, "mean_batch_size": None, "token_agreement_with_local": agreement,
        "decode_steps": 5}, "stats": {}}


def kv_info(scenario, strategy, role, sent, received, recovery_ms, rate=None, agreement=1.0):
    info = {"scenario": scenario, "strategy": strategy, "role": role, "lossless": True, "cached_positions": 133,
            "model": "gpt2-test", "weights": "random", "link_rate": rate, "link_rate_bps": None,
            "rpc_round_trips": 2, "recovery_ms": recovery_ms, "server_compute_ms": 0.5,
            "token_agreement_with_local": agreement, "wire_tcp_bytes_sent": None,
            "payload_bytes_sent_rounds": sent, "payload_bytes_received_rounds": received}
    return {"name": f"test_kv_recovery[{scenario}-{strategy}]", "extra_info": info, "stats": {}}


def by_scenario(rv):
    return {row.scenario: row for row in rv.where_gap}


# ---------------------------------------------------------------- matrix scenarios

def test_each_matrix_group_is_a_scenario_with_its_headline_verdicts():
    rv = verdicts.compute(run_json(standard("prefill") + standard("decode", semantic_latency=0.095)))
    assert list(by_scenario(rv)) == ["prefill", "decode (5 steps)"]
    decode = by_scenario(rv)["decode (5 steps)"]
    assert (decode.kind, decode.model, decode.candidate, decode.byte_level) == ("matrix", "gpt2-test", "semantic", "tcp")
    assert (decode.bytes_baseline, decode.byte_reduction) == ("remote_cache", pytest.approx(1 - 800 / 2200))
    assert (decode.bytes_verdict, decode.bytes_binding) == (stats.SUPPORTED, "remote_cache")
    assert decode.latency_baseline == "remote_cache" and decode.latency_reduction == pytest.approx(0.05, abs=0.01)
    assert (decode.latency_verdict, decode.latency_binding) == (stats.NOT_SUPPORTED, "remote_cache")
    assert decode.note == ""


def test_the_strongest_blind_row_is_chosen_per_column():
    # op_sync moves the fewest bytes but is slow; naive is the fastest but ships everything.
    specs = [case("naive", latency_s=0.07, payload=(10**6, 10**5)), case("remote_cache", latency_s=0.1),
             case("op_sync", latency_s=0.5, payload=(500, 500)), case("semantic", latency_s=0.06, payload=(300, 300))]
    (row,) = verdicts.compute(run_json(specs)).where_gap
    assert (row.bytes_baseline, row.byte_reduction) == ("op_sync", pytest.approx(1 - 800 / 1200))
    assert (row.latency_baseline, row.latency_verdict, row.latency_binding) == ("naive", stats.INCONCLUSIVE, "naive")


def test_rates_and_a_sampled_run_are_labelled_and_no_gap_is_said_plainly():
    specs = [case("remote_cache", rate="1gbit", bps=10**9, sampler="top-k=50,seed=0"),
             case("semantic", latency_s=0.12, payload=(300, 300), rate="1gbit", bps=10**9, sampler="top-k=50,seed=0")]
    (row,) = verdicts.compute(run_json(specs, link="netns")).where_gap
    assert row.scenario == "decode (5 steps) at 1gbit, sampler top-k=50,seed=0"
    assert row.latency_reduction < 0 and row.latency_verdict == stats.NOT_SUPPORTED
    assert row.note.startswith("no gap in latency: semantic is not cheaper (-20.")
    greedy = [dict(spec, extra={**spec["extra"], "sampler": "greedy"}) for spec in specs]
    assert verdicts.compute(run_json(greedy, link="netns")).where_gap[0].scenario == "decode (5 steps) at 1gbit"


# ---------------------------------------------------------------- batching and KV recovery: measured, not judged

def test_batching_and_kv_rows_give_reductions_of_medians_and_no_verdict():
    data = run_json(standard())
    data["benchmarks"] += [batching_info("blind", "blind", 4, 12.0, 2.0), batching_info("semantic", "semantic", 4, 6.0, 1.0),
                           batching_info("blind", "blind", 8, 12.0, 2.0),
                           batching_info("semantic", "semantic", 8, 6.0, 2.5, agreement=0.9),
                           kv_info("migration", "full_cache", "blind", [600, 500, 700], [400, 500, 300], 10.0),
                           kv_info("migration", "kv_since_sync", "semantic", [90, 80, 100], [10, 20, 0], 4.0),
                           kv_info("eviction", "full_cache", "blind", [600, 500, 700], [400, 500, 300], 10.0),
                           kv_info("eviction", "recompute", "semantic", [90, 80, 100], [10, 20, 0], 25.0)]
    rv = verdicts.compute(data)
    found = by_scenario(rv)
    assert list(found) == ["decode (5 steps)", "batching, 4 sessions", "batching, 8 sessions", "KV eviction",
                           "KV migration"]
    four = found["batching, 4 sessions"]
    assert (four.kind, four.candidate, four.bytes_baseline, four.byte_level) == ("batching", "semantic", "blind", "tcp")
    assert (four.byte_reduction, four.latency_reduction) == (pytest.approx(0.5), pytest.approx(0.5))
    assert four.bytes_verdict == four.latency_verdict == gap.NO_TEST and four.bytes_binding is None
    eight = found["batching, 8 sessions"]
    assert eight.note == "LOSSY: token agreement 0.900; no gap in latency: semantic is not cheaper (-25.0%)"
    eviction = found["KV eviction"]
    assert (eviction.candidate, eviction.bytes_baseline, eviction.byte_level) == ("recompute", "full_cache", "payload")
    assert (eviction.byte_reduction, eviction.latency_reduction) == (pytest.approx(0.9), pytest.approx(-1.5))
    assert eviction.latency_verdict == gap.NO_TEST and "no gap in latency" in eviction.note
    assert found["KV migration"].latency_reduction == pytest.approx(0.6) and found["KV migration"].note == ""
    dumped = json.loads(json.dumps(rv.to_dict()))
    assert [row["scenario"] for row in dumped["where_gap"]] == list(found)


# ---------------------------------------------------------------- the report section and where_gap.md

def test_the_section_and_where_gap_md_show_the_same_table(tmp_path):
    data = run_json(standard())
    data["benchmarks"] += [batching_info("blind", "blind", 4, 12.0, 2.0), batching_info("semantic", "semantic", 4, 6.0, 1.0)]
    assert writer.main([str(_saved(tmp_path, data)), "--out", str(tmp_path / "out"), "--seed", "1"]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    pasted = (tmp_path / "out" / where_gap.FILE_NAME).read_text()
    assert pasted.startswith("### Where the gap is\n") and "no test (measured, not judged)" in pasted
    section = rows(md, where_gap.TITLE)
    assert section == rows("## " + pasted.replace("### ", "", 1), where_gap.TITLE)
    assert [(r["scenario"], r["bytes verdict"], r["latency verdict"]) for r in section] == [
        ("decode (5 steps)", "SUPPORTED (vs every blind; binding remote_cache)",
         "SUPPORTED (vs every blind; binding remote_cache)"),
        ("batching, 4 sessions", gap.NO_TEST, gap.NO_TEST)]
    assert section[1]["byte reduction"] == "+50.0%" and section[1]["bytes vs"] == "blind"
    assert (tmp_path / "out" / "tables" / "where_gap.csv").exists()


def _saved(tmp_path, data):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    return path
