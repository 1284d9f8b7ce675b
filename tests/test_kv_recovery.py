"""KV recovery under eviction and migration: tokens after a recovery are local's, bytes are what each strategy ships."""
from types import SimpleNamespace

import pytest
import torch

from semgap.wire import codec, transport

from semgap.client import generate

from semgap.model import presets, runtime

from semgap.report import scenarios
from semgap.bench.kvrecovery import RecoveryCase, RecoveryRunner, recovery_cases
from semgap.schema import RoundRecord
from semgap.client.kvrecovery import ResidentSteps, begin_session, continue_after, make_strategy
from semgap.analysis.measurements import read_run
from semgap.client.modes import ModeContext
from semgap.client.modes.local import LocalMode

from .conftest import INNER_CONFTEST, REPO, TEST_MODEL, spawned_server
from .inner import SMALL, leftovers, netns_test, new_run_dirs, run_suite
from .markdown import rows

PROMPT_TOKENS, BEFORE, AFTER = 32, 3, 4
SUITE_PROMPT_TOKENS = 32  # inner.QUICK's prompt
KV_BENCHMARK = (REPO / "benchmarks" / "test_kv_recovery.py").read_text()


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    with spawned_server(tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def servers(preset_model, client, second_server):
    """Decode steps on the session's test server and on a second one, each with its own payload counter."""
    second = transport.CountingTransport(transport.connect("tcp", second_server.host, second_server.port, timeout_s=30))
    steps = {}
    for name, connection in (("first", client), ("second", second)):
        steps[name] = ResidentSteps(ModeContext(preset_model, transport=connection))
        steps[name].setup()
    yield steps
    second.close()


@pytest.fixture(scope="module")
def prompt(preset_model):
    return presets.prompt_ids(PROMPT_TOKENS, preset_model.config.vocab_size)


@pytest.fixture(scope="module")
def reference(preset_model, prompt):
    """local's tokens after the recovery point: token 0 comes from the prefill, BEFORE more precede the recovery."""
    local = LocalMode(ModeContext(preset_model))
    local.setup()
    tokens = generate.generate(local, prompt, BEFORE + AFTER)
    return tokens[1 + BEFORE:]


def cache_bytes(model, positions: int) -> int:
    config, itemsize = model.config, next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * positions * config.hidden_size * itemsize


# What each strategy may ship, both ways together, around the size of what it must move.
def byte_bounds(strategy: str, model) -> tuple[int, int]:
    cached = PROMPT_TOKENS + BEFORE
    return {
        "full_cache": (2 * cache_bytes(model, cached), 2 * cache_bytes(model, cached) + 4096),  # out and back
        "recompute": (4 * cached, 4 * cached + 1024),  # int32 ids
        "recompute_since_sync": (4 * BEFORE, 4 * BEFORE + 1024),
        "kv_since_sync": (1, 2 * cache_bytes(model, BEFORE) + 4096),  # compressed rows, out and back
    }[strategy]


@pytest.mark.slow
@pytest.mark.parametrize("case", recovery_cases(), ids=lambda case: case.id)
def test_after_a_recovery_the_tokens_are_locals_and_only_the_strategys_bytes_moved(case, servers, prompt, reference,
                                                                                   preset_model):
    strategy = make_strategy(case.strategy)
    source = servers["first"]
    target = source if case.scenario == "eviction" else servers["second"]
    state = begin_session(source, target, prompt, BEFORE, strategy.syncs_prompt)
    counters = [steps.context.counter for steps in {id(s): s for s in (source, target)}.values()]
    before = [counter.snapshot() for counter in counters]
    recovered = strategy.recover(source, target, state)
    moved = sum(c.since(b).bytes_sent + c.since(b).bytes_received for c, b in zip(counters, before))
    low, high = byte_bounds(case.strategy, preset_model)
    assert low <= moved <= high, f"{case.id} moved {moved} bytes, outside {low}..{high}"
    with pytest.raises(transport.ServerError, match="unknown KV handle"):  # the cache left the source
        source.call("kv_export", {}, {"kv_handle": state.kv_handle})
    assert continue_after(target, state, recovered, AFTER) == reference


def call(connection, op, tensors=None, meta=None):
    return codec.decode(connection.call(op, codec.encode(tensors or {}, meta)))


def test_bad_recovery_requests_are_clear_errors_and_the_server_keeps_serving(client, servers, prompt):
    steps = servers["first"]
    _, handle = generate.prefill(steps, prompt)
    with pytest.raises(transport.ServerError, match=f"since=99 is past the cache's {PROMPT_TOKENS} positions"):
        call(client, "kv_export", meta={"kv_handle": handle, "since": "99"})
    with pytest.raises(transport.ServerError, match="kv_import needs exactly 4 tensors k.0 .. v.1"):
        call(client, "kv_import", {"k.0": torch.zeros(1, 2, 1, 32)}, {"weights_handle": steps.weights_handle})
    with pytest.raises(transport.ServerError, match=r"kv_extend needs input_ids of shape \[1, tokens\]"):
        call(client, "kv_extend", {"input_ids": torch.zeros(3, dtype=torch.int32)}, {"weights_handle": steps.weights_handle})
    with pytest.raises(transport.ServerError, match="weights handle 'stale'"):
        call(client, "kv_extend", {"input_ids": torch.zeros(1, 2, dtype=torch.int32)}, {"weights_handle": "stale"})
    steps.release(handle)  # still held: no failed request consumed it


def test_a_rate_sweep_measures_every_recovery_case_at_each_rate():
    cases = recovery_cases((100_000_000, 1_000_000_000))
    assert len(cases) == 2 * len(recovery_cases())
    assert [case.id for case in cases][:2] == ["eviction-full_cache-100mbit", "eviction-recompute-100mbit"]
    assert cases[-1].id == "migration-kv_since_sync-1gbit"

def kv_benchmark(scenario, strategy, role, sent, received, recovery_ms, agreement=1.0, model="gpt2-test"):
    info = {"scenario": scenario, "strategy": strategy, "role": role, "lossless": role == "blind", "cached_positions": 133,
            "model": model, "weights": "random",
            "rpc_round_trips": 2, "recovery_ms": recovery_ms, "server_compute_ms": 0.5,
            "token_agreement_with_local": agreement, "wire_tcp_bytes_sent": None,
            "payload_bytes_sent_rounds": sent, "payload_bytes_received_rounds": received}
    return {"name": f"test_kv_recovery[{scenario}-{strategy}]", "extra_info": info, "stats": {}}


def test_the_kv_table_shows_each_strategys_saving_against_the_blind_one_and_verdicts_ignore_it():
    output_json = {"benchmarks": [kv_benchmark("eviction", "full_cache", "blind", [600, 500, 700], [400, 500, 300], 10.0),
                                  kv_benchmark("eviction", "recompute", "semantic", [90, 80, 100], [10, 20, 0], 25.0)]}
    section, = scenarios.kv_recovery(output_json)
    table = section.tables[0].frame.set_index("strategy")
    assert table.loc["full_cache", "payload B/recovery"] == 1000
    assert table.loc["recompute", "payload B/recovery"] == 100
    assert table.loc["recompute", "bytes saving"] == pytest.approx(0.9)
    assert table.loc["recompute", "latency saving"] == pytest.approx(-1.5)
    # Slower with fewer bytes says why, on its row: the compute it paid for the bytes it did not move.
    assert table.loc["recompute", "note"] == ("slower by design on this link: 0.5 ms of server compute to move 900 B "
                                              "fewer; it gains only where the link takes longer than that")
    assert table.loc["full_cache", "note"] is None
    assert set(table["weights"]) == {"random"}  # figures on random weights say so
    assert read_run(output_json).cases == []  # not a mode x phase case: no verdict judges it
    assert scenarios.kv_recovery({"benchmarks": []}) == []


def test_in_a_run_of_two_models_each_strategy_is_saved_against_its_own_models_blind_one():
    """llama-test's whole cache is 7x smaller than gpt2-test's: each model's recompute is judged against its own."""
    output_json = {"benchmarks": [
        kv_benchmark("eviction", "full_cache", "blind", [600], [400], 10.0, model="gpt2-test"),
        kv_benchmark("eviction", "recompute", "semantic", [90], [10], 25.0, model="gpt2-test"),
        kv_benchmark("eviction", "full_cache", "blind", [100], [100], 5.0, model="llama-test"),
        kv_benchmark("eviction", "recompute", "semantic", [90], [10], 25.0, model="llama-test")]}
    table = scenarios.kv_recovery(output_json)[0].tables[0].frame
    saving = table[table.strategy == "recompute"].set_index("model")["bytes saving"].to_dict()
    assert saving == {"gpt2-test": pytest.approx(0.9), "llama-test": pytest.approx(0.5)}, saving


def test_the_kv_table_labels_a_strategy_below_the_min_agreement_lossy_as_for_techniques():
    output_json = {"benchmarks": [kv_benchmark("eviction", "full_cache", "blind", [600], [400], 10.0),
                                  kv_benchmark("eviction", "recompute", "semantic", [90], [10], 25.0, agreement=0.75)]}
    for min_agreement, recompute in [(1.0, "LOSSY"), (0.75, "as local")]:
        table = scenarios.kv_recovery(output_json, min_agreement)[0].tables[0].frame.set_index("strategy")
        assert table["tokens"].to_dict() == {"full_cache": "as local", "recompute": recompute}, min_agreement
        assert table.loc["recompute", "token agreement"] == 0.75


def test_a_lossy_strategys_benchmark_records_its_worst_rounds_agreement_with_local():
    """recompute is lossless=False, so no lossless check compares its tokens: its extra_info must measure them."""
    settings = SimpleNamespace(model=TEST_MODEL, link="loopback", prompt_tokens=PROMPT_TOKENS)
    hosts = SimpleNamespace(session=SimpleNamespace(settings=settings, reference_tokens=[9, 1, 2, 3, 4, 5, 6]))
    runner = RecoveryRunner(hosts, RecoveryCase("eviction", "recompute"))
    runner.strategy, runner.before_steps, runner.after_steps = make_strategy("recompute"), 2, 4
    assert runner.expected_tokens() == [3, 4, 5, 6]
    record = RoundRecord(100, 10, None, None, None, None, 2, 0, 0.5, 0.1, 0.1)
    info = runner.extra_info([record, record], [1.0, 2.0], [[3, 4, 5, 6], [3, 4, 0, 0]])
    assert (info["lossless"], info["token_agreement_with_local"], info["tokens_same_every_round"]) == (False, 0.5, False)


@pytest.mark.slow
@netns_test
def test_the_suite_measures_recovery_on_two_hosts_and_removes_both_also_when_a_strategy_fails(suite, preset_model):
    """Over netns each server is its own namespace; one strategy broken on purpose fails, the others report."""
    suite.makepyfile(test_kv_recovery=KV_BENCHMARK)
    suite.makeconftest(INNER_CONFTEST + (
        "import semgap.client.kvrecovery as strategies\n"
        "def broken(*args):\n    raise RuntimeError('broken on purpose')\n"
        "strategies.RecomputeSinceSync.recover = broken\n"))
    result, output, pid = run_suite(suite, *SMALL, "--semgap-link", "netns", "--semgap-decode-steps", "4")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: broken on purpose*",
                                 "FAILED *test_kv_recovery[[]migration-recompute_since_sync[]]*"])
    kv = {b["extra_info"]["case"]: b["extra_info"] for b in output["benchmarks"] if "scenario" in b["extra_info"]}
    assert sorted(kv) == ["eviction-full_cache", "eviction-recompute", "migration-full_cache",
                          "migration-kv_since_sync", "migration-recompute"]
    migration = kv["migration-full_cache"]
    assert migration["wire_levels"] == ["payload", "tcp", "link"]
    # Both servers' veths count: the cache leaves host 1 and reaches host 2, so each way carries it once.
    assert migration["wire_link_bytes_received"] > migration["wire_tcp_bytes_received"] > cache_bytes(
        preset_model, SUITE_PROMPT_TOKENS + 2)
    assert {info["token_agreement_with_local"] for info in kv.values()} == {1.0}
    for info in kv.values():  # the server's GPU monitor and the host's load, as the matrix records them
        assert {"gpu_sm_util_mean_pct", "gpu_samples", "gpu_monitor_note", "cpu_busy_pct", "cpu_steal_pct"} <= set(info)
        assert info["gpu_sm_util_mean_pct"] is not None or info["gpu_monitor_note"]
    [run_dir] = new_run_dirs(suite.path)  # a failed run: results/latest does not move to it
    report = (run_dir / "report.md").read_text()
    strategies = {row["strategy"]: row for row in rows(report, "KV recovery: eviction and migration")}
    assert strategies["kv_since_sync"]["bytes saving"].startswith("+9")
    assert {row["tokens"] for row in strategies.values()} == {"as local"}  # recompute's too: measured, at 1.0
    # The broken strategy is the run's failure: in the JSON, at the top of the report and in the terminal.
    [failure] = output["semgap"]["failures"]
    assert failure["case"] == "kv-recovery:migration-recompute_since_sync" and "broken on purpose" in failure["reason"]
    assert output["semgap"]["run_status"] == "failed" and "This run is FAILED" in report
    result.stdout.fnmatch_lines(["failed: kv-recovery:migration-recompute_since_sync (call): *broken on purpose*",
                                 "semgap: run failed; *"])
    assert leftovers(pid, suite.path) == []



