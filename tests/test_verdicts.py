"""Tests of semgap.analysis.verdicts (and the reading in semgap.analysis.measurements) on synthetic pytest-benchmark JSON."""
import json

import pytest

from semgap.analysis import stats, verdicts
from semgap.analysis.measurements import LEGACY_NOTE

from .synthetic import case, legacy, run_json, standard


def find(rv, hypothesis, phase="decode", rate=None, baseline=None):
    """The pairwise verdict against ``baseline``; without one, the group's headline (against every baseline)."""
    found = rv.verdicts if baseline else rv.headlines
    (v,) = [v for v in found if v.hypothesis == hypothesis and v.phase == phase and v.link_rate == rate
            and (v.baseline == baseline if baseline else True)]
    return v


# ---------------------------------------------------------------- hypotheses on blocks

def test_supported_run_judges_every_blind_baseline_with_a_headline():
    rv = verdicts.compute(run_json(standard()))
    h1, h2 = find(rv, "H1"), find(rv, "H2")
    assert h1.binding_baseline == h2.binding_baseline == "remote_cache"
    assert h1.estimate == pytest.approx(1 - 800 / 2200) and h1.verdict == stats.SUPPORTED and h1.byte_level == "tcp"
    assert h2.estimate == pytest.approx(0.4, abs=0.02) and h2.verdict == stats.SUPPORTED
    assert (h2.n_blocks, h2.rounds_per_block) == (10, 3)
    assert find(rv, "H2", baseline="remote_cache").confidence == pytest.approx(0.9)
    assert [(p.baseline, p.verdict) for p in h2.pairwise] == [("naive", stats.SUPPORTED),
                                                              ("remote_cache", stats.SUPPORTED)]
    assert {(v.hypothesis, v.baseline, v.binding) for v in rv.verdicts} == {
        ("H1", "remote_cache", True), ("H1", "naive", False), ("H2", "remote_cache", True), ("H2", "naive", False)}
    assert not verdicts.any_not_supported(rv)


def test_not_supported_run():
    rv = verdicts.compute(run_json(standard(semantic_latency=0.095, semantic_payload=(900, 900))))
    assert find(rv, "H1").estimate == pytest.approx(1 - 2000 / 2200) and find(rv, "H1").verdict == stats.NOT_SUPPORTED
    assert find(rv, "H2").verdict == stats.NOT_SUPPORTED
    assert verdicts.any_not_supported(rv)


def test_the_binding_baseline_is_the_smallest_reduction_for_each_hypothesis():
    # op_sync moves the fewest bytes but is slow; naive is the fastest but ships everything.
    specs = [case("naive", latency_s=0.07, payload=(10**6, 10**5)), case("remote_cache", latency_s=0.1),
             case("op_sync", latency_s=0.5, payload=(500, 500)),
             case("semantic", latency_s=0.06, payload=(300, 300))]
    rv = verdicts.compute(run_json(specs))
    h1, h2 = find(rv, "H1"), find(rv, "H2")
    assert h1.binding_baseline == "op_sync" and h1.estimate == pytest.approx(1 - 800 / 1200)
    assert h1.verdict == stats.SUPPORTED and h1.baselines == ["naive", "remote_cache", "op_sync"]
    assert h2.binding_baseline == "naive"
    assert h2.verdict == stats.INCONCLUSIVE  # 14 % faster than naive: not the 15 % asked for
    assert "naive (" in h2.reason and "remote_cache (" not in h2.reason
    assert find(rv, "H2", baseline="op_sync").verdict == stats.SUPPORTED
    assert len(rv.verdicts) == 6 and len(rv.headlines) == 2


