"""Faults during a batching benchmark: each one is a one-line error naming its cause, the run's JSON keeps the
failure, and nothing is left behind (server process, namespace, veth)."""
import pytest

from .inner import leftovers, netns_test, run_suite
from .test_batching import BATCHING_BENCHMARK

pytestmark = pytest.mark.slow

BATCH = ("test_batching.py", "--semgap-modes=remote_cache", "--semgap-batch-sessions=2", "--semgap-batch-rounds=3",
         "--semgap-warmup-rounds=0", "--semgap-prompt-tokens=8", "--semgap-decode-steps=2", "-p", "no:randomly")

# Signals the spawned server's process group as the second round of the first batching case starts: the
# sessions are prefilled and connected, and their decode steps find the server gone (or stopped).
SIGNAL_THE_SERVER = r'''
import os
import signal

import semgap.bench.batchrunner as batchrunner

_round = batchrunner.BatchRunner._round


def _signalling(runner, sessions):
    if len(runner.rounds) == 1 and not getattr(batchrunner, "_signalled", False):
        batchrunner._signalled = True
        os.killpg(runner.session.server.process.pid, signal.{signal})
    return _round(runner, sessions)


batchrunner.BatchRunner._round = _signalling
'''


def run_with(suite, signal_name: str, *args: str):
    from .conftest import INNER_CONFTEST
    suite.makepyfile(test_batching=BATCHING_BENCHMARK)
    suite.makeconftest(INNER_CONFTEST + SIGNAL_THE_SERVER.replace("{signal}", signal_name))
    return run_suite(suite, *BATCH, *args)


def test_a_server_killed_mid_batch_fails_the_case_in_one_line_keeps_the_json_and_leaves_nothing(suite):
    result, output, pid = run_with(suite, "SIGKILL", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    [failure] = output["semgap"]["failures"]
    assert "lost the semgap server" in failure["reason"] and "batching" in failure["case"], failure
    assert output["semgap"]["run_status"] == "failed"
    result.stdout.fnmatch_lines(["failed: batching:*lost the semgap server*during 'decode'*"])
    assert "Traceback" not in result.stdout.str()
    assert leftovers(pid, suite.path) == []


def test_a_server_stopped_mid_batch_times_out_in_one_line_keeps_the_json_and_leaves_nothing(suite):
    result, output, pid = run_with(suite, "SIGSTOP", "--semgap-rpc-timeout", "3", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    [failure] = output["semgap"]["failures"]
    assert "during 'decode': no progress within 3 s" in failure["reason"] and "blind" in failure["case"], failure
    result.stdout.fnmatch_lines(["*SKIPPED*not run: test_batching[[]blind-2sessions[]] failed with an error every "
                                 "benchmark would repeat*"])
    assert output["semgap"]["run_status"] == "failed"
    assert "Traceback" not in result.stdout.str()
    assert leftovers(pid, suite.path) == []
