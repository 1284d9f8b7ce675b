"""The plugin end to end, the way a user runs it: inner pytest sessions of the real benchmark suite."""
import json
import os
import subprocess
import sys

import pytest

from semgap.bench import benchtable, calibration
from semgap.model import cpus
from semgap.model.presets import named as presets

from .conftest import CALIBRATION, INNER_CONFTEST, TEST_MODEL
from .inner import QUICK, by_case, latest_json, new_run_dirs, run_json, run_pytest

pytestmark = pytest.mark.slow


def test_a_run_writes_bytes_tokens_verdicts_report_plots_and_logs_into_its_own_directory(suite):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-plots=on", "--semgap-cpus=auto")
    result.assert_outcomes(passed=14)
    [run_dir] = new_run_dirs(suite.path)
    result.stdout.fnmatch_lines([f"semgap: building {TEST_MODEL} in the client",
                                 "*semgap verdicts*", "H1 bytes*prefill*", "H2 latency*decode*",
                                 f"semgap: run complete; *in results/{run_dir.name}/ (results/latest points there)"])
    lines = result.stdout.lines
    last_table = max(i for i, line in enumerate(lines) if line.startswith("test_semantic_gap["))
    verdicts_at = next(i for i, line in enumerate(lines) if "semgap verdicts" in line)
    assert last_table < verdicts_at, "the verdicts must come after pytest-benchmark's tables"
    table_rows = [line.split()[0] for line in lines if line.startswith("test_semantic_gap[")]
    assert len(table_rows) == 14 and not any("-b00" in row for row in table_rows), table_rows  # a row per case
    assert benchtable.NOTE in lines[verdicts_at:]
    output = run_json(run_dir)
    assert (output["semgap"]["run_status"], output["semgap"]["interrupted_by"]) == ("complete", None)
    cases = by_case(output)
    assert set(cases) == {f"{mode}-{phase}" for mode in ("local", "naive", "remote_cache", "semantic", "op_sync",
                                                         "op_pipelined", "op_replay") for phase in ("prefill", "decode")}
    for case, info in cases.items():
        assert len(info["payload_bytes_sent_rounds"]) == 3, case
        if info["mode"] == "local":
            assert info["payload_bytes_sent"] == info["rpc_round_trips"] == 0
        else:
            assert info["payload_bytes_sent"] > 0 and info["payload_bytes_received"] > 0
            assert info["wire_tcp_bytes_received"] >= info["payload_bytes_received"]
        assert info["token_agreement_with_local"] == 1.0, case  # the default technique set is lossless
    for phase in ("prefill", "decode"):
        blind, semantic = cases[f"remote_cache-{phase}"], cases[f"semantic-{phase}"]
        assert semantic["wire_tcp_bytes_received"] < blind["wire_tcp_bytes_received"]
    assert cases["naive-decode"]["payload_bytes_sent"] > 100 * cases["remote_cache-decode"]["payload_bytes_sent"]
    for name in ("verdicts.json", "report.md", "report.tex", "latency_vs_bytes.png",
                 "tables/cases.csv", "tables/ablation.csv"):
        assert (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / "tradeoff.png").exists()  # one technique set: latency_vs_bytes shows it
    assert len(list((run_dir / "logs").glob("server-*.log"))) == 1
    assert sorted(path.name for path in (suite.path / "results").iterdir()) == [run_dir.name, "latest"]
    assert latest_json(suite.path) == output
    assert output["semgap"]["failures"] == []
    # Client and server computed on disjoint CPUs with the same thread count (a 2-core machine: one each).
    meta = output["semgap"]
    if len(os.sched_getaffinity(0)) >= 2:
        client, server = cpus.parse_cpus(meta["client_cpus"]), cpus.parse_cpus(meta["server_cpus"])
        assert meta["cpus_pinned"] and client and server and not client & server, meta
        assert meta["client_threads"] == meta["server_threads"] == min(len(client), len(server))
    # The one weight upload is setup, shared by the resident modes; naive ships weights in its rounds.
    setup = {case: info["setup_bytes_sent"] for case, info in cases.items()}
    assert setup["remote_cache-decode"] == setup["semantic-prefill"] == setup["op_sync-decode"] > 400_000
    assert setup["naive-decode"] == setup["local-prefill"] == 0
    # op_replay captured its steps before its rounds (setup), and its rounds only replay: one round trip a step.
    assert output["semgap"]["program"] == "generate" and cases["op_replay-decode"]["program"] == "generate"
    for phase, steps in (("prefill", 1), ("decode", 3)):
        replay = cases[f"op_replay-{phase}"]
        assert replay["capture_bytes_sent"] > 0 and replay["capture_ms"] > 0 and replay["captures"] == 0
        assert replay["rpc_round_trips"] == steps and replay["replays"] == steps
    assert cases["op_replay-decode"]["client_tracing_ms"] <= cases["op_pipelined-decode"]["client_tracing_ms"] / 10
    # The report regenerates from the saved JSON alone, with the same verdicts.
    again = subprocess.run([sys.executable, "-m", "semgap.report", "results/latest/benchmark.json", "--out", "again"],
                           cwd=suite.path, capture_output=True, text=True, check=True)
    first, second = (json.loads((suite.path / folder / "verdicts.json").read_text())
                     for folder in ("results/latest", "again"))
    assert [(v["hypothesis"], v["phase"], v["verdict"]) for v in first["verdicts"]] == \
        [(v["hypothesis"], v["phase"], v["verdict"]) for v in second["verdicts"]]
    # 2 hypotheses x 2 phases, each against every one of the 5 blind baselines, one of them binding
    assert len(first["verdicts"]) == 20 and sum(v["binding"] for v in first["verdicts"]) == 4
    assert len(second["headlines"]) == 4 and all(len(h["pairwise"]) == 5 for h in second["headlines"])
    assert "wrote again/verdicts.json" in again.stdout and "wrote again/where_gap.md" in again.stdout, again.stdout
    assert all(h["verdict"] in again.stdout for h in second["headlines"]), again.stdout  # and prints the headlines


