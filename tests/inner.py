"""Inner pytest sessions of the real suite: running them, reading their run directory, and finding what
they leave behind (namespaces, veths, servers)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from semgap.bench import rundir
from semgap.bench.testbed.netns import link_available
from semgap.bench.testbed.tcpcounters import tcp_counters_available

QUICK = ("--semgap-rounds", "3", "--semgap-warmup-rounds", "1", "--semgap-prompt-tokens", "32",
         "--semgap-decode-steps", "3", "-p", "no:cacheprovider")
# One remote benchmark, briefly: enough to spawn the server (and the link) and measure.
SMALL = (*QUICK, "--semgap-modes", "remote_cache", "--semgap-phases", "prefill", "--semgap-rounds", "2",
         "--semgap-warmup-rounds", "0")
IP = shutil.which("ip") or "ip"  # resolved now: some tests strip PATH for the inner run
# For an inner conftest: `_position(runner)` is the place of a CaseRunner among the benchmarks run so
# far (0 for the first), whatever order the run chose for its cases.
RUN_ORDER = r'''
import semgap.bench.runner

_runners = []
_setup = semgap.bench.runner.CaseRunner._setup


def _counted_setup(runner, *args):
    if not any(seen is runner for seen in _runners):
        _runners.append(runner)
    return _setup(runner, *args)


def _position(runner):
    return next(index for index, seen in enumerate(_runners) if seen is runner)


semgap.bench.runner.CaseRunner._setup = _counted_setup
'''

LINK_OK, LINK_REASON = link_available()
TCP_OK, TCP_REASON = tcp_counters_available()
needs_tcp = pytest.mark.skipif(not TCP_OK, reason=TCP_REASON)
needs_link = [pytest.mark.netns, pytest.mark.skipif(not LINK_OK, reason=LINK_REASON)]


def netns_test(test):
    """Mark a test that builds namespaces: `netns`, skipped with link_available()'s reason when impossible."""
    for mark in needs_link:
        test = mark(test)
    return test


def run_suite(pytester, *args: str):
    """Run the suite in a subprocess; (result, its benchmark.json or None, the inner pytest's pid).

    The inner session leaves its pid behind (INNER_CONFTEST): link names embed their owner's pid.
    """
    before = rundir.run_dirs(pytester.path / "results")
    (pytester.path / "inner.pid").unlink(missing_ok=True)
    result = pytester.runpytest_subprocess("--benchmark-only", *args, timeout=300)
    pid = int((pytester.path / "inner.pid").read_text())
    runs = new_run_dirs(pytester.path, before)
    return result, run_json(runs[0]) if runs else None, pid


def new_run_dirs(root: Path, before: list[Path] = ()) -> list[Path]:
    """The run directories under root/results that are not in `before`, oldest first."""
    return [path for path in rundir.run_dirs(root / "results") if path not in before]


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "benchmark.json").read_text())


def latest_json(root: Path) -> dict:
    return run_json(root / "results" / rundir.LATEST)


def by_case(output_json: dict) -> dict[str, dict]:
    """extra_info by case id: these runs measure each case once."""
    return {bench["extra_info"].get("case", bench["param"]): bench["extra_info"] for bench in output_json["benchmarks"]}


def namespaces() -> list[str]:
    if shutil.which(IP) is None:
        return []  # no iproute2 on this host: no namespace can exist
    out = subprocess.run([IP, "netns", "list"], check=True, capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def processes_in(cwd: Path) -> list[int]:
    """Live processes (servers, `ip`, anything) started in cwd, other than this one: each inner session
    runs in a directory of its own."""
    cwd_text, pids = os.path.realpath(cwd), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and os.readlink(proc / "cwd") == cwd_text:
                pids.append(int(proc.name))
        except OSError:  # gone, or a zombie: dead, just not reaped yet
            continue
    return pids


def leftovers(pid: int, cwd: Path) -> list[str]:
    """Namespaces and veths of the session with this pid, and processes of its directory, still present.

    Only names carrying that pid count, so sessions of other tests running alongside (xdist) never do.
    """
    found = [name for name in namespaces() if name.startswith(f"semgap-{pid}-")]
    found += [name for name in os.listdir("/sys/class/net") if name.startswith(f"sg{pid}n")]
    return found + [f"process {process}: {_command(process)}" for process in processes_in(cwd)]


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def wait_for_no_leftovers(pid: int, cwd: Path, timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := leftovers(pid, cwd)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