def test_the_headline_must_hold_against_every_blind_baseline_whichever_is_most_favourable():
    # semantic is 40 % faster and 64 % lighter than remote_cache, but only 8 % faster and 11 % lighter than op_sync.
    specs = [case("remote_cache", latency_s=0.1), case("op_sync", latency_s=0.065, payload=(350, 350)),
             case("semantic", latency_s=0.06, payload=(300, 300))]
    rv = verdicts.compute(run_json(specs))
    for hypothesis in ("H1", "H2"):
        head = find(rv, hypothesis)
        assert find(rv, hypothesis, baseline="remote_cache").verdict == stats.SUPPORTED
        assert find(rv, hypothesis, baseline="op_sync").verdict == stats.NOT_SUPPORTED
        assert head.verdict == stats.NOT_SUPPORTED and head.binding_baseline == "op_sync"
        assert head.reason.startswith("NOT SUPPORTED against op_sync")
        assert [p.verdict for p in head.pairwise] == [stats.SUPPORTED, stats.NOT_SUPPORTED]
    assert find(rv, "H1").estimate == pytest.approx(1 - 800 / 900)
    assert {v.baseline for v in rv.verdicts if v.binding} == {"op_sync"}
    assert verdicts.any_not_supported(rv)
    # Short of the threshold against op_sync by an unclear margin: INCONCLUSIVE, still bound by op_sync.
    specs[1] = case("op_sync", latency_s=0.07, payload=(350, 350))
    unclear = verdicts.compute(run_json(specs, blocks=6))
    assert find(unclear, "H2").verdict == stats.INCONCLUSIVE and find(unclear, "H2").binding_baseline == "op_sync"


def test_thresholds_come_from_the_arguments_else_the_run():
    data = run_json(standard(), h1=0.8, h2=0.5)
    assert find(verdicts.compute(data), "H1").verdict == stats.NOT_SUPPORTED
    assert find(verdicts.compute(data), "H2").verdict == stats.NOT_SUPPORTED
    told = verdicts.compute(data, h1=0.3, h2=0.15)
    assert find(told, "H1").verdict == find(told, "H2").verdict == stats.SUPPORTED
    assert (told.h1, told.h2) == (0.3, 0.15)


def test_missing_baseline_or_candidate_is_inconclusive():
    rv = verdicts.compute(run_json([s for s in standard() if s["mode"] not in ("remote_cache", "naive")]))
    for hypothesis in ("H1", "H2"):
        v = find(rv, hypothesis)
        assert v.verdict == stats.INCONCLUSIVE and "no blind baseline" in v.reason and v.binding_baseline is None
    rv = verdicts.compute(run_json([s for s in standard() if s["mode"] != "semantic"]))
    assert "candidate semantic missing" in find(rv, "H2").reason
    assert not verdicts.any_not_supported(rv)


def test_four_blocks_are_inconclusive_whatever_the_rounds():
    rv = verdicts.compute(run_json(standard(), blocks=4, rounds=20))
    assert find(rv, "H2").verdict == stats.INCONCLUSIVE and "too few blocks (4)" in find(rv, "H2").reason
    assert find(rv, "H1").verdict == stats.SUPPORTED


def test_drift_between_blocks_does_not_move_the_verdict():
    steady = verdicts.compute(run_json(standard(), drift=0.0))
    drifting = verdicts.compute(run_json(standard(), drift=0.9))  # blocks up to 1.9x slower, both sides alike
    assert find(drifting, "H2").estimate == pytest.approx(find(steady, "H2").estimate)
    assert find(drifting, "H2").verdict == stats.SUPPORTED


def test_missing_raw_rounds_use_each_blocks_saved_median():
    v = find(verdicts.compute(run_json(standard(), data=False)), "H2", baseline="remote_cache")
    assert v.verdict == stats.SUPPORTED and "raw rounds absent" in v.reason


def test_an_unfinished_block_is_left_out_of_the_pairs():
    data = run_json(standard())
    data["benchmarks"] = [b for b in data["benchmarks"]
                          if not (b["extra_info"]["block"] == 9 and b["extra_info"]["mode"] == "semantic")]
    rv = verdicts.compute(data)
    v = find(rv, "H2", baseline="remote_cache")
    assert v.n_blocks == find(rv, "H2").n_blocks == 9 and "1 unpaired block(s) left out" in v.reason