def test_blocks_interleave_every_case_in_a_seeded_order(suite):
    # Collection only, so in this process: no model, server or run directory is made.
    result = suite.runpytest_inprocess("--benchmark-only", *QUICK, "--semgap-modes", "local,remote_cache",
                                       "--semgap-blocks", "3", "--semgap-rounds", "1", "--semgap-warmup-rounds", "0",
                                       "--collect-only", "-q")
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "::test_semantic_gap[" in line]
    blocks = [ids[index:index + 4] for index in range(0, 12, 4)]
    assert len(ids) == 12 and all(len({name.rsplit("-", 1)[1] for name in block}) == 1 for block in blocks)
    assert all(sorted(name.rsplit("-", 1)[0] for name in block) == sorted(
        f"{mode}-{phase}" for mode in ("local", "remote_cache") for phase in ("prefill", "decode")) for block in blocks)
    assert len({tuple(name.rsplit("-", 1)[0] for name in block) for block in blocks}) > 1  # shuffled per block
    def order(*seed: str) -> list[str]:
        run = suite.runpytest_inprocess("--benchmark-only", *QUICK, "--semgap-modes", "local,remote_cache",
                                        "--semgap-blocks", "6", *seed, "--collect-only", "-q")
        return [line for line in run.outlines if "::test_" in line]

    assert order("--semgap-block-seed=5") == order("--semgap-block-seed=5")  # a seed given replays its order
    assert order() != order()  # without one, each run draws its own (6 blocks of 4 shuffled cases: 24**6 orders)


def test_a_decode_length_sweep_shows_naive_bytes_per_step_growing_and_resident_ones_flat(suite):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-modes", "local,naive,remote_cache",
                        "--semgap-phases", "decode", "--semgap-decode-steps", "2,8")
    result.assert_outcomes(passed=6)
    cases = by_case(latest_json(suite.path))
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
        "import torch\nfrom semgap.client.modes import remote_cache\n"
        "original = remote_cache.RemoteCacheMode.decode_one_token\n"
        "def shifted(self, token_id, state):\n"
        "    logits, state = original(self, token_id, state)\n"
        "    return (torch.roll(logits, 1) if self.name == 'remote_cache' else logits), state\n"
        "remote_cache.RemoteCacheMode.decode_one_token = shifted\n"))
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-modes", "remote_cache,semantic",
                        "--semgap-phases", "decode", "--semgap-semantic", "prune,compress")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*remote_cache-decode: the lossless mode remote_cache generated other tokens than "
                                 "local: measured round 0, token 0:*"])
    [run_dir] = new_run_dirs(suite.path)  # a failed run: results/latest does not move to it
    assert by_case(run_json(run_dir))["remote_cache-decode"]["token_agreement_with_local"] < 1.0
    # Its verdicts cannot stand: every one that compares against remote_cache is INVALID, naming the mismatch.
    verdicts = json.loads((run_dir / "verdicts.json").read_text())["verdicts"]
    against = [v for v in verdicts if v["baseline"] == "remote_cache"]
    assert against and {v["verdict"] for v in against} == {"INVALID"}
    assert all("remote_cache-decode generated other tokens than local" in v["reason"] for v in against)