def test_a_static_cache_exports_only_its_filled_positions_and_converts_to_an_equal_dynamic_one(preset_model, prompt):
    """The GPU's static path: a recovery must ship the filled positions, not the cache's empty tail."""
    static, dynamic = (runtime.Engine(preset_model, path, max_cache_len=64)
                       for path in (runtime.STATIC, runtime.EAGER_DYNAMIC))
    static_cache, dynamic_cache = static.prefill(prompt).cache, dynamic.prefill(prompt).cache
    exported, expected = static.cache_tensors(static_cache), runtime.cache_to_tensors(dynamic_cache)
    assert {name: t.shape[2] for name, t in exported.items()} == {name: PROMPT_TOKENS for name in expected}
    for name in expected:
        torch.testing.assert_close(exported[name], expected[name])
    converted = static.to_dynamic(static_cache)
    assert converted is not static_cache and runtime.cache_to_tensors(converted)["k.0"].shape[2] == PROMPT_TOKENS
    assert static.to_dynamic(dynamic_cache) is dynamic_cache  # a dynamic cache is already one


# Kills the migration's second server as the second round of `migration-full_cache` starts: the cache is
# exported from the first server and its import finds the target gone.
KILL_THE_TARGET_MID_MIGRATION = r'''
import os
import signal

import semgap.bench.kvrecovery as kvrecovery

_spawn, _recover, _servers = kvrecovery.spawn_server, kvrecovery.RecoveryRunner._recover, []


def _spawning(*args, **kwargs):
    spawned = _spawn(*args, **kwargs)
    _servers.append(spawned)
    return spawned


def _killing(runner):
    if runner.case.id == "migration-full_cache" and len(runner.rounds) == 1 and _servers:
        os.killpg(_servers[-1].server.process.pid, signal.SIGKILL)
    return _recover(runner)


kvrecovery.spawn_server, kvrecovery.RecoveryRunner._recover = _spawning, _killing
'''