# ---------------------------------------------------------------- Holm, LOSSY, load

def test_holm_adjusts_pairwise_tests_over_the_run_and_headlines_over_the_runs_headlines():
    # 6 blocks: raw p = 1/64 each; four pairwise H2 tests (2 phases x 2 baselines) make it 4/64 > alpha.
    rv = verdicts.compute(run_json(standard("prefill") + standard("decode"), blocks=6))
    h2 = [v for v in rv.verdicts if v.hypothesis == "H2"]
    assert len(h2) == 4
    assert all(v.p_value == pytest.approx(1 / 64) and v.p_holm == pytest.approx(4 / 64) for v in h2)
    assert {v.verdict for v in h2} == {stats.INCONCLUSIVE}
    assert any("Holm over 4 pairwise H2 tests" in note for note in rv.notes)
    # The intersection-union headline needs no adjustment across its two baselines: its p is the larger raw p,
    # Holm-adjusted over the run's two H2 headlines (2/64 < alpha).
    heads = [h for h in rv.headlines if h.hypothesis == "H2"]
    assert [(h.p_value, h.p_holm, h.verdict) for h in heads] == [
        (pytest.approx(1 / 64), pytest.approx(2 / 64), stats.SUPPORTED)] * 2
    alone = verdicts.compute(run_json(standard("decode")[2:], blocks=6))  # one test: nothing to adjust
    assert find(alone, "H2").p_holm == pytest.approx(1 / 64) and find(alone, "H2").verdict == stats.SUPPORTED


def test_a_lossy_saving_is_labelled_lossy_not_supported():
    rv = verdicts.compute(run_json(standard(agreement=0.8)))
    for hypothesis in ("H1", "H2"):
        v = find(rv, hypothesis)
        assert v.verdict == verdicts.LOSSY and v.token_agreement == 0.8
        assert "token agreement 0.800 < min agreement 1" in v.reason and "otherwise SUPPORTED" in v.reason
    assert verdicts.any_not_supported(rv)
    tolerant = verdicts.compute(run_json(standard(agreement=0.8)), min_agreement=0.8)
    assert find(tolerant, "H1").verdict == stats.SUPPORTED


def test_the_worst_block_decides_the_agreement():
    data = run_json(standard())
    next(b for b in data["benchmarks"] if b["extra_info"]["mode"] == "semantic" and b["extra_info"]["block"] == 4)[
        "extra_info"]["token_agreement_with_local"] = 0.75
    assert find(verdicts.compute(data), "H2").verdict == verdicts.LOSSY


def test_load_above_the_cores_flags_the_block_and_the_verdicts_it_fed():
    rv = verdicts.compute(run_json(standard("prefill") + standard("decode"), loads={3: 2.6}, steals={7: 25.0}))
    (load, steal) = rv.load_warnings
    assert (load.block, load.max_load_avg_1m, load.cores) == (3, 2.6, 2) and "load 2.60 > 2 cores" in load.reason
    assert (steal.block, steal.max_cpu_steal_pct) == (7, 25.0) and "CPU steal 25.0 %" in steal.reason
    assert len(load.verdicts) == 4 and all(d.startswith("H2 gpt2-test") for d in load.verdicts)
    assert "H2 gpt2-test decode (5 steps) vs remote_cache" in load.verdicts
    assert find(rv, "H2", baseline="remote_cache").loaded_blocks == [3, 7]
    assert find(rv, "H1", baseline="remote_cache").loaded_blocks == []
    assert verdicts.compute(run_json(standard(), loads={3: 1.9})).load_warnings == []


# ---------------------------------------------------------------- byte levels (H1 counts each byte once)

