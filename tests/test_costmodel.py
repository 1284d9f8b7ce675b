"""Tests of semgap.analysis.costmodel: round trips x RTT + bytes / rate + compute, checked against measurement."""
import pytest

from semgap.analysis import costmodel, frames, verdicts

from semgap.report import writer
from semgap.analysis.costmodel import CaseCost, Calibration

from .markdown import tables
from .synthetic import calibration, case, run_json

CALIBRATION = Calibration(transport="tcp", link="netns", round_trip_s=50e-6, rate_bytes_per_s=1e9)


def cost(label="remote_cache", measured_ms=10.0, round_trips=5, bytes_per_round=1e6, compute_ms=2.0, bps=None, **kw):
    return CaseCost(model="gpt2-test", phase="decode", link_rate=None if bps is None else f"{bps}bit",
                    link_rate_bps=bps, decode_steps=5, label=label, measured_ms=measured_ms, round_trips=round_trips,
                    bytes_per_round=bytes_per_round, compute_ms=compute_ms, **kw)


def test_the_prediction_adds_round_trips_bytes_and_compute():
    p = costmodel.predict(cost(measured_ms=3.25), CALIBRATION)
    assert (p.round_trip_ms, p.transfer_ms, p.compute_ms) == pytest.approx((0.25, 1.0, 2.0))
    assert p.predicted_ms == pytest.approx(3.25) and p.error == pytest.approx(0.0) and p.miss is None
    shaped = costmodel.predict(cost(bps=10**8), CALIBRATION)  # 100 Mbit/s: 12.5 MB/s, slower than 1 GB/s
    assert shaped.rate_bytes_per_s == 12.5e6 and shaped.transfer_ms == pytest.approx(80.0)
    assert costmodel.predict(cost(bps=10**11), CALIBRATION).rate_bytes_per_s == 1e9  # a shaper above what TCP reaches


def test_a_sweep_the_model_describes_fits_it():
    cases = []
    for bps in (10**8, 10**9, 10**10):
        for label, trips, size in (("remote_cache", 5, 1e6), ("semantic", 5, 2e4), ("op_pipelined", 6, 1e6)):
            predicted = costmodel.predict(cost(label, 1.0, trips, size, bps=bps), CALIBRATION).predicted_ms
            cases.append(cost(label, predicted * 1.05, trips, size, bps=bps))  # measured 5 % above the model
    check = costmodel.check(cases, CALIBRATION)
    assert all(p.miss is None for p in check.predictions)
    (fit,) = check.fits
    assert fit.points == 9 and fit.r_squared > 0.99 and fit.max_abs_error == pytest.approx(1 - 1 / 1.05)


def test_the_model_gets_op_level_remoting_wrong_and_says_why():
    """op_sync pays per-op costs the model has no term for: measured 4x the prediction, R^2 far below 1."""
    op_sync = cost("op_sync", measured_ms=40.0, round_trips=265, bytes_per_round=3e5, compute_ms=5.0,
                   ops_forwarded=265)
    remote_cache = cost("remote_cache", measured_ms=7.5, round_trips=5, bytes_per_round=1e3, compute_ms=7.0)
    check = costmodel.check([op_sync, remote_cache], CALIBRATION)
    miss, fits = check.predictions[0], check.predictions[1]
    assert miss.error < -0.5 and "per-op costs outside the timers (265 ops per round" in miss.miss
    assert fits.miss is None
    assert check.fits[0].r_squared < 0.5


def test_misses_name_slow_start_and_overlap():
    bulk = costmodel.predict(cost(measured_ms=50.0, round_trips=1, bytes_per_round=2e5), CALIBRATION)
    assert "TCP slow start and window limits (200 KB per round trip, above the 14.5 KB initial window of netns)" \
        in bulk.miss
    loopback = Calibration("tcp", "loopback", 50e-6, 1e9)  # a 64 KB MSS: 200 KB fit in its initial window
    assert "slow start" not in costmodel.predict(cost(measured_ms=50.0, round_trips=1, bytes_per_round=2e5),
                                                 loopback).miss
    pipelined = costmodel.predict(cost("op_pipelined", measured_ms=1.0, round_trips=100, posts=40), CALIBRATION)
    assert pipelined.error > 0 and pipelined.miss.startswith("40 posted requests per round overlap")


