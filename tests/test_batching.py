"""Semantic batching: concurrent sessions' steps in one forward give every session local's tokens."""
import argparse
import dataclasses
import json
import threading

import pytest
import torch

from semgap.wire import codec, transport

from semgap.client import generate

from semgap.model import presets
from semgap.server.batching import DecodeBatcher
from semgap.server.semantic import SemanticSessions
from semgap.bench.argtypes import session_counts as _session_counts
from semgap.client.modes.base import ModeContext
from semgap.client.modes.local import LocalMode
from semgap.client.modes.remote_cache import RemoteCacheMode
from semgap.model.runtime import STATIC_CACHE_POOL_SIZE, greedy_token
from semgap.model.sampling import Sampler
from semgap.client.sessions import ConcurrentSessions, flavour_class, session_prompts
from semgap.report.scenarios import batching
from .conftest import REPO
from .inner import leftovers, netns_test, run_pytest, run_suite

STEPS = 5
SESSIONS = 4


@pytest.fixture(scope="module")
def prompts(preset_model):
    return session_prompts(presets.prompt_ids(32, preset_model.config.vocab_size), SESSIONS)


@pytest.fixture(scope="module")
def local_tokens(preset_model, prompts):
    local = LocalMode(ModeContext(preset_model))
    local.setup()
    return [generate.generate(local, prompt, STEPS)[1:] for prompt in prompts]


@pytest.fixture(scope="module")
def uploaded(preset_model, preset_server, client):
    """A context whose weights the server holds (one upload), as the benchmark's session has."""
    context = ModeContext(preset_model, client)
    RemoteCacheMode(context).setup()
    return context


def test_session_prompts_decode_distinct_tokens(local_tokens):
    """Each session's tokens differ from every other's, so a session answered from another's cache shows."""
    assert len({tuple(tokens) for tokens in local_tokens}) == SESSIONS


@pytest.mark.parametrize("flavour", ["blind", "semantic"])
def test_every_concurrent_session_decodes_locals_tokens(flavour, uploaded, preset_server, prompts, local_tokens):
    connect = lambda: transport.connect("tcp", preset_server.host, preset_server.port, timeout_s=30)
    sessions = ConcurrentSessions(flavour, prompts, uploaded, connect)
    try:
        for _ in range(2):  # the second round finds the server's batching state of the first cleared
            sessions.prefill()
            result = sessions.decode_round(STEPS)
            assert [session.tokens for session in result.sessions] == local_tokens
            assert result.tokens_decoded == SESSIONS * STEPS
            assert result.payload.round_trips == SESSIONS * (STEPS + 1)  # the steps and each release
            figures = result.figures()
            if flavour == "semantic":  # the sessions really shared forwards
                assert figures["mean_batch_size"] > 1
            else:
                assert figures["mean_batch_size"] is None
    finally:
        sessions.close()


@pytest.mark.parametrize("flavour", ["blind", "semantic"])
def test_concurrent_sessions_sample_with_the_runs_sampler(flavour, uploaded, preset_model, preset_server, prompts):
    sampler = Sampler.parse("top-k=5,seed=3")
    local = LocalMode(ModeContext(preset_model, sampler=sampler))
    local.setup()
    sampled = [generate.generate(local, prompt, STEPS)[1:] for prompt in prompts]
    connect = lambda: transport.connect("tcp", preset_server.host, preset_server.port, timeout_s=30)
    sessions = ConcurrentSessions(flavour, prompts, dataclasses.replace(uploaded, sampler=sampler), connect)
    try:
        sessions.prefill()
        assert [session.tokens for session in sessions.decode_round(STEPS).sessions] == sampled
    finally:
        sessions.close()


def test_sessions_that_cannot_connect_raise_why(preset_model, prompts):
    def refused():
        raise ConnectionRefusedError("nothing listens there")

    with pytest.raises(ConnectionRefusedError, match="nothing listens there"):
        ConcurrentSessions("blind", prompts, ModeContext(preset_model), refused)


def _batcher(model, window_s=5.0) -> DecodeBatcher:
    # No techniques named: every session is blind, answered with its logits and the batch's extra fields.
    return DecodeBatcher(model, lambda function, *args: function(*args), lambda meta: None, SemanticSessions(),
                         lambda logits, ms, **extra: (logits, extra), window_s=window_s)