def test_h1_is_judged_on_tcp_and_link_bytes_are_only_a_cross_check():
    # Retransmissions inflate the baseline's link bytes: a saving judged there would grow with loss.
    specs = [case("remote_cache", link_extra=5000), case("semantic", latency_s=0.06, payload=(300, 300), link_extra=200)]
    rv = verdicts.compute(run_json(specs))
    h1 = find(rv, "H1")
    assert h1.byte_level == "tcp" and h1.estimate == pytest.approx(1 - 800 / 2200)
    (check,) = rv.cross_checks
    assert check.judged_estimate == h1.estimate and check.link_estimate == pytest.approx(1 - 1000 / 12000)


def test_payload_is_judged_only_without_tcp_and_says_so():
    rv = verdicts.compute(run_json([case("remote_cache", tcp_extra=None),
                                    case("semantic", latency_s=0.06, payload=(300, 300))]))
    h1 = find(rv, "H1", baseline="remote_cache")
    assert h1.byte_level == find(rv, "H1").byte_level == "payload" and h1.estimate == pytest.approx(0.7)
    assert "payload only, not kernel-counted" in h1.reason


def test_varying_byte_rounds_are_noted():
    data = run_json(standard())
    for bench in data["benchmarks"]:
        if bench["extra_info"]["mode"] == "semantic" and bench["extra_info"]["block"] % 2:
            bench["extra_info"]["wire_tcp_bytes_sent_rounds"] = [350, 450, 450]
    h1 = find(verdicts.compute(data), "H1", baseline="remote_cache")
    assert "medians" in h1.reason and h1.ci_low < h1.estimate < h1.ci_high


# ---------------------------------------------------------------- grouping and reading

def test_groups_by_phase_rate_and_decode_steps():
    longer = [case(s["mode"], latency_s=s["latency_s"], payload=s["payload"], decode_steps=20, case=f"{s['mode']}-d20")
              for s in standard()]
    rv = verdicts.compute(run_json(standard("prefill", semantic_latency=0.095) + standard() + longer))
    assert [(v.phase, v.decode_steps) for v in rv.headlines] == [("prefill", 0)] * 2 + [("decode", 5)] * 2 + \
        [("decode", 20)] * 2
    assert find(rv, "H2", "prefill").verdict == stats.NOT_SUPPORTED


def test_an_ablation_label_is_summarised_but_not_judged():
    ablation = case("semantic", latency_s=0.09, label="semantic-no-prune", case="semantic-no-prune-decode")
    rv = verdicts.compute(run_json(standard() + [ablation]))
    assert "semantic-no-prune" in {s.label for s in rv.summaries}
    assert {v.candidate for v in rv.verdicts} == {"semantic"} and len(rv.verdicts) == 4


def test_old_json_without_blocks_still_loads_with_a_note():
    rv = verdicts.compute(legacy(run_json(standard())))
    assert LEGACY_NOTE in rv.notes and rv.run.legacy
    assert find(rv, "H1").verdict == stats.SUPPORTED and find(rv, "H1").binding_baseline == "remote_cache"
    v = find(rv, "H2")
    assert v.verdict == stats.INCONCLUSIVE and "too few blocks (1)" in v.reason
    assert {s.role for s in rv.summaries} == {"local", "blind", "semantic"}
    assert rv.summaries[0].rounds == 30


def test_an_unknown_role_is_refused():
    data = run_json(standard())
    data["benchmarks"][0]["extra_info"]["role"] = "oracle"
    with pytest.raises(verdicts.InvalidBenchmarkJSON, match="role 'oracle'"):
        verdicts.compute(data)


def test_duplicate_blocks_keep_the_first_and_note():
    data = run_json(standard())
    data["benchmarks"].append(json.loads(json.dumps(data["benchmarks"][-1])))
    data["benchmarks"][-1]["stats"]["data"] = [9.0, 9.0, 9.0]
    rv = verdicts.compute(data)
    assert find(rv, "H2").verdict == stats.SUPPORTED
    assert any("duplicate benchmark" in n and "semantic-decode block 9" in n for n in rv.notes)