def test_r_squared():
    assert costmodel.r_squared([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert costmodel.r_squared([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0  # no better than the mean
    assert costmodel.r_squared([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -3.0
    assert costmodel.r_squared([1.0], [1.0]) is None and costmodel.r_squared([2.0, 2.0], [1.0, 3.0]) is None


@pytest.mark.parametrize("semgap,reason", [
    ({}, "the run has no transport calibration"),
    ({"calibration": {}}, "the run has no transport calibration"),
    ({"calibration": calibration("rpc"), "transport": "tcp"}, "did not measure the run's transport 'tcp'"),
    ({"calibration": calibration("tcp", small_call_us=None), "transport": "tcp"}, "lacks its small-call time"),
])
def test_a_run_without_a_usable_calibration_cannot_check_the_model(semgap, reason):
    assert reason in costmodel.calibration_of({"semgap": semgap})


def test_the_calibration_of_the_runs_transport():
    found = costmodel.calibration_of({"semgap": {"calibration": calibration("tcp", 40.0, 2e9, "netns"),
                                                 "transport": "tcp"}})
    assert found == Calibration("tcp", "netns", pytest.approx(40e-6), 2e9)
    assert costmodel.calibration_of({"semgap": {"calibration": calibration()}}).transport == "rpc"  # the default


def test_the_report_shows_measured_against_predicted_per_case_and_rate():
    specs = [case("local", latency_s=0.01)]
    for rate, bps in (("100mbit", 10**8), ("1gbit", 10**9)):
        # 2 x 100 us round trips + 1.5 ms server + (1,100 + 1,100) B / rate
        specs += [case("remote_cache", latency_s=0.0017 + 2200 * 8 / bps, rate=rate, bps=bps, round_trips=2),
                  case("semantic", latency_s=0.003, payload=(300, 300), rate=rate, bps=bps, round_trips=2)]
    data = run_json(specs, noise=0.0, drift=0.0, calibration=calibration("rpc", 100.0, 1e9, "netns"))
    md = writer.markdown(verdicts.compute(data, n_resamples=200), data)
    points, (fit,) = tables(md, "Cost model: round trips x RTT + bytes / rate + compute")
    assert [(p["rate"], p["case"], p["rate bit/s"]) for p in points] == [
        ("100mbit", "remote_cache", "100 Mbit/s"), ("100mbit", "semantic", "100 Mbit/s"),
        ("1gbit", "remote_cache", "1 Gbit/s"), ("1gbit", "semantic", "1 Gbit/s")]
    assert [p["error"] for p in points if p["case"] == "remote_cache"] == ["+0.0%", "+0.0%"]
    assert points[1]["predicted ms"] == "1.76" and points[1]["error"] == "-41.2%"  # 0.2 + 1.5 + 800 B / 12.5 MB/s
    assert points[1]["where it misses"].startswith("client time outside the codec and tracing timers")
    assert fit["points"] == "4" and "local" not in {p["case"] for p in points}
    assert "Calibration (rpc on netns): a small call takes 100.0 us (the RTT)" in md


def test_compute_is_the_server_and_both_codec_ends_and_tracing():
    data = run_json([case("local"), case("op_sync", round_trips=53, server_codec_ms=0.5, encode_ms=0.25,
                                         decode_ms=0.125, client_tracing_ms=4.0, rpc_posts=2, ops_forwarded=53)])
    rv = verdicts.compute(data, n_resamples=200)
    (op_sync,) = costmodel.case_costs(rv.summaries, frames.rounds(data))  # local crosses no network: no cost
    assert op_sync.compute_ms == pytest.approx(1.5 + 0.5 + 0.25 + 0.125 + 4.0)
    assert (op_sync.round_trips, op_sync.bytes_per_round, op_sync.posts, op_sync.ops_forwarded) == (53, 2200, 2, 53)
