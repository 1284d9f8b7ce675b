"""Tests of semgap.verdicts on synthetic pytest-benchmark JSON dicts."""
import json

import numpy as np
import pytest

from semgap import stats, verdicts


def rounds(median_s, rel_spread=0.01, n=20):
    return [float(x) for x in median_s * (1.0 + rel_spread * np.linspace(-1.0, 1.0, n))]


def bench(mode, phase="decode", latency_s=0.1, n=20, spread=0.01, payload=(1000, 1000), tcp=None,
          link=None, rate=None, bps=None, round_trips=4, model="tiny-gpt2", data=True, levels=None):
    """One synthetic pytest-benchmark entry; byte tuples are (sent, received) per round."""
    extra = {"mode": mode, "phase": phase, "model": model, "device": "cpu", "prompt_tokens": 8,
             "decode_steps": 4, "link": "netns" if rate else "loopback", "link_rate": rate,
             "link_rate_bps": bps, "rpc_round_trips": round_trips, "server_compute_ms": 1.5,
             "encode_ms": 0.1, "decode_ms": 0.1, "token_agreement_with_local": 1.0,
             "setup_bytes_sent": 10**6, "setup_bytes_received": 0}
    if mode == "local":
        payload, tcp, link = (0, 0), None, None
    level_values = {"payload_bytes": payload, "wire_tcp_bytes": tcp, "wire_link_bytes": link}
    for prefix, pair in level_values.items():
        for direction, value in zip(("sent", "received"), pair or (None, None)):
            extra[f"{prefix}_{direction}"] = value
            extra[f"{prefix}_{direction}_rounds"] = None if value is None else [value] * n
    extra["wire_levels"] = levels or [lv for lv, p in (("payload", payload), ("tcp", tcp), ("link", link)) if p]
    lat = rounds(latency_s, spread, n)
    st = {"min": min(lat), "max": max(lat), "mean": float(np.mean(lat)), "stddev": float(np.std(lat)),
          "median": float(np.median(lat)), "rounds": n}
    if data:
        st["data"] = lat
    name = f"test_semantic_gap[{mode}-{phase}{'-' + rate if rate else ''}]"
    return {"name": name, "group": phase, "params": {}, "stats": st, "extra_info": extra}


def run_json(benches, **semgap):
    meta = {"model": "tiny-gpt2", "link": "loopback", "device": "cpu",
            "versions": {"python": "3.11.7", "torch": "2.3.0"}, "failures": []}
    meta.update(semgap)
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU 9000"}, "python_version": "3.11.7"},
            "commit_info": {"id": "abc123", "dirty": True}, "benchmarks": benches,
            "datetime": "2025-01-01T00:00:00", "version": "5.3.0", "semgap": meta}


def standard(phase="decode", sem_latency=0.06, sem_bytes=(300, 300), **kw):
    return [bench("local", phase, 0.05, **kw), bench("naive", phase, 0.5, payload=(10**6, 10**5), **kw),
            bench("remote_cache", phase, 0.1, payload=(1000, 1000), **kw),
            bench("semantic", phase, sem_latency, payload=sem_bytes, **kw)]


def find(rv, hyp, phase="decode", rate=None):
    (v,) = [v for v in rv.verdicts if v.hypothesis == hyp and v.phase == phase and v.link_rate == rate]
    return v


# ---------------------------------------------------------------- hypotheses

def test_supported_run():
    rv = verdicts.compute(run_json(standard()))
    h1, h2 = find(rv, "H1"), find(rv, "H2")
    assert h1.estimate == pytest.approx(0.7) and h1.verdict == stats.SUPPORTED
    assert h2.estimate == pytest.approx(0.4) and h2.verdict == stats.SUPPORTED
    assert h2.p_value < 0.05
    assert not verdicts.any_not_supported(rv)


def test_not_supported_run():
    rv = verdicts.compute(run_json(standard(sem_latency=0.095, sem_bytes=(900, 900))))
    assert find(rv, "H1").estimate == pytest.approx(0.1)
    assert find(rv, "H1").verdict == stats.NOT_SUPPORTED
    assert find(rv, "H2").verdict == stats.NOT_SUPPORTED
    assert verdicts.any_not_supported(rv)


def test_thresholds_are_parameters():
    rv = verdicts.compute(run_json(standard()), h1=0.8, h2=0.5)
    assert find(rv, "H1").verdict == stats.NOT_SUPPORTED
    assert find(rv, "H2").verdict == stats.NOT_SUPPORTED