def test_an_ablation_measures_each_technique_set_as_a_case_of_the_same_blocks(suite):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-modes", "remote_cache,semantic",
                        "--semgap-phases", "decode", "--semgap-semantic", "prune,token-only",
                        "--semgap-ablation", "int8,compress=9", "--semgap-sampler", "top-k=5,seed=2")
    result.assert_outcomes(passed=6)
    output = latest_json(suite.path)
    cases = by_case(output)
    assert set(cases) == {"remote_cache-decode", "semantic-decode", "semantic+none-decode", "semantic+int8-decode",
                          "semantic+compress=9-decode", "semantic+int8+compress=9-decode"}
    assert output["semgap"]["ablation"] == ["none", "int8", "compress", "int8,compress"]
    assert output["semgap"]["sampler"] == "top-k=5,seed=2"
    headline, int8, compress = (cases[f"semantic{v}-decode"] for v in ("", "+int8", "+compress=9"))
    assert (headline["label"], headline["techniques"], headline["lossless"]) == ("semantic", "prune,token-only", True)
    assert (int8["label"], int8["techniques"], int8["lossless"]) == ("semantic:int8", "int8", False)
    assert headline["max_abs_logit_error"] is None and 0 < int8["max_abs_logit_error"] < 0.1
    assert (compress["zstd_level"], headline["zstd_level"]) == (9, None) and compress["compression_ratio"] > 1
    assert compress["max_abs_logit_error"] == 0 and headline["server_codec_ms"] > 0
    assert headline["token_agreement_with_local"] == compress["token_agreement_with_local"] == 1.0
    # Three token-only steps and the release, against three steps of a whole logits row.
    assert headline["payload_bytes_received"] < 0.01 * cases["remote_cache-decode"]["payload_bytes_received"]
    ablation = (suite.path / "results" / "latest" / "tables" / "ablation.csv").read_text()
    assert all(label in ablation for label in ("semantic:none", "semantic:int8", "semantic:int8,compress"))


@pytest.mark.parametrize("enforce, exit_code", [(False, 0), (True, 1)])
def test_enforce_turns_a_not_supported_hypothesis_into_a_failed_run(suite, enforce, exit_code):
    # No semantic technique at all: semantic moves as many bytes as remote_cache, so H1 cannot hold.
    args = ["--benchmark-only", *QUICK, "--semgap-modes", "remote_cache,semantic", "--semgap-phases", "decode",
            "--semgap-semantic", "none"]
    result = run_pytest(suite, *args, *(["--semgap-enforce"] if enforce else []))
    assert result.ret == exit_code
    result.stdout.fnmatch_lines(["H1 bytes*decode*NOT SUPPORTED*"])
    if enforce:
        result.stdout.fnmatch_lines(["*NOT SUPPORTED or LOSSY and --semgap-enforce is set*"])
    verdicts = json.loads((suite.path / "results" / "latest" / "verdicts.json").read_text())
    assert any(v["hypothesis"] == "H1" and v["verdict"] == "NOT SUPPORTED" for v in verdicts["verdicts"])


