"""The plugin end to end, the way a user runs it: inner pytest sessions of the real benchmark suite."""
import json
import subprocess
import sys

import pytest

from .conftest import TEST_MODEL
from .inner import QUICK, by_case, latest_json, new_run_dirs, run_json

pytestmark = pytest.mark.slow


def test_a_run_writes_bytes_tokens_verdicts_report_plots_and_logs_into_its_own_directory(suite):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK)
    result.assert_outcomes(passed=8)
    [run_dir] = new_run_dirs(suite.path)
    result.stdout.fnmatch_lines([f"semgap: building {TEST_MODEL} in the client",
                                 "*semgap verdicts*", "H1 bytes*prefill*", "H2 latency*decode*",
                                 f"semgap: run complete; *in results/{run_dir.name}/ (results/latest points there)"])
    output = run_json(run_dir)
    assert (output["semgap"]["run_status"], output["semgap"]["interrupted_by"]) == ("complete", None)
    cases = by_case(output)
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
        assert (run_dir / name).stat().st_size > 0, name
    assert len(list((run_dir / "logs").glob("server-*.log"))) == 1
    assert sorted(path.name for path in (suite.path / "results").iterdir()) == [run_dir.name, "latest"]
    assert latest_json(suite.path) == output
    assert output["semgap"]["failures"] == []
    # The one weight upload is setup, shared by the resident modes; naive ships weights in its rounds.
    setup = {case: info["setup_bytes_sent"] for case, info in cases.items()}
    assert setup["remote_cache-decode"] == setup["semantic-prefill"] > 400_000
    assert setup["naive-decode"] == setup["local-prefill"] == 0
    # The report regenerates from the saved JSON alone, with the same verdicts.
    again = subprocess.run([sys.executable, "-m", "semgap.report", "results/latest/benchmark.json", "--out", "again"],
                           cwd=suite.path, capture_output=True, text=True, check=True)
    first, second = (json.loads((suite.path / folder / "verdicts.json").read_text())["verdicts"]
                     for folder in ("results/latest", "again"))
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
    verdicts = json.loads((suite.path / "results" / "latest" / "verdicts.json").read_text())
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
    ("--semgap-model=./no/such/checkpoint", "checkpoint directory './no/such/checkpoint' does not exist"),
    ("--semgap-model=test_semantic_gap.py", "checkpoint path 'test_semantic_gap.py' is a file"),
    ("--semgap-model=results", "--semgap-model results: cannot read its config"),  # a directory without config.json
])
def test_bad_options_fail_at_once_naming_the_choices(suite, option, message):
    (suite.path / "results").mkdir()
    result = suite.runpytest_subprocess("--benchmark-only", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_under_xdist_benchmarks_are_skipped_with_a_reason_that_names_the_fix(suite):
    result = suite.runpytest_subprocess("-n", "2", "-rs", *QUICK, "--semgap-modes", "local")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*benchmarking is disabled under pytest-xdist*drop -n, or add -n 0 after it*"])
    assert "passed" not in result.outlines[-1]
    assert not (suite.path / "results").exists()  # nothing was measured: no run directory


def test_the_suite_runs_twice_against_one_external_server(suite, preset_server):
    address = f"{preset_server.host}:{preset_server.port}"
    for _ in range(2):
        result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-server", address,
                                            "--semgap-modes", "remote_cache,semantic")
        result.assert_outcomes(passed=4)
        for info in by_case(latest_json(suite.path)).values():
            # The client's sockets are its own; another process's server is not read.
            assert all(isinstance(v, int) for v in info["wire_tcp_bytes_retransmitted_sent_rounds"])
            assert set(info["wire_tcp_bytes_retransmitted_received_rounds"]) == {None}
    assert preset_server.alive
    assert not list((suite.path / "results").glob("*/logs/server-*.log"))  # nothing was spawned


def test_a_server_computing_in_another_dtype_is_refused_with_advice(suite, preset_server):
    result = suite.runpytest_subprocess("--benchmark-only", *QUICK, "--semgap-modes", "remote_cache",
                                        "--semgap-server", f"{preset_server.host}:{preset_server.port}",
                                        "--semgap-dtype", "float32")
    result.assert_outcomes(errors=1, skipped=1)  # said once; the other benchmark points at it
    result.stdout.fnmatch_lines(["*computes in bfloat16, this client in float32*--semgap-dtype bfloat16*"])
    assert preset_server.alive