def test_run_status_and_design_reach_the_conditions():
    rv = verdicts.compute(run_json(standard(), blocks=5, run_status="interrupted", interrupted_by="SIGINT"))
    c = rv.conditions
    assert (c.run_status, c.interrupted_by, c.blocks_planned, c.blocks_measured, c.rounds_per_block) == \
        ("interrupted", "SIGINT", 5, 5, 3)
    assert (c.cores, c.weights, c.cpu, c.commit_id) == (2, ["random"], "Test CPU 9000", "abc123")
    assert not rv.run.complete


# ---------------------------------------------------------------- descriptive tables

def test_taxes_against_local_and_every_blind_baseline():
    rv = verdicts.compute(run_json(standard(), drift=0.5))
    tax = {(t.reference, t.label): t for t in rv.taxes}
    assert {ref for ref, _ in tax} == {"local", "naive", "remote_cache"}
    assert tax["local", "remote_cache"].latency_ratio == pytest.approx(2.0, rel=0.02)
    assert tax["local", "remote_cache"].ratio_ci_low < 2.0 < tax["local", "remote_cache"].ratio_ci_high
    assert tax["local", "remote_cache"].n_blocks == 10
    assert tax["local", "semantic"].bytes_ratio is None
    assert tax["remote_cache", "semantic"].bytes_ratio == pytest.approx(800 / 2200)


def sweep():
    """Reductions 0.4, 0.2, 0.1 at 100 Mbit, 1 Gbit, 10 Gbit; local only unshaped."""
    specs = [case("local", latency_s=0.05)]
    for rate, bps, sem in (("100mbit", 10**8, 0.06), ("1gbit", 10**9, 0.08), ("10gbit", 10**10, 0.09)):
        specs += [case("remote_cache", rate=rate, bps=bps), case("semantic", latency_s=sem, payload=(300, 300),
                                                                   rate=rate, bps=bps)]
    return run_json(specs, link="netns", noise=0.0)


def test_rate_sweep_crossover_and_local_reference():
    rv = verdicts.compute(sweep())
    assert len(rv.verdicts) == 6  # the unshaped group holds only local: no hypothesis there
    assert rv.conditions.link_rates == ["100mbit", "1gbit", "10gbit"]
    assert [find(rv, "H2", rate=r).verdict for r in ("100mbit", "1gbit", "10gbit")] == \
        [stats.SUPPORTED, stats.SUPPORTED, stats.NOT_SUPPORTED]
    (c,) = rv.crossovers
    assert c.baseline == "remote_cache" and c.rate_bps == pytest.approx(10 ** 9.5) and c.holds_below
    local_taxes = [t for t in rv.taxes if t.reference == "local" and t.link_rate == "1gbit"]
    assert {t.label for t in local_taxes} == {"remote_cache", "semantic"}


def test_rtt_projection_covers_every_baseline():
    specs = standard()
    specs[3]["round_trips"], specs[2]["round_trips"], specs[1]["round_trips"] = 2, 6, 12
    (p,) = verdicts.compute(run_json(specs, noise=0.0, drift=0.0)).rtt_projections
    assert p.rtts_us == pytest.approx([10, 100, 1000])
    assert p.projected_ms["semantic"] == pytest.approx([60.02, 60.2, 62.0])
    assert p.projected_ms["remote_cache"] == pytest.approx([100.06, 100.6, 106.0])
    assert set(p.reductions) == {"naive", "remote_cache"}
    assert p.reductions["remote_cache"][2] == pytest.approx(1 - 62 / 106)
    assert p.reductions["naive"][2] == pytest.approx(1 - 62 / 512)