@pytest.mark.parametrize("option, message", [
    ("--semgap-modes=local,remote", "unknown mode 'remote'; choose from local, naive, remote_cache, semantic, op_sync, op_pipelined"),
    ("--semgap-phases=train", "unknown phase 'train'; choose from prefill, decode"),
    ("--semgap-model=gpt-5", f"unknown model 'gpt-5'; presets: {', '.join(presets())}"),
    ("--semgap-prompt-tokens=1024", f"exceeds the context of {TEST_MODEL} (1024 positions)"),
    ("--semgap-link-rate=1gbit", "add --semgap-link netns"),
    ("--semgap-link-rate=fast", "fast"),
    ("--semgap-device=gpu", "unknown device 'gpu'; choose from auto, cpu, cuda, cuda:N"),
    ("--semgap-host=0.0.0.0", "is a wildcard: give the concrete address"),
    ("--semgap-model=./no/such/checkpoint", "checkpoint directory './no/such/checkpoint' does not exist"),
    ("--semgap-model=test_semantic_gap.py", "checkpoint path 'test_semantic_gap.py' is a file"),
    ("--semgap-model=results", "--semgap-model results: cannot read its config"),  # a directory without config.json
    ("--semgap-model=gpt2-test,nope", "unknown model 'nope'"),  # each model of a list is checked
    ("--semgap-model=gpt2-test,results", "--semgap-model results: cannot read its config"),
    ("--semgap-model=gpt2-test,llama-test --semgap-transport=rpc", "allows one RPC group per process, so one server"),
    ("--semgap-model=gpt2-test,llama-test --semgap-server=127.0.0.1:9", "--semgap-server names one server"),
    ("--semgap-transport=grpc", "invalid choice: 'grpc' (choose from 'tcp', 'rpc')"),
    ("--semgap-transport=rpc --semgap-host=::1", "the rpc transport cannot serve on the IPv6 address ::1"),
    ("--semgap-transport=rpc --semgap-host=10.1.2.3", "PyTorch RPC cannot authenticate its peers"),
    ("--semgap-secret-file=/no/such/file", "cannot read the secret file /no/such/file"),
    ("--semgap-semantic=prune,gzip", "unknown semantic technique 'gzip'; choose from prune, token-only, logprobs, cast, "
                                     "int8, compress, narrow-ids or none"),
    ("--semgap-ablation=prune,zip", "unknown semantic technique 'zip'"),
    ("--semgap-sampler=beam", "unknown sampler 'beam'; choose from greedy, top-k, top-p"),
    ("--semgap-ablation=all --semgap-modes=local", "add semantic to --semgap-modes"),
])
def test_bad_options_fail_at_once_naming_the_choices(suite, option, message):
    (suite.path / "results").mkdir()
    # In this process: configure fails before any fixture, so nothing outlives the run, and the
    # seconds a fresh interpreter spends importing torch are spared (19 cases).
    result = suite.runpytest_inprocess("--benchmark-only", *option.split())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_a_short_secret_in_the_environment_stops_the_run_at_once(suite, monkeypatch):
    monkeypatch.setenv("SEMGAP_SECRET", "short")
    result = suite.runpytest_inprocess("--benchmark-only")  # refused at configure: nothing to spawn
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "$SEMGAP_SECRET holds 5 bytes; a secret needs at least 16" in result.stderr.str()


def test_under_xdist_benchmarks_are_skipped_with_a_reason_that_names_the_fix(suite):
    result = run_pytest(suite, "-n", "1", "-rs", *QUICK, "--semgap-modes", "local")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*benchmarking is disabled under pytest-xdist*drop -n, or add -n 0 after it*"])
    assert "passed" not in result.outlines[-1]
    assert not (suite.path / "results").exists()  # nothing was measured: no run directory


def test_the_suite_runs_twice_against_one_external_server(suite, preset_server):
    suite.makepyfile(test_calibration=CALIBRATION)  # which skips: its peers would have to run on the server's host
    address = f"{preset_server.host}:{preset_server.port}"
    for _ in range(2):
        result = run_pytest(suite, "--benchmark-only", "-rs", *QUICK, "--semgap-server", address,
                            "--semgap-modes", "remote_cache,semantic")
        result.assert_outcomes(passed=4, skipped=len(calibration.probes(("tcp",))))  # rpc is not asked for
        result.stdout.fnmatch_lines(["*the calibration peers would have to run beside it*"])
        assert "another host" not in result.stdout.str()  # the server is on this host's loopback
        # The terminal summary gives every reason for a skip, with what it skipped, before the closing line.
        result.stdout.fnmatch_lines(["skipped: *calibration:*: --semgap-server names a server the suite did not "
                                     f"start ({address}, on this host's loopback)*", "semgap: run complete*"])
        assert latest_json(suite.path)["semgap"]["skipped"][0]["reason"].startswith("--semgap-server names")
        assert "## Skipped benchmarks" in (suite.path / "results" / "latest" / "report.md").read_text()
        for info in by_case(latest_json(suite.path)).values():
            # The client's sockets are its own; another process's server is not read.
            assert all(isinstance(v, int) for v in info["wire_tcp_bytes_retransmitted_sent_rounds"])
            assert set(info["wire_tcp_bytes_retransmitted_received_rounds"]) == {None}
        meta = latest_json(suite.path)["semgap"]  # nothing is pinned against an external server; it says where it ran
        assert not meta["cpus_pinned"] and meta["server_cpus"] and meta["server_threads"] >= 1
    assert preset_server.alive
    assert not list((suite.path / "results").glob("*/logs/server-*.log"))  # nothing was spawned


def test_a_server_computing_in_another_dtype_is_refused_with_advice(suite, preset_server):
    result = run_pytest(suite, "--benchmark-only", *QUICK, "--semgap-modes", "remote_cache",
                        "--semgap-server", f"{preset_server.host}:{preset_server.port}",
                        "--semgap-dtype", "float32")
    result.assert_outcomes(errors=1, skipped=1)  # said once; the other benchmark points at it
    result.stdout.fnmatch_lines(["*computes in bfloat16, this client in float32*--semgap-dtype bfloat16*"])
    assert preset_server.alive


