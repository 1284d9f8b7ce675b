"""The transport calibration: its benchmarks in a real run, its JSON section and report table, and its peers gone after."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from semgap.bench import calibration

from semgap.analysis import measurements

from semgap.wire import transport
from semgap.bench.testbed.netns import link_available
from semgap.bench.testbed.serverproc import ServerProcess

from .conftest import CALIBRATION, INNER_CONFTEST
from .inner import latest_json, run_pytest
from .markdown import rows

LINK_OK, _ = link_available()
QUICK = ("--semgap-rounds", "2", "--semgap-warmup-rounds", "1", "--semgap-prompt-tokens", "16",
         "--semgap-decode-steps", "2", "--semgap-modes", "remote_cache", "--semgap-phases", "decode",
         "-p", "no:cacheprovider")
PROBES = {probe.id for probe in calibration.probes()}


def bench(transport_name: str, kind: str, median_us: float, raw_us: float, **info) -> dict:
    return {"extra_info": {"calibration": kind, "transport": transport_name, "median_us": median_us,
                           "raw_tcp_interleaved_median_us": raw_us, "message_bytes": 8 if kind == "small" else 25_000_000,
                           "peer": "calibration peer", "link": "loopback", **info}}


def test_summarize_reads_ratios_and_ignores_other_benchmarks():
    benchmarks = [
        {"extra_info": {"mode": "semantic", "phase": "decode"}},
        bench("raw", "small", 20.0, 20.0, ratio_to_raw_tcp=1.0, framing_bytes_sent_per_request=0.0,
              framing_bytes_received_per_request=0.0),
        bench("tcp", "small", 30.0, 25.0, ratio_to_raw_tcp=1.2, framing_bytes_sent_per_request=14.0,
              framing_bytes_received_per_request=9.0),
        bench("raw", "bulk", 10_000.0, 10_000.0, throughput_bytes_per_s=2.5e9, fraction_of_raw_throughput=1.0),
        bench("tcp", "bulk", 12_500.0, 10_000.0, throughput_bytes_per_s=2e9, fraction_of_raw_throughput=0.8),
    ]
    assert calibration.summarize(benchmarks) == {"link": "loopback", "transports": {
        "raw": {"small_call_us": 20.0, "raw_tcp_alongside_us": 20.0, "ratio_to_raw_tcp": 1.0,
                "throughput_bytes_per_s": 2.5e9, "raw_tcp_alongside_bytes_per_s": 2.5e9,
                "fraction_of_raw_throughput": 1.0, "framing_bytes_sent_per_request": 0.0,
                "framing_bytes_received_per_request": 0.0, "peer": "calibration peer"},
        "tcp": {"small_call_us": 30.0, "raw_tcp_alongside_us": 25.0, "ratio_to_raw_tcp": 1.2,
                "throughput_bytes_per_s": 2e9, "raw_tcp_alongside_bytes_per_s": 2.5e9,
                "fraction_of_raw_throughput": 0.8, "framing_bytes_sent_per_request": 14.0,
                "framing_bytes_received_per_request": 9.0, "peer": "calibration peer"},
    }}
    assert calibration.summarize(benchmarks[:1]) == {}


# In the inner session: which calibration peers are alive when the experiment's benchmarks start.
PEERS_AT_EXPERIMENT = INNER_CONFTEST + r"""
import os
import pytest
from pathlib import Path

@pytest.fixture(autouse=True)
def record_live_peers(request):
    if "test_semantic_gap" in request.node.name:
        live = []  # this run's peers: started from this directory (other suites may run in parallel)
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if b"semgap.server.calibration_peer" in (proc / "cmdline").read_bytes().split(b"\0") and \
                        os.readlink(proc / "cwd") == os.getcwd():
                    live.append(proc.name)
            except OSError:
                pass
        Path("peers-at-experiment.txt").write_text(" ".join(live))
"""


def peer_processes(cwd: Path) -> list[int]:
    """Live calibration peers started from cwd."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"semgap.server.calibration_peer" in (proc / "cmdline").read_bytes().split(b"\0") and \
                    os.readlink(proc / "cwd") == os.path.realpath(cwd):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
