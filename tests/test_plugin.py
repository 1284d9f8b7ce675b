"""The plugin end to end, the way a user runs it: inner pytest sessions of the real benchmark suite."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import INNER_CONFTEST, TEST_MODEL


QUICK = ("--semgap-rounds", "3", "--semgap-warmup-rounds", "1", "--semgap-prompt-tokens", "32",
         "--semgap-decode-steps", "3", "-p", "no:cacheprovider")
pytestmark = pytest.mark.slow


def load(pytester, name="results/benchmark.json"):
    return json.loads((pytester.path / name).read_text())


def by_case(output_json):
    """extra_info by case id (these runs have one block, so one benchmark per case)."""
    return {bench["extra_info"]["case"]: bench["extra_info"] for bench in output_json["benchmarks"]}


def test_blocks_interleave_every_case_in_a_seeded_order(suite):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-modes", "local,remote_cache",
                                        "--semgap-blocks", "3", "--semgap-rounds", "1", "--semgap-warmup-rounds", "0",
                                        "--collect-only", "-q")
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "::test_semantic_gap[" in line]
    blocks = [ids[index:index + 4] for index in range(0, 12, 4)]
    assert len(ids) == 12 and all(len({name.rsplit("-", 1)[1] for name in block}) == 1 for block in blocks)
    assert all(sorted(name.rsplit("-", 1)[0] for name in block) == sorted(
        f"{mode}-{phase}" for mode in ("local", "remote_cache") for phase in ("prefill", "decode")) for block in blocks)
    assert len({tuple(name.rsplit("-", 1)[0] for name in block) for block in blocks}) > 1  # shuffled per block
    again = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-modes", "local,remote_cache",
                                       "--semgap-blocks", "3", "--collect-only", "-q")
    assert [line for line in again.outlines if "::test_" in line] == [
        line for line in result.outlines if "::test_" in line]  # the same seed, the same order


def test_a_decode_length_sweep_shows_naive_bytes_per_step_growing_and_resident_ones_flat(suite):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-modes", "local,naive,remote_cache",
                                        "--semgap-phases", "decode", "--semgap-decode-steps", "2,8")
    result.assert_outcomes(passed=6)
    cases = by_case(load(suite))
    assert set(cases) == {f"{mode}-decode-{steps}steps" for mode in ("local", "naive", "remote_cache") for steps in (2, 8)}
    per_step = {case: info["payload_bytes_received"] / info["decode_steps"] for case, info in cases.items()}
    # naive ships the whole KV cache back each step, so a longer round moves more per step
    assert per_step["naive-decode-8steps"] > per_step["naive-decode-2steps"]
    # resident modes return one logits row per step (plus the release's small answer)
    assert per_step["remote_cache-decode-8steps"] == pytest.approx(per_step["remote_cache-decode-2steps"], rel=0.05)
    assert [len(cases[f"local-decode-{steps}steps"]["token_ids"]) for steps in (2, 8)] == [2, 8]


def test_a_lossless_mode_with_other_tokens_than_local_fails_its_benchmark_and_keeps_its_data(suite):
    # A client-side fault: remote_cache reads a logits row shifted by one, so its greedy tokens change.
    suite.makeconftest(INNER_CONFTEST + (
        "import torch\nfrom semgap.modes import remote_cache\n"
        "original = remote_cache.RemoteCacheMode.decode_one_token\n"
        "def shifted(self, token_id, state):\n"
        "    logits, state = original(self, token_id, state)\n"
        "    return (torch.roll(logits, 1) if self.name == 'remote_cache' else logits), state\n"
        "remote_cache.RemoteCacheMode.decode_one_token = shifted\n"))
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-modes", "remote_cache,semantic",
                                        "--semgap-phases", "decode", "--semgap-semantic", "prune,compress")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*remote_cache-decode: the lossless mode remote_cache generated other tokens than "
                                 "local: measured round 0, token 0:*"])
    assert by_case(load(suite))["remote_cache-decode"]["token_agreement_with_local"] < 1.0


def test_a_run_writes_bytes_tokens_verdicts_report_and_plots(suite):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK)
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines([f"semgap: building {TEST_MODEL} in the client",
                                 "*semgap verdicts*", "H1 bytes*prefill*", "H2 latency*decode*"])
    cases = by_case(load(suite))
    assert set(cases) == {f"{mode}-{phase}" for mode in ("local", "naive", "remote_cache", "semantic", "op_sync",
                                                         "op_pipelined") for phase in ("prefill", "decode")}
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
    for name in ("verdicts.json", "report.md", "report.tex", "latency_vs_bytes.png", "tradeoff.png",
                 "tables/cases.csv", "tables/ablation.csv"):
        assert (suite.path / "results" / name).stat().st_size > 0, name
    assert load(suite)["semgap"]["failures"] == []
    # The one weight upload is setup, shared by the resident modes; naive ships weights in its rounds.
    setup = {case: info["setup_bytes_sent"] for case, info in cases.items()}
    assert setup["remote_cache-decode"] == setup["semantic-prefill"] == setup["op_sync-decode"] > 400_000
    assert setup["naive-decode"] == setup["local-prefill"] == 0
    # The report regenerates from the saved JSON alone, with the same verdicts.
    again = subprocess.run([sys.executable, "-m", "semgap.report", "results/benchmark.json", "--out", "again"],
                           cwd=suite.path, capture_output=True, text=True, check=True)
    first, second = (json.loads((suite.path / folder / "verdicts.json").read_text())["verdicts"]
                     for folder in ("results", "again"))
    assert [(v["hypothesis"], v["phase"], v["verdict"]) for v in first] == \
        [(v["hypothesis"], v["phase"], v["verdict"]) for v in second]
    assert len(first) == 16 and sum(v["headline"] for v in first) == 4  # against each of the 4 blind baselines
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
        result.stdout.fnmatch_lines(["*NOT SUPPORTED or LOSSY and --semgap-enforce is set*"])
    verdicts = json.loads((suite.path / "results" / "verdicts.json").read_text())
    assert any(v["hypothesis"] == "H1" and v["verdict"] == "NOT SUPPORTED" for v in verdicts["verdicts"])


@pytest.mark.parametrize("option, message", [
    ("--semgap-modes=local,remote", "unknown mode 'remote'; choose from local, naive, remote_cache, semantic, op_sync, op_pipelined"),
    ("--semgap-phases=train", "unknown phase 'train'; choose from prefill, decode"),
    ("--semgap-model=gpt-5", "unknown model 'gpt-5'; presets: gpt2-mini, gpt2-test, tiny-gpt2, gpt2"),
    ("--semgap-prompt-tokens=1024", f"exceeds the context of {TEST_MODEL} (1024 positions)"),
    ("--semgap-link-rate=1gbit", "add --semgap-link netns"),
    ("--semgap-link-rate=fast", "fast"),
    ("--semgap-device=gpu", "unknown device 'gpu'; choose from auto, cpu, cuda, cuda:N"),
    ("--semgap-host=0.0.0.0", "is a wildcard: give the concrete address"),
])
def test_bad_options_fail_at_once_naming_the_choices(suite, option, message):
    result = suite.runpytest_subprocess("--benchmark-only", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


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
    args = ("--benchmark-only", *QUICK, "--semgap-rounds", "1000", "--semgap-modes", "remote_cache,semantic")
    order = [line.split("[", 1)[1].rstrip("]").rsplit("-b", 1)[0]
             for line in suite.runpytest_subprocess(*args, "--collect-only", "-q").outlines if "::test_semantic_gap[" in line]
    before, after = order[:order.index("semantic-prefill")], order[order.index("semantic-prefill") + 1:]
    result = suite.runpytest_subprocess(*args)
    # Cases before semantic-prefill finished; it lost its server; the cases after it found the server gone.
    result.assert_outcomes(passed=len(before), failed=1 + len(after))
    result.stdout.fnmatch_lines(["*lost the semgap server*"])
    output = load(suite)
    assert set(by_case(output)) == set(before)
    failed = {failure["case"].rsplit("-b", 1)[0]: failure["reason"] for failure in output["semgap"]["failures"]}
    assert set(failed) == {"semantic-prefill", *after}
    assert all("the semgap server exited" in failed[case] for case in after)


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
