"""The plugin end to end, the way a user runs it: inner pytest sessions of the real benchmark suite."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import TEST_MODEL


QUICK = ("--semgap-rounds", "3", "--semgap-warmup-rounds", "1", "--semgap-prompt-tokens", "32",
         "--semgap-decode-steps", "3", "-p", "no:cacheprovider")
pytestmark = pytest.mark.slow


def load(pytester, name="results/benchmark.json"):
    return json.loads((pytester.path / name).read_text())


def by_case(output_json):
    return {bench["param"]: bench["extra_info"] for bench in output_json["benchmarks"]}


def test_a_run_writes_bytes_tokens_verdicts_report_and_plots(suite):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines([f"semgap: building {TEST_MODEL} in the client",
                                 "*semgap verdicts*", "H1 bytes*prefill*", "H2 latency*decode*"])
    cases = by_case(load(suite))
    assert set(cases) == {f"{mode}-{phase}" for mode in ("local", "naive", "remote_cache", "semantic")
                          for phase in ("prefill", "decode")}
    for case, info in cases.items():
        assert len(info["payload_bytes_sent_rounds"]) == 3, case
        if info["mode"] == "local":
            assert info["payload_bytes_sent"] == info["rpc_round_trips"] == 0
        else:
            assert info["payload_bytes_sent"] > 0 and info["payload_bytes_received"] > 0
            assert info["wire_tcp_bytes_received"] >= info["payload_bytes_received"]
        if info["mode"] != "semantic":  # the cast is on by default in semantic, so only it may differ
            assert info["token_agreement_with_local"] == 1.0, case
    for phase in ("prefill", "decode"):
        blind, semantic = cases[f"remote_cache-{phase}"], cases[f"semantic-{phase}"]
        assert semantic["wire_tcp_bytes_received"] < blind["wire_tcp_bytes_received"]
    assert cases["naive-decode"]["payload_bytes_sent"] > 100 * cases["remote_cache-decode"]["payload_bytes_sent"]
    for name in ("verdicts.json", "report.md", "latency_vs_bytes.png"):
        assert (suite.path / "results" / name).stat().st_size > 0, name
    assert load(suite)["semgap"]["failures"] == []
    # The one weight upload is setup, shared by the resident modes; naive ships weights in its rounds.
    setup = {case: info["setup_bytes_sent"] for case, info in cases.items()}
    assert setup["remote_cache-decode"] == setup["semantic-prefill"] > 400_000
    assert setup["naive-decode"] == setup["local-prefill"] == 0
    # The report regenerates from the saved JSON alone, with the same verdicts.
    again = subprocess.run([sys.executable, "-m", "semgap.report", "results/benchmark.json", "--out", "again"],
                           cwd=suite.path, capture_output=True, text=True, check=True)
    first, second = (json.loads((suite.path / folder / "verdicts.json").read_text())["verdicts"]
                     for folder in ("results", "again"))
    assert [(v["hypothesis"], v["phase"], v["verdict"]) for v in first] == \
        [(v["hypothesis"], v["phase"], v["verdict"]) for v in second]
    assert len(first) == 4
    assert "wrote again/verdicts.json" in again.stdout, again.stdout
    assert all(v["verdict"] in again.stdout for v in second), again.stdout  # and prints the verdicts


@pytest.mark.parametrize("enforce, exit_code", [(False, 0), (True, 1)])
def test_enforce_turns_a_not_supported_hypothesis_into_a_failed_run(suite, enforce, exit_code):
    # No semantic technique at all: semantic moves as many bytes as remote_cache, so H1 cannot hold.
    args = ["--benchmark-only", *QUICK, "--semgap-modes", "remote_cache,semantic", "--semgap-phases", "decode",
            "--semgap-semantic", "none"]
    result = suite.runpytest_subprocess(*args, *(["--semgap-enforce"] if enforce else []))
    assert result.ret == exit_code
    result.stdout.fnmatch_lines(["H1 bytes*decode*NOT SUPPORTED*"])
    if enforce:
        result.stdout.fnmatch_lines(["*NOT SUPPORTED and --semgap-enforce is set*"])
    verdicts = json.loads((suite.path / "results" / "verdicts.json").read_text())
    assert any(v["hypothesis"] == "H1" and v["verdict"] == "NOT SUPPORTED" for v in verdicts["verdicts"])


@pytest.mark.parametrize("option, message", [
    ("--semgap-modes=local,remote", "unknown mode 'remote'; choose from local, naive, remote_cache, semantic"),
    ("--semgap-phases=train", "unknown phase 'train'; choose from prefill, decode"),
    ("--semgap-model=gpt-5", "unknown model 'gpt-5'; presets: gpt2-mini, gpt2-test, tiny-gpt2, gpt2"),
    ("--semgap-prompt-tokens=1024", f"exceeds the context of {TEST_MODEL} (1024 positions)"),
    ("--semgap-link-rate=1gbit", "add --semgap-link netns"),
    ("--semgap-link-rate=fast", "fast"),
    ("--semgap-device=gpu", "unknown device 'gpu'; choose from auto, cpu, cuda, cuda:N"),
    ("--semgap-host=0.0.0.0", "is a wildcard: give the concrete address"),
    ("--semgap-transport=grpc", "invalid choice: 'grpc' (choose from 'tcp', 'rpc')"),
    ("--semgap-transport=rpc --semgap-host=::1", "the rpc transport cannot serve on the IPv6 address ::1"),
    ("--semgap-transport=rpc --semgap-host=10.1.2.3", "PyTorch RPC cannot authenticate its peers"),
    ("--semgap-secret-file=/no/such/file", "cannot read the secret file /no/such/file"),
])
def test_bad_options_fail_at_once_naming_the_choices(suite, option, message):
    result = suite.runpytest_subprocess("--benchmark-only", *option.split())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_a_short_secret_in_the_environment_stops_the_run_at_once(suite, monkeypatch):
    monkeypatch.setenv("SEMGAP_SECRET", "short")
    result = suite.runpytest_subprocess("--benchmark-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "$SEMGAP_SECRET holds 5 bytes; a secret needs at least 16" in result.stderr.str()


def test_under_xdist_benchmarks_are_skipped_with_a_reason_not_passed(suite):
    result = suite.runpytest_subprocess("-n", "2", "-rs", *QUICK, "--semgap-modes", "local")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*benchmarking is disabled (pytest-xdist or --benchmark-disable)*"])
    assert "passed" not in result.outlines[-1]


def test_the_suite_runs_twice_against_one_external_server(suite, preset_server):
    address = f"{preset_server.host}:{preset_server.port}"
    for _ in range(2):
        result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-server", address,
                                            "--semgap-modes", "remote_cache,semantic")
        result.assert_outcomes(passed=4)
        for info in (bench["extra_info"] for bench in load(suite)["benchmarks"]):
            # The client's sockets are its own; another process's server is not read.
            assert all(isinstance(v, int) for v in info["wire_tcp_bytes_retransmitted_sent_rounds"])
            assert set(info["wire_tcp_bytes_retransmitted_received_rounds"]) == {None}
    assert preset_server.alive
    assert not list((suite.path / "results").glob("logs/server-*.log"))  # nothing was spawned


def test_a_server_computing_in_another_dtype_is_refused_with_advice(suite, preset_server):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-modes", "remote_cache",
                                        "--semgap-server", f"{preset_server.host}:{preset_server.port}",
                                        "--semgap-dtype", "float32")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*computes in bfloat16, this client in float32*--semgap-dtype bfloat16*"])
    assert preset_server.alive


def server_pids(port: int) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"semgap.server" in argv and str(port).encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


def spawned_port(pytester) -> int:
    logs = list((pytester.path / "results" / "logs").glob("server-*.log"))
    assert len(logs) == 1
    return int(logs[0].name.split("-")[-3])


def test_a_server_killed_mid_benchmark_errors_that_benchmark_and_keeps_the_others(suite):
    suite.makeconftest(
        'import os, signal, threading\n'
        'import pytest\n'
        'pytest_plugins = ["semgap.plugin"]\n'
        '@pytest.fixture(autouse=True)\n'
        'def kill_server_during_semantic_prefill(request):\n'
        '    if "semantic-prefill" in request.node.name:\n'
        '        session = request.getfixturevalue("semgap_session")\n'
        '        threading.Timer(0.3, os.killpg, (session.server.process.pid, signal.SIGKILL)).start()\n'
    )
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-rounds", "1000",
                                        "--semgap-modes", "remote_cache,semantic", "--semgap-phases", "prefill,decode")
    # remote_cache-prefill and -decode finished; semantic-prefill lost its server; semantic-decode found it gone.
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*lost the semgap server*", "*the semgap server exited*"])
    output = load(suite)
    assert set(by_case(output)) == {"remote_cache-prefill", "remote_cache-decode"}
    failed = {failure["case"]: failure["reason"] for failure in output["semgap"]["failures"]}
    assert set(failed) == {"semantic-prefill", "semantic-decode"}


def test_ctrl_c_mid_run_leaves_no_server_behind(suite):
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--benchmark-only", *QUICK, "--semgap-rounds", "100000"],
        cwd=suite.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(suite.path.glob("results/logs/server-*.log")):
        time.sleep(0.2)
    time.sleep(3)  # the server is up and benchmarks are running
    port = spawned_port(suite)
    assert server_pids(port)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0].decode()
    assert "KeyboardInterrupt" in output
    deadline = time.monotonic() + 15
    while server_pids(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_pids(port) == []