# tcp over the veth where a namespace can be built (else on loopback), rpc on loopback (it refuses any
# other address); test_on_ipv6_rpc_is_left_out_and_says_why calibrates tcp on loopback.
@pytest.mark.parametrize("link, transport_name", [("netns" if LINK_OK else "loopback", "tcp"), ("loopback", "rpc")])
def test_every_run_calibrates_each_transport_against_raw_tcp(suite, link, transport_name):
    suite.makepyfile(test_calibration=CALIBRATION)
    suite.makeconftest(PEERS_AT_EXPERIMENT)
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-link", link, "--semgap-calibrate-rpc",
                        "--semgap-transport", transport_name, timeout_s=600)
    result.assert_outcomes(passed=len(PROBES) + 1)
    output = latest_json(suite.path)
    found = {bench["param"]: bench["extra_info"] for bench in output["benchmarks"]
             if bench["name"].startswith("test_calibration")}
    assert set(found) == PROBES
    for probe_id, info in found.items():
        assert info["median_us"] > 0 and info["link"] == link, probe_id
    # The run's own transport is measured on the run's own server only where a process can hold no second one.
    assert found["rpc-small"]["peer"] == ("the run's server" if transport_name == "rpc" else "calibration peer")
    assert found["tcp-small"]["peer"] == "calibration peer"
    for name in ("raw", *transport.TRANSPORTS):  # ratios against the raw rounds alongside (raw: itself)
        small, bulk = found[f"{name}-small"], found[f"{name}-25MB"]
        assert small["ratio_to_raw_tcp"] == pytest.approx(small["median_us"] / small["raw_tcp_interleaved_median_us"])
        assert bulk["fraction_of_raw_throughput"] == pytest.approx(bulk["raw_tcp_interleaved_median_us"] / bulk["median_us"])
        assert bulk["throughput_bytes_per_s"] == pytest.approx(25e6 / bulk["median_us"] * 1e6)
    assert found["raw-small"]["ratio_to_raw_tcp"] == 1
    # Framing measured in the run: exact for raw TCP and tcp (10 + len("echo") sent, 9 received, and a 16-byte MAC each way).
    assert (found["raw-small"]["framing_bytes_sent_per_request"], found["raw-small"]["framing_bytes_received_per_request"]) == (0, 0)
    assert (found["tcp-small"]["framing_bytes_sent_per_request"], found["tcp-small"]["framing_bytes_received_per_request"]) == (30, 25)
    for probe_id in ("tcp-small", "tcp-25MB"):  # and the MAC's cost, measured apart
        assert found[probe_id]["mac_bytes_per_frame"] == 16 and 0 < found[probe_id]["mac_us_per_request"]
    print("MAC cost:", {probe_id: (found[probe_id]["mac_us_per_request"], found[probe_id]["mac_share_of_median"])
                        for probe_id in ("tcp-small", "tcp-25MB")})
    rpc_framing = transport.transport_kind("rpc").framing
    assert 0 < found["rpc-small"]["framing_bytes_sent_per_request"] <= rpc_framing.sent_bytes_per_request
    section = output["semgap"]["calibration"]
    assert section["link"] == link and set(section["transports"]) == {"raw", *transport.TRANSPORTS}
    assert section["transports"]["tcp"]["small_call_us"] == found["tcp-small"]["median_us"]
    report = (suite.path / "results" / "latest" / "report.md").read_text()
    table = {row["transport"]: row for row in rows(report, "Transport calibration")}
    assert table["tcp"]["peer"] == "calibration peer" and set(table) == {"raw", *transport.TRANSPORTS}
    assert table["tcp"]["MAC B/frame"] == "16" and table["raw"]["MAC B/frame"] == "-"  # the MAC's cost, shown
    assert float(table["tcp"]["MAC us/small call"]) == pytest.approx(found["tcp-small"]["mac_us_per_request"], abs=0.051)
    assert {case.mode for case in measurements.read_run(output).cases} == {"remote_cache"}  # calibration has no mode
    # The peers and their connections are gone before the experiment: nothing of theirs in its bytes.
    assert (suite.path / "peers-at-experiment.txt").read_text() == ""
    assert peer_processes(suite.path) == []