def test_missing_baseline_is_inconclusive():
    benches = [b for b in standard() if b["extra_info"]["mode"] != "remote_cache"]
    rv = verdicts.compute(run_json(benches))
    for hyp in ("H1", "H2"):
        v = find(rv, hyp)
        assert v.verdict == stats.INCONCLUSIVE
        assert "baseline remote_cache missing" in v.reason
    assert not verdicts.any_not_supported(rv)


def test_three_rounds_is_inconclusive_via_compute():
    rv = verdicts.compute(run_json(standard(n=3)))
    assert find(rv, "H2").verdict == stats.INCONCLUSIVE
    assert "too few rounds" in find(rv, "H2").reason
    assert find(rv, "H1").verdict == stats.SUPPORTED


def test_missing_raw_data_is_inconclusive_and_says_why():
    rv = verdicts.compute(run_json(standard(data=False)))
    assert find(rv, "H2").verdict == stats.INCONCLUSIVE
    assert "--benchmark-save-data" in find(rv, "H2").reason


def test_groups_by_phase():
    rv = verdicts.compute(run_json(standard("prefill", sem_latency=0.095) + standard("decode")))
    assert find(rv, "H2", "prefill").verdict == stats.NOT_SUPPORTED
    assert find(rv, "H2", "decode").verdict == stats.SUPPORTED
    assert [v.phase for v in rv.verdicts] == ["prefill", "prefill", "decode", "decode"]


def test_compute_is_reproducible():
    data = run_json(standard())
    assert verdicts.compute(data, seed=3).to_dict() == verdicts.compute(data, seed=3).to_dict()


# ---------------------------------------------------------------- byte level

def with_levels(tcp_sem, link_sem, tcp_base, link_base):
    return [bench("remote_cache", payload=(1000, 1000), tcp=tcp_base, link=link_base),
            bench("semantic", latency_s=0.06, payload=(300, 300), tcp=tcp_sem, link=link_sem)]


def test_level_link_preferred():
    rv = verdicts.compute(run_json(with_levels((500, 500), (600, 600), (1100, 1100), (1200, 1200))))
    h1 = find(rv, "H1")
    assert h1.byte_level == "link"
    assert h1.estimate == pytest.approx(0.5)


def test_level_tcp_when_link_missing_on_one_side():
    rv = verdicts.compute(run_json(with_levels((500, 500), None, (1100, 1100), (1200, 1200))))
    h1 = find(rv, "H1")
    assert h1.byte_level == "tcp"
    assert h1.estimate == pytest.approx(1 - 1000 / 2200)
    assert "payload only" not in h1.reason


def test_level_payload_is_noted():
    rv = verdicts.compute(run_json(with_levels(None, None, None, None)))
    h1 = find(rv, "H1")
    assert h1.byte_level == "payload"
    assert "payload only, not kernel-counted" in h1.reason


def test_wire_levels_list_is_respected():
    benches = with_levels((500, 500), None, (1100, 1100), None)
    for b in benches:
        b["extra_info"]["wire_levels"] = ["payload"]
    assert find(verdicts.compute(run_json(benches)), "H1").byte_level == "payload"


def test_varying_byte_rounds_are_noted():
    benches = standard()
    benches[3]["extra_info"]["payload_bytes_sent_rounds"] = [250] * 10 + [350] * 10
    h1 = find(verdicts.compute(run_json(benches)), "H1")
    assert "medians" in h1.reason
    assert h1.ci_low < h1.estimate < h1.ci_high


# ---------------------------------------------------------------- taxes, sweeps, projections

def test_taxes_against_local_and_naive():
    rv = verdicts.compute(run_json(standard()))
    tax = {(t.reference, t.mode): t for t in rv.taxes}
    assert set(tax) == {("local", "naive"), ("local", "remote_cache"), ("local", "semantic"),
                        ("naive", "local"), ("naive", "remote_cache"), ("naive", "semantic")}
    assert tax["local", "remote_cache"].latency_ratio == pytest.approx(2.0)
    assert tax["local", "remote_cache"].ratio_ci_low < 2.0 < tax["local", "remote_cache"].ratio_ci_high
    assert tax["local", "semantic"].bytes_ratio is None
    assert tax["naive", "semantic"].bytes_ratio == pytest.approx(600 / 1_100_000)
    assert tax["naive", "semantic"].latency_ratio == pytest.approx(0.12)