def _prefill(batcher, prompt) -> tuple[int, str]:
    logits, extra = batcher.prefill({"input_ids": torch.tensor([prompt])}, {})
    return greedy_token(logits), extra["kv_handle"]


def _step_all(batcher, tokens_and_handles) -> list[tuple[torch.Tensor, dict]]:
    """One decode step of every session, each from its own thread as connections are served."""
    answers = [None] * len(tokens_and_handles)

    def step(index, token, handle):
        answers[index] = batcher.decode({"input_ids": torch.tensor([[token]])}, {"kv_handle": handle})

    threads = [threading.Thread(target=step, args=(index, *pair)) for index, pair in enumerate(tokens_and_handles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_cohort_stays_stacked_while_the_same_sessions_step(preset_model, prompts, local_tokens):
    batcher = _batcher(preset_model)
    sessions = [_prefill(batcher, prompt) for prompt in prompts]
    handles = [handle for _, handle in sessions]
    decoded: list[list[int]] = [[] for _ in prompts]
    cohorts = []
    for _ in range(STEPS):
        answers = _step_all(batcher, sessions)
        assert [extra["batch_size"] for _, extra in answers] == [str(SESSIONS)] * SESSIONS
        cohorts.append(batcher.cohort_of[handles[0]])
        sessions = [(greedy_token(logits), handle) for (logits, _), handle in zip(answers, handles)]
        for tokens, (token, _) in zip(decoded, sessions):
            tokens.append(token)
    assert decoded == local_tokens
    assert all(cohort is cohorts[0] for cohort in cohorts[1:])  # stacked once, then reused
    for handle in handles:
        batcher.release({}, {"kv_handle": handle})
    assert batcher.cohort_of == {} and batcher.pending == {}


def test_sessions_of_different_lengths_run_in_separate_forwards(preset_model, prompts, local_tokens):
    batcher = _batcher(preset_model)
    short = prompts[1][:20]
    local = LocalMode(ModeContext(preset_model))
    local.setup()
    expected = [local_tokens[0][0], generate.generate(local, short, 1)[1]]
    sessions = [_prefill(batcher, prompts[0]), _prefill(batcher, short)]
    answers = _step_all(batcher, sessions)
    assert [greedy_token(logits) for logits, _ in answers] == expected
    assert [extra["batch_size"] for _, extra in answers] == ["1", "1"]


def test_a_session_that_does_not_step_holds_a_batch_only_for_the_window(preset_model, prompts):
    batcher = _batcher(preset_model, window_s=0.01)
    stepping, idle = _prefill(batcher, prompts[0]), _prefill(batcher, prompts[1])
    (_, extra), = _step_all(batcher, [stepping])
    assert extra["batch_size"] == "1"
    batcher.release({}, {"kv_handle": idle[1]})


def test_batching_refuses_unknown_sessions(preset_model):
    batcher = _batcher(preset_model)
    with pytest.raises(KeyError, match="unknown batched session 'nope'"):
        batcher.decode({"input_ids": torch.tensor([[1]])}, {"kv_handle": "nope"})
    with pytest.raises(KeyError, match="unknown batched session"):
        batcher.release({}, {"kv_handle": "nope"})


def test_server_answers_batch_operations_and_refuses_stale_sessions(client):
    with pytest.raises(transport.ServerError, match="unknown batched session"):
        client.call("batch_decode", codec.encode({"input_ids": torch.tensor([[1]])}, {"kv_handle": "gone"}))


def test_unknown_flavour_and_bad_session_counts_are_refused():
    with pytest.raises(ValueError, match="unknown batching flavour 'fast'; choose from blind, semantic"):
        flavour_class("fast")
    assert _session_counts("none") == ()
    assert _session_counts("1,4,16") == (1, 4, 16)
    with pytest.raises(argparse.ArgumentTypeError, match="positive whole number"):
        _session_counts("0")


def test_batching_table_compares_each_count_with_blind():
    def info(flavour, role, sessions, tokens_per_s):
        return {"extra_info": {
            "batching": f"{flavour}-{sessions}sessions", "model": "gpt2-test", "weights": "random", "sessions": sessions,
            "flavour": flavour, "role": role, "tokens_per_s": tokens_per_s, "token_latency_ms": 1.0,
            "token_latency_p90_ms": 2.0, "payload_bytes_per_token": 10.0, "wire_tcp_bytes_per_token": 12.0,
            "mean_batch_size": None, "token_agreement_with_local": 1.0, "decode_steps": 5}}

    output = {"benchmarks": [info("blind", "blind", 4, 100.0), info("semantic", "semantic", 4, 250.0),
                             {"extra_info": {"mode": "local"}}]}
    (section,) = batching(output)
    frame = section.tables[0].frame
    assert list(frame["flavour"]) == ["blind", "semantic"]
    assert list(frame["vs blind"]) == [1.0, 2.5]
    assert batching({"benchmarks": [{"extra_info": {"mode": "local"}}]}) == []
    assert list(frame["tokens"]) == ["as local", "as local"]


def test_a_gpu_note_every_row_shares_is_said_once_not_on_every_row():
    def info(sessions, note, util=None):
        return {"extra_info": {
            "batching": f"blind-{sessions}sessions", "model": "gpt2-test", "weights": "random", "sessions": sessions,
            "flavour": "blind", "role": "blind", "tokens_per_s": 1.0, "token_latency_ms": 1.0,
            "token_latency_p90_ms": 2.0, "payload_bytes_per_token": 10.0, "wire_tcp_bytes_per_token": 12.0,
            "mean_batch_size": None, "token_agreement_with_local": 1.0, "decode_steps": 5,
            "gpu_monitor_note": note, "gpu_sm_util_mean_pct": util}}

    (section,) = batching({"benchmarks": [info(1, "NVML unavailable: no library"), info(4, "NVML unavailable: no library")]})
    assert "GPU note" not in section.tables[0].frame and "SM util %" not in section.tables[0].frame
    assert "GPU note: NVML unavailable: no library (every row)." in section.before[0]
    (section,) = batching({"benchmarks": [info(1, None, 40.0), info(4, "2 samples lost", 55.0)]})
    assert list(section.tables[0].frame["GPU note"]) == [None, "2 samples lost"]  # they differ: kept per row
    assert list(section.tables[0].frame["SM util %"]) == [40.0, 55.0]


def test_batched_tokens_below_the_min_agreement_are_labelled_lossy_not_failed():
    """A batched forward need not reproduce a batch of one bit for bit: its agreement is measured and labelled."""
    def info(agreement):
        return {"extra_info": {
            "batching": "semantic-4sessions", "model": "gpt2-test", "weights": "random", "sessions": 4,
            "flavour": "semantic", "role": "semantic", "tokens_per_s": 1.0, "token_latency_ms": 1.0,
            "token_latency_p90_ms": 2.0, "payload_bytes_per_token": 10.0, "wire_tcp_bytes_per_token": 12.0,
            "mean_batch_size": 4.0, "token_agreement_with_local": agreement, "decode_steps": 5}}

    (section,) = batching({"benchmarks": [info(0.5)]}, min_agreement=0.9)
    assert list(section.tables[0].frame["tokens"]) == ["LOSSY"]
    (section,) = batching({"benchmarks": [info(0.95)]}, min_agreement=0.9)
    assert list(section.tables[0].frame["tokens"]) == ["as local"]


BATCHING_BENCHMARK = (REPO / "benchmarks" / "test_batching.py").read_text()


@pytest.mark.slow
def test_batching_benchmark_end_to_end(suite):
    """The suite's batching benchmark: its option, extra_info and report table; `none` leaves it out."""
    suite.makepyfile(test_batching=BATCHING_BENCHMARK)
    result = run_pytest(
        suite, "test_batching.py", "--benchmark-only", "--semgap-modes=remote_cache", "--semgap-batch-sessions=2",
        "--semgap-batch-rounds=2", "--semgap-warmup-rounds=0", "--semgap-prompt-tokens=16", "--semgap-decode-steps=3",
        "--semgap-semantic=prune,compress,narrow-ids",
    )
    result.assert_outcomes(passed=2)
    (run_dir,) = [path for path in (suite.path / "results").iterdir() if path.name != "latest" and path.is_dir()]
    infos = {bench["extra_info"]["flavour"]: bench["extra_info"]
             for bench in json.loads((run_dir / "benchmark.json").read_text())["benchmarks"]}
    assert set(infos) == {"blind", "semantic"}
    for info in infos.values():
        assert info["sessions"] == 2 and info["decode_steps"] == 3 and "mode" not in info  # not a verdict case
        assert info["token_agreement_with_local"] == 1.0 and info["lossless"] is True
        assert len(info["tokens_per_s_rounds"]) == 2 and info["wire_tcp_bytes_per_token"] >= info["payload_bytes_per_token"]
        assert info["gpu_sm_util_mean_pct"] is None or info["gpu_monitor_note"] is None
        assert info["link_rate"] is None and info["wire_link_bytes_sent"] is None  # loopback: no link to count
    # On CPU the server decodes eager, dynamic: every session on that path, as recorded.
    assert infos["blind"]["fast_path"] == "eager-dynamic" and infos["blind"]["decode_paths"] == {"eager-dynamic": 2}
    assert infos["semantic"]["decode_paths"] == {"eager-dynamic": 2}
    assert infos["semantic"]["role"] == "semantic" and infos["semantic"]["mean_batch_size"] > 1
    assert "## Semantic batching" in (run_dir / "report.md").read_text()
    assert (run_dir / "tables" / "batching.csv").exists()

    left_out = run_pytest(suite, "test_batching.py", "--benchmark-only", "--semgap-batch-sessions=none", "-rs")
    left_out.stdout.fnmatch_lines(["*--semgap-batch-sessions none: the batching benchmark is left out*"])


@pytest.mark.slow
def test_sessions_beyond_the_static_pool_are_recorded_on_the_dynamic_path(suite):
    """With more blind sessions than the server's static pool holds, the rest decode on a dynamic cache: the
    JSON says so per path instead of naming the server's setting."""
    suite.makepyfile(test_batching=BATCHING_BENCHMARK)
    sessions = STATIC_CACHE_POOL_SIZE + 2
    result = run_pytest(
        suite, "test_batching.py", "--benchmark-only", "--semgap-modes=remote_cache", f"--semgap-batch-sessions={sessions}",
        "--semgap-batch-rounds=1", "--semgap-warmup-rounds=0", "--semgap-prompt-tokens=8", "--semgap-decode-steps=2",
        "--semgap-fast-path=static", "-k", "blind",
    )
    result.assert_outcomes(passed=1)
    (run_dir,) = [path for path in (suite.path / "results").iterdir() if path.name != "latest" and path.is_dir()]
    (bench,) = json.loads((run_dir / "benchmark.json").read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["fast_path"] == "mixed"
    assert info["decode_paths"] == {"static": STATIC_CACHE_POOL_SIZE, "eager-dynamic": 2}


@pytest.mark.slow
@netns_test
def test_batching_over_a_shaped_namespace_link_records_its_rate_and_link_bytes(suite):
    """--semgap-link netns --semgap-link-rate R: the batching cases run at R, as the matrix's do, and count the veth."""
    suite.makepyfile(test_batching=BATCHING_BENCHMARK)
    result, output, pid = run_suite(
        suite, "test_batching.py", "--semgap-modes=remote_cache", "--semgap-batch-sessions=2", "--semgap-batch-rounds=1",
        "--semgap-warmup-rounds=0", "--semgap-prompt-tokens=8", "--semgap-decode-steps=2",
        "--semgap-link", "netns", "--semgap-link-rate", "100mbit")
    result.assert_outcomes(passed=2)
    for bench in output["benchmarks"]:
        info = bench["extra_info"]
        assert bench["group"].endswith("at 100mbit") and info["batching"].endswith("-100mbit"), bench["group"]
        assert (info["link"], info["link_rate"], info["link_rate_bps"]) == ("netns", "100mbit", 100_000_000)
        assert info["wire_link_bytes_sent"] >= info["payload_bytes_sent"] > 0
        assert info["wire_link_bytes_received"] >= info["payload_bytes_received"] > 0
    assert leftovers(pid, suite.path) == []
