"""A remote round taken apart (issue 20 item 2): the server's own clocks, asked for between rounds, and the
parts of every remote round adding up to pytest-benchmark's time of it."""
from __future__ import annotations

import copy
import json

import pytest

from semgap.analysis import rounds, verdicts
from semgap.client.modes.base import ModeContext
from semgap.client.modes.remote_cache import RemoteCacheMode
from semgap.report import round_parts
from .inner import QUICK, new_run_dirs, run_json, run_pytest

CALL_ONLY = ("remote_cache", "semantic")  # every request waits for its answer: the server's time is inside the wait


def test_the_server_times_each_request_and_says_so_outside_the_counted_bytes(preset_model, client):
    context = ModeContext(preset_model, client)
    mode = RemoteCacheMode(context)
    mode.setup()
    client.server_time()  # start from here
    before = client.counter.snapshot()
    _, state = mode.prefill(list(range(16)))
    mode.release(state)
    spent = client.counter.since(before)
    server = client.server_time()
    assert server.requests == 2  # the prefill and the release
    assert 0 < server.decode_ms and 0 < server.encode_ms and 0 <= server.queue_ms
    assert server.decode_ms + server.encode_ms + server.queue_ms < server.handler_ms < spent.wait_ms
    assert client.counter.since(before) == spent, "asking for the server's time must not count as the round's bytes"
    assert client.server_time().requests == 0  # each ask starts the clock again


@pytest.mark.slow
def test_every_remote_round_is_taken_apart_and_adds_up_to_pytest_benchmarks_time(suite):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-blocks=2", "--semgap-plots=on",
                        "--semgap-modes=local,remote_cache,semantic,op_sync,op_pipelined")
    result.assert_outcomes(passed=20)
    [run_dir] = new_run_dirs(suite.path)
    output = run_json(run_dir)
    rv = verdicts.compute(output)
    parts = {(p.label, p.phase): p for p in rv.round_parts}
    assert set(parts) == {(mode, phase) for mode in ("remote_cache", "semantic", "op_sync", "op_pipelined")
                          for phase in ("prefill", "decode")}
    for (label, phase), p in parts.items():
        assert p.rounds == 6, (label, phase)  # 2 blocks x 3 rounds
        assert p.sums, f"{label} {phase}: the parts sum to {p.total_ms:.3f} ms, pytest-benchmark timed {p.benchmark_ms:.3f}"
        assert p.parts["server compute"] > 0 and p.parts["server decode"] > 0 and p.parts["client codec"] > 0
        assert p.parts["client compute"] > 0, (label, phase, p.parts)
    for label in CALL_ONLY:
        for phase in ("prefill", "decode"):
            assert parts[label, phase].parts["server encode"] > 0, (label, phase)  # blind answers are timed too
    # Per round, not only on average: a call-only round's server time lies inside its wait (the untimed
    # prefill of a decode round must not land on the round's clock).
    for bench in output["benchmarks"]:
        info = bench["extra_info"]
        if info.get("mode") in CALL_ONLY:
            for handler, wait in zip(info["server_handler_ms_rounds"], info["wait_ms_rounds"]):
                assert 0 < handler < wait, (info["case"], handler, wait)
        if info.get("mode") == "local":
            assert info["server_handler_ms"] is None and info["wait_ms"] is None
    shares = {(s.phase, s.baseline) for s in rounds.network_shares(rv.round_parts)}
    assert shares == {(phase, base) for phase in ("prefill", "decode") for base in ("remote_cache", "op_sync",
                                                                                    "op_pipelined")}
    report = (run_dir / "report.md").read_text()
    assert "## A round taken apart" in report and "network-share reduction" in report and "Warning: the parts" not in report
    assert (run_dir / "round_parts.png").stat().st_size > 0 and "![round_parts.png](round_parts.png)" in report
    assert json.loads((run_dir / "verdicts.json").read_text())["round_parts"], "verdicts.json carries the parts"

    # A round clock that missed a fifth of every remote round is caught, by name.
    skewed = copy.deepcopy(output)
    for bench in skewed["benchmarks"]:
        if bench["extra_info"].get("mode") == "semantic" and bench["extra_info"].get("phase") == "decode":
            bench["extra_info"]["round_ms_rounds"] = [v * 0.8 for v in bench["extra_info"]["round_ms_rounds"]]
    warning = round_parts.section(verdicts.compute(skewed))[0].before[0]
    assert warning.startswith("**Warning: the parts of 1 case(s) miss") and "semantic decode (-20" in warning, warning