@pytest.mark.slow
def test_a_target_server_killed_mid_migration_fails_in_one_line_keeps_the_json_and_leaves_nothing(suite):
    suite.makepyfile(test_kv_recovery=KV_BENCHMARK)  # beside the matrix, which runs after it
    suite.makeconftest(INNER_CONFTEST + KILL_THE_TARGET_MID_MIGRATION)
    result, output, pid = run_suite(suite, *SMALL, "-p", "no:randomly")
    [failure] = output["semgap"]["failures"]
    assert failure["case"] == "kv-recovery:migration-full_cache" and "lost the semgap server" in failure["reason"]
    assert output["semgap"]["run_status"] == "failed"
    result.stdout.fnmatch_lines(["failed: kv-recovery:migration-full_cache (call): *lost the semgap server*"])
    # The later migrations skip, naming the loss once; the run's own server goes on serving the matrix after it.
    skipped = {skip["case"]: skip["reason"] for skip in output["semgap"]["skipped"]}
    assert set(skipped) == {f"kv-recovery:migration-{s}" for s in ("recompute", "recompute_since_sync", "kv_since_sync")}
    assert all(reason.startswith("not run: the migration's second server was lost in migration-full_cache")
               for reason in skipped.values()), skipped
    cases = {b["extra_info"]["case"] for b in output["benchmarks"]}
    assert {"eviction-full_cache", "eviction-recompute", "remote_cache-prefill"} <= cases, cases
    assert leftovers(pid, suite.path) == []
