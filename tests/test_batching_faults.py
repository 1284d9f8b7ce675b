"""Faults during a batching benchmark: each one is a one-line error naming its cause, the run's JSON keeps the
failure, and nothing is left behind (server process, namespace, veth)."""
import pytest

from .conftest import INNER_CONFTEST
from .inner import leftovers, netns_test, run_suite
from .test_batching import BATCHING_BENCHMARK

pytestmark = pytest.mark.slow

BATCH = ("test_batching.py", "--semgap-modes=remote_cache", "--semgap-batch-sessions=2", "--semgap-batch-rounds=3",
         "--semgap-warmup-rounds=0", "--semgap-prompt-tokens=8", "--semgap-decode-steps=2", "-p", "no:randomly")

# Runs `action` (SIGNAL or LINK_DOWN below) as the second round of the first batching case starts: the
# sessions are prefilled and connected, and their decode steps find the server gone, stopped or out of reach.
FAULT_MID_BATCH = r'''
import os
import signal
import subprocess

import semgap.bench.batchrunner as batchrunner

_round = batchrunner.BatchRunner._round


def _signalling(runner, sessions):
    if len(runner.rounds) == 1 and not getattr(batchrunner, "_signalled", False):
        batchrunner._signalled = True
        {action}
    return _round(runner, sessions)


batchrunner.BatchRunner._round = _signalling
'''


SIGNAL = "os.killpg(runner.session.server.process.pid, signal.{})"
# The server's end of the veth, inside the run's namespace.
LINK_DOWN = ("subprocess.run(['ip', '-n', runner.session.link.namespace, 'link', 'set', 'dev', "
             "runner.session.link.server_ifname, 'down'], check=True)")


def run_with(suite, action: str, *args: str):
    suite.makepyfile(test_batching=BATCHING_BENCHMARK)
    suite.makeconftest(INNER_CONFTEST + FAULT_MID_BATCH.replace("{action}", action))
    return run_suite(suite, *BATCH, *args)


def test_a_server_killed_mid_batch_fails_the_case_in_one_line_keeps_the_json_and_leaves_nothing(suite):
    result, output, pid = run_with(suite, SIGNAL.format("SIGKILL"), "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    [failure] = output["semgap"]["failures"]
    assert "lost the semgap server" in failure["reason"] and "batching" in failure["case"], failure
    assert output["semgap"]["run_status"] == "failed"
    result.stdout.fnmatch_lines(["failed: batching:*lost the semgap server*during 'decode'*"])
    assert "Traceback" not in result.stdout.str()
    assert leftovers(pid, suite.path) == []


def test_a_server_stopped_mid_batch_times_out_in_one_line_keeps_the_json_and_leaves_nothing(suite):
    result, output, pid = run_with(suite, SIGNAL.format("SIGSTOP"), "--semgap-rpc-timeout", "3", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    [failure] = output["semgap"]["failures"]
    assert "during 'decode': no progress within 3 s" in failure["reason"] and "blind" in failure["case"], failure
    result.stdout.fnmatch_lines(["*SKIPPED*not run: test_batching[[]blind-2sessions[]] failed with an error every "
                                 "benchmark would repeat*"])
    assert output["semgap"]["run_status"] == "failed"
    assert "Traceback" not in result.stdout.str()
    assert leftovers(pid, suite.path) == []
    # The teardown continues the stopped server after its SIGTERM: it stops cleanly, not killed 10 s later.
    [log] = (suite.path / "results").glob("*/logs/server-*.log")
    assert log.read_text().rstrip().endswith("semgap server stopped"), log.read_text()[-500:]


@netns_test
def test_the_link_going_down_mid_batch_times_out_in_one_line_keeps_the_json_and_leaves_nothing(suite):
    result, output, pid = run_with(suite, LINK_DOWN, "--semgap-link", "netns", "--semgap-rpc-timeout", "3", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    [failure] = output["semgap"]["failures"]
    assert "during 'decode': no progress within 3 s" in failure["reason"] and "blind" in failure["case"], failure
    assert output["semgap"]["run_status"] == "failed"
    assert "Traceback" not in result.stdout.str()
    assert leftovers(pid, suite.path) == []