def test_summaries_and_json_dump():
    rv = verdicts.compute(run_json(standard(), failures=[{"name": "x", "reason": "OOM"}], noise=0.0, drift=0.0))
    by_label = {s.label: s for s in rv.summaries}
    assert list(by_label) == ["local", "naive", "remote_cache", "semantic"]
    assert by_label["semantic"].median_latency_ms == pytest.approx(60.0)
    assert (by_label["semantic"].blocks, by_label["semantic"].rounds) == (10, 30)
    assert by_label["semantic"].bytes_sent_per_round == 400 and by_label["local"].bytes_received_per_round == 0
    assert rv.failures == [{"name": "x", "reason": "OOM"}]
    dumped = json.loads(json.dumps(rv.to_dict()))
    assert dumped["verdicts"][0]["binding"] is True and dumped["run"]["blocks"] == 10
    assert dumped["headlines"][0]["binding_baseline"] == "remote_cache"
    assert [p["baseline"] for p in dumped["headlines"][0]["pairwise"]] == ["naive", "remote_cache"]


def test_compute_is_reproducible():
    data = run_json(standard())
    assert verdicts.compute(data, seed=3).to_dict() == verdicts.compute(data, seed=3).to_dict()


def test_non_semgap_benchmarks_are_ignored():
    other = {"name": "test_other", "stats": {"median": 1.0}, "extra_info": {}}
    data = run_json(standard())
    data["benchmarks"].append(other)
    assert len(verdicts.compute(data).summaries) == 4
    assert verdicts.compute({"benchmarks": [other]}).notes == ["no semgap benchmarks (extra_info.mode) found"]


@pytest.mark.parametrize("bad", [
    [],
    {"benchmarks": "nope"},
    {"machine_info": {}},
    {"benchmarks": [42]},
    {"benchmarks": [{"name": "x", "extra_info": {"mode": "semantic", "phase": "decode"}}]},
    {"benchmarks": [{"name": "x", "stats": {"data": [0.1, -1]}, "extra_info": {"mode": "semantic", "phase": "decode"}}]},
    {"benchmarks": [{"name": "x", "stats": {"data": [0.1]}, "extra_info": {"mode": "semantic", "phase": "decode",
                                                                          "block": -1, "payload_bytes_sent": 1,
                                                                          "payload_bytes_received": 1}}]},
])
def test_invalid_input_raises(bad):
    with pytest.raises(verdicts.InvalidBenchmarkJSON):
        verdicts.compute(bad)


def test_any_blind_mode_joins_the_headline_and_op_replay_reads_after_op_pipelined():
    specs = [case("op_replay", latency_s=0.065, payload=(350, 350)), case("remote_cache", latency_s=0.1),
             case("semantic", latency_s=0.06, payload=(300, 300)), case("op_pipelined", latency_s=0.2)]
    rv = verdicts.compute(run_json(specs))  # synthetic rows of an unlisted mode have role "blind"
    assert [s.label for s in rv.summaries] == ["remote_cache", "op_pipelined", "op_replay", "semantic"]
    head = find(rv, "H2")
    assert head.baselines == ["remote_cache", "op_pipelined", "op_replay"] and head.binding_baseline == "op_replay"
    assert head.verdict == stats.NOT_SUPPORTED


@pytest.mark.parametrize("broken", ["remote_cache", "semantic"])
def test_a_case_that_failed_its_token_check_makes_every_verdict_that_needs_it_invalid(broken):
    """A lossless baseline or candidate whose tokens left local's ran another computation: no verdict may use it."""
    data = run_json(standard())
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if info["mode"] == broken and info["block"] == 4:
            info["lossless"], info["first_mismatch"] = True, "measured round 0, token 2: 7 where local has 9"
    rv = verdicts.compute(data, n_resamples=200)
    needing = [v for v in rv.verdicts if broken in (v.baseline, "semantic")]
    assert needing and all(v.verdict == verdicts.INVALID for v in needing)
    assert all(f"{broken}-decode generated other tokens than local (block 4, measured round 0, token 2" in v.reason
               for v in needing)
    others = [v for v in rv.verdicts if v not in needing]
    assert all(v.verdict != verdicts.INVALID for v in others)
    assert all(h.verdict == verdicts.INVALID for h in rv.headlines) and verdicts.any_not_supported(rv)
