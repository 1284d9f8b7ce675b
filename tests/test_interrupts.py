"""A run stopped at any point (SIGINT, SIGTERM, SIGKILL) leaves no namespace, veth or process behind, and
saves what it measured with the interrupt recorded, without a traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semgap.bench.testbed.netns import cleanup_stale
from semgap.bench.testbed.serverproc import READY_LINE

from .conftest import INNER_CONFTEST
from .inner import (QUICK, RUN_ORDER, SMALL, by_case, leftovers, namespaces, needs_link, needs_tcp,
                    netns_test, new_run_dirs, processes_in, run_json, run_suite, wait_for_no_leftovers)

pytestmark = pytest.mark.slow

# Added to the inner session's conftest: at the point SEMGAP_TEST_SIGNAL names ("POINT:SIGNAME") the
# session signals its whole process group, as Ctrl-C in a terminal or `timeout` would, so the `ip`
# commands it runs get the signal too.
SIGNAL_AT_A_POINT = RUN_ORDER + r'''
import signal
import semgap.report.writer, semgap.bench.testbed.serverproc, semgap.bench.session

_point, _signal = os.environ["SEMGAP_TEST_SIGNAL"].split(":")


def _signal_before(owner, name, when=lambda *args: True):
    original = getattr(owner, name)

    def signalled(*args, **kwargs):
        if when(*args):
            os.killpg(os.getpgrp(), getattr(signal, _signal))
        return original(*args, **kwargs)

    setattr(owner, name, signalled)


if _point == "server-start":  # the link exists, the server is starting: before the first round
    _signal_before(semgap.bench.testbed.serverproc.ServerProcess, "wait_ready")
elif _point == "mid-round":  # the second benchmark's warm-up round, after the first finished: pytest-benchmark
    # then holds a record of it without a single round (Ctrl-C there used to end in min() of an empty list)
    _signal_before(semgap.bench.runner.CaseRunner, "_teardown",
                   lambda runner, *args: _position(runner) == 1 and not runner.rounds)
elif _point == "teardown":  # every benchmark finished; the link and server are being removed
    _signal_before(semgap.bench.session.ExperimentSession, "close")
elif _point == "report":
    _signal_before(semgap.report.writer, "write")
'''


@pytest.fixture(autouse=True)
def remove_what_a_failed_check_left():
    """A leftover fails its test, and is then removed: the owner of every link named here is dead by now."""
    yield
    cleanup_stale()


TEARDOWN_LIMIT_S = 3.0  # the goal from the signal to the run's exit: JSON, report, server and link gone
TWO_BENCHMARKS = (*QUICK, "--semgap-link", "netns", "--semgap-modes", "remote_cache", "--semgap-phases", "prefill,decode")


def start_in_own_group(pytester, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The suite in a process group of its own (signalling the group must not reach this test)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--benchmark-only", *args], cwd=pytester.path, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )


def finish(process: subprocess.Popen, timeout_s: float = 300) -> str:
    try:
        return process.communicate(timeout=timeout_s)[0].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_stopped_cleanly(output: str, process: subprocess.Popen, cwd: Path) -> None:
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert "Traceback" not in output and "ValueError" not in output, output[-3000:]
    assert wait_for_no_leftovers(process.pid, cwd) == []


@netns_test
@needs_tcp
@pytest.mark.parametrize("point, signal_name, measured, cut_short", [
    ("server-start", "SIGTERM", 0, 1),  # the first benchmark, stopped in its setup, is named in failures
    ("mid-round", "SIGTERM", 1, 1),
    ("teardown", "SIGINT", 2, 0),
    ("report", "SIGINT", 2, 0),
])
def test_a_signal_at_any_point_of_a_netns_run_leaves_nothing_and_saves_what_was_measured(
        suite, point, signal_name, measured, cut_short):
    suite.makeconftest(INNER_CONFTEST + SIGNAL_AT_A_POINT)
    process = start_in_own_group(suite, *TWO_BENCHMARKS, env={"SEMGAP_TEST_SIGNAL": f"{point}:{signal_name}"})
    output = finish(process)
    assert_stopped_cleanly(output, process, suite.path)
    assert f"semgap: interrupted by {signal_name}" in output, output[-3000:]
    [run_dir] = new_run_dirs(suite.path)
    saved = run_json(run_dir)
    assert (saved["semgap"]["run_status"], saved["semgap"]["interrupted_by"]) == ("interrupted", signal_name)
    saved_cases, stopped = by_case(saved), [failure["case"] for failure in saved["semgap"]["failures"]]
    assert (len(saved_cases), len(stopped)) == (measured, cut_short), (list(saved_cases), stopped)
    assert not any(case.startswith(name) for case in stopped for name in saved_cases)  # saved or cut short, not both
    for info in saved_cases.values():  # what was saved is whole: every round measured its bytes
        assert len(info["payload_bytes_received_rounds"]) == 3 and info["payload_bytes_received"] > 0
    assert (run_dir / "report.md").exists()
    assert not (suite.path / "results" / "latest").exists()  # latest moves only to a complete run
    # The closing line names what the folder holds, and no more.
    kinds = ["JSON", "report", "verdicts"] + ["plots"] * bool(list(run_dir.glob("*.png"))) + ["logs"]
    closing = f"semgap: run interrupted; {', '.join(kinds[:-1])} and logs in results/{run_dir.name}/; "
    assert closing + ("it measured nothing, so results/latest is unchanged" if not measured else
                      "kept under its id: results/latest moves only to a complete run") in output, output[-3000:]


def start_endless_run(pytester, link: str) -> subprocess.Popen:
    """An inner session that benchmarks (practically) forever; returns once it measures."""
    process = start_in_own_group(pytester, *QUICK, "--semgap-link", link, "--semgap-modes", "remote_cache",
                                 "--semgap-phases", "decode", "--semgap-rounds", "100000")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        logs = list(pytester.path.glob("results/*/logs/server-*.log"))
        if logs and READY_LINE in logs[0].read_text(errors="replace"):
            break
        time.sleep(0.2)
    else:
        output = finish(process, timeout_s=5)
        raise AssertionError(f"the inner run never had a ready server:\n{output[-3000:]}")
    time.sleep(2)  # the benchmark's rounds are running
    assert process.poll() is None
    if link == "netns":
        assert [name for name in namespaces() if name.startswith(f"semgap-{process.pid}-")]
    assert processes_in(pytester.path)
    return process


@needs_tcp
@pytest.mark.parametrize("link", ["loopback", pytest.param("netns", marks=needs_link)])
def test_ctrl_c_mid_benchmark_saves_the_interrupt_and_leaves_nothing(suite, link):
    process = start_endless_run(suite, link)
    signalled = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
    output = finish(process, timeout_s=60)
    teardown_s = time.monotonic() - signalled
    assert_stopped_cleanly(output, process, suite.path)
    # A stated requirement (issue 24), not a benchmark: measured 1.0 s on loopback on a loaded 2-core
    # VM (it was 6.5 s before servers and interrupted runs skipped the interpreter's shutdown).
    print(f"teardown after SIGINT ({link}): {teardown_s:.2f} s (limit: {TEARDOWN_LIMIT_S:.0f} s)")
    assert teardown_s <= TEARDOWN_LIMIT_S, f"teardown after SIGINT took {teardown_s:.2f} s:\n{output[-3000:]}"
    [run_dir] = new_run_dirs(suite.path)
    saved = run_json(run_dir)["semgap"]
    assert (saved["run_status"], saved["interrupted_by"]) == ("interrupted", "SIGINT")
    [failure] = saved["failures"]
    assert failure["case"].startswith("remote_cache-decode") and "interrupted by SIGINT" in failure["reason"]


@netns_test
@needs_tcp
def test_sigkill_mid_netns_benchmark_kills_the_server_and_the_next_run_removes_the_link(suite):
    process = start_endless_run(suite, "netns")
    killed = process.pid
    try:
        process.kill()  # no teardown at all
        process.communicate(timeout=30)
        # The kernel SIGKILLs the server when its parent dies (PR_SET_PDEATHSIG).
        deadline = time.monotonic() + 20
        while processes_in(suite.path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_in(suite.path) == []
        # The namespace and veth stay until some session's cleanup_stale (the next run's, unless
        # another test's session alongside came first) removes them: their owner is dead.
        result, _output, pid = run_suite(suite, *SMALL, "--semgap-link", "netns")
        result.assert_outcomes(passed=1)
        assert leftovers(killed, suite.path) == []
        assert leftovers(pid, suite.path) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