def sweep():
    """Reductions 0.4, 0.2, 0.1 at 100 Mbit, 1 Gbit, 10 Gbit; local only unshaped."""
    benches = [bench("local", latency_s=0.05)]
    for rate, bps, sem in (("100mbit", 10**8, 0.06), ("1gbit", 10**9, 0.08), ("10gbit", 10**10, 0.09)):
        benches.append(bench("remote_cache", latency_s=0.1, rate=rate, bps=bps))
        benches.append(bench("semantic", latency_s=sem, payload=(300, 300), rate=rate, bps=bps))
    return run_json(benches, link="netns", link_rates=["100mbit", "1gbit", "10gbit"])


def test_rate_sweep_crossover_and_local_reference():
    rv = verdicts.compute(sweep())
    assert len(rv.verdicts) == 6  # the unshaped group holds only local: no hypothesis there
    assert rv.conditions.link_rates == ["100mbit", "1gbit", "10gbit"]
    assert [find(rv, "H2", rate=r).verdict for r in ("100mbit", "1gbit", "10gbit")] == \
        [stats.SUPPORTED, stats.SUPPORTED, stats.NOT_SUPPORTED]
    (c,) = rv.crossovers
    assert c.rate_bps == pytest.approx(10 ** 9.5)
    assert c.holds_below and c.interpolated
    local_taxes = [t for t in rv.taxes if t.reference == "local" and t.link_rate == "1gbit"]
    assert {t.mode for t in local_taxes} == {"remote_cache", "semantic"}
    assert rv.conditions.link == "netns"


def test_rtt_projection():
    benches = standard()
    benches[3]["extra_info"]["rpc_round_trips"] = 2
    benches[2]["extra_info"]["rpc_round_trips"] = 6
    (p,) = verdicts.compute(run_json(benches)).rtt_projections
    assert p.rtts_us == pytest.approx([10, 100, 1000])
    assert p.projected_ms["semantic"] == pytest.approx([60.02, 60.2, 62.0])
    assert p.projected_ms["remote_cache"] == pytest.approx([100.06, 100.6, 106.0])
    assert p.semantic_reduction[2] == pytest.approx(1 - 62 / 106)


# ---------------------------------------------------------------- input handling and conditions

def test_summaries_and_conditions():
    data = run_json(standard(), failures=[{"name": "test_x[naive-prefill]", "reason": "OOM"}])
    rv = verdicts.compute(data)
    by_mode = {s.mode: s for s in rv.summaries}
    assert [s.mode for s in rv.summaries] == ["local", "naive", "remote_cache", "semantic"]
    assert by_mode["semantic"].median_latency_ms == pytest.approx(60.0)
    assert by_mode["semantic"].bytes_sent_per_round == 300
    assert by_mode["local"].bytes_received_per_round == 0
    c = rv.conditions
    assert (c.cpu, c.commit_id, c.commit_dirty, c.torch_version) == ("Test CPU 9000", "abc123", True, "2.3.0")
    assert c.rounds_min == c.rounds_max == 20
    assert rv.failures == [{"name": "test_x[naive-prefill]", "reason": "OOM"}]
    json.dumps(rv.to_dict())


def test_non_semgap_benchmarks_are_ignored():
    other = {"name": "test_other", "stats": {"median": 1.0}, "extra_info": {}}
    rv = verdicts.compute(run_json(standard() + [other]))
    assert len(rv.summaries) == 4
    assert verdicts.compute(run_json([other])).notes == ["no semgap benchmarks (extra_info.mode) found"]


def test_duplicates_keep_first_and_note():
    rv = verdicts.compute(run_json(standard() + [bench("semantic", latency_s=0.5)]))
    assert find(rv, "H2").estimate == pytest.approx(0.4)
    assert any("duplicate semantic" in n for n in rv.notes)


@pytest.mark.parametrize("bad", [
    [],
    {"benchmarks": "nope"},
    {"machine_info": {}},
    {"benchmarks": [42]},
    {"benchmarks": [{"name": "x", "extra_info": {"mode": "semantic", "phase": "decode"}}]},
    {"benchmarks": [{"name": "x", "stats": {"data": [0.1, -1]},
                     "extra_info": {"mode": "semantic", "phase": "decode"}}]},
])
def test_invalid_input_raises(bad):
    with pytest.raises(verdicts.InvalidBenchmarkJSON):
        verdicts.compute(bad)