@pytest.mark.slow
def test_on_ipv6_rpc_is_left_out_and_says_why(suite):
    suite.makepyfile(test_calibration=CALIBRATION)
    result = run_pytest(suite, "--benchmark-only", *QUICK, "-rs", "--semgap-host", "::1", "--semgap-calibrate-rpc",
                        timeout_s=600)
    result.assert_outcomes(passed=len(PROBES) - 2 + 1, skipped=2)
    result.stdout.fnmatch_lines(["*rpc transport cannot serve on the IPv6 address ::1*"])
    output = latest_json(suite.path)
    assert set(output["semgap"]["calibration"]["transports"]) == {"raw", "tcp"}
    case = next(bench["extra_info"] for bench in output["benchmarks"] if bench["name"].startswith("test_semantic_gap"))
    assert case["wire_tcp_bytes_received"] >= case["payload_bytes_received"] > 0  # the run itself over IPv6


# With an external server the calibration skips: tests/test_plugin.py::test_the_suite_runs_twice_against_one_external_server.


@pytest.mark.parametrize("transport_name, ask, calibrated", [
    ("tcp", False, ("raw", "tcp")), ("tcp", True, ("raw", "tcp", "rpc")), ("rpc", False, ("raw", "tcp", "rpc")),
], ids=["default", "asked", "run-on-rpc"])
def test_a_default_run_starts_no_rpc_peer(monkeypatch, transport_name, ask, calibrated):
    # PyTorch RPC unpickles whatever reaches it: a run on tcp starts its peer only when asked to.
    started = []
    monkeypatch.setattr(calibration.Calibration, "_peer", lambda self, name: started.append(name))
    monkeypatch.setattr(calibration.Calibration, "_connection", lambda self, name: started.append(name))
    settings = SimpleNamespace(transport=transport_name, calibrate_rpc=ask, link="loopback", host="127.0.0.1")
    calibration.Calibration(SimpleNamespace(settings=settings, secret=b"s" * 32, link=None)).start()
    assert tuple(dict.fromkeys(started)) == calibrated
    probes = {probe.transport for probe in calibration.probes(calibration.calibrated_transports(settings))}
    assert probes == set(calibrated)


def test_the_default_run_collects_no_rpc_probe(suite):
    suite.makepyfile(test_calibration=CALIBRATION)
    # Only collected: in this process, as nothing is spawned.
    default = suite.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert "rpc" not in default.stdout.str() and "test_calibration[tcp-small]" in default.stdout.str()
    asked = suite.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", "--semgap-calibrate-rpc")
    asked.stdout.fnmatch_lines(["*test_calibration[[]rpc-small[]]*"])


def rss_bytes(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_the_raw_peer_refuses_a_size_no_probe_sends_and_keeps_serving(tmp_path):
    peer = ServerProcess.start(("-m", "semgap.server.calibration_peer", "--transport", "raw", "--host", "127.0.0.1",
                                "--port", "0"), "127.0.0.1", 0, tmp_path, label="raw", ready_timeout_s=60)
    port = peer.port
    try:
        before = rss_bytes(peer.process.pid)
        for kind, size in ((b"s", 4 << 30), (b"x", 8)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as claim:
                claim.sendall(calibration.RAW_START.pack(kind, size))
                assert claim.recv(1) == b""  # closed at once, nothing allocated
        assert rss_bytes(peer.process.pid) - before < 50 << 20
        deadline = time.monotonic() + 10
        while peer.log_tail().count("is none of the calibration's") < 2:
            assert time.monotonic() < deadline, peer.log_tail()
            time.sleep(0.1)
        client = calibration.RawClient("127.0.0.1", port, calibration.Probe(calibration.RAW, calibration.SMALL))
        client.round_trip(bytes(8))  # and it still serves a probe
        client.close()
    finally:
        peer.stop()
