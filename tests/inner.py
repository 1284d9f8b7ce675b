"""Inner pytest sessions of the real suite: running them, reading their run directory, and finding what
they leave behind (namespaces, veths, servers)."""
from __future__ import annotations

import faulthandler
import json
import os
import shutil
import subprocess
import sys
import threading
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


def run_pytest(pytester, *args: str, timeout_s: float = 300) -> pytest.RunResult:
    """An inner pytest session in pytester's directory, bounded to timeout_s.

    It runs in this process, unless it starts PyTorch RPC (which a process can start only once): an
    inner run then skips the 4-5 s of importing torch, transformers and scipy that a new process pays
    (tests/conftest.py imported them). Its servers are still processes of their own. What its conftest
    patched in semgap's modules or os is put back afterwards (Patched), and the libraries it imported
    stay imported (KeptLibraries). It must leave no thread behind, as one would have kept a process of
    its own from exiting. Past timeout_s, faulthandler prints every thread's stack and ends this worker,
    which fails the test.
    """
    if any(_starts_rpc(arg) for arg in args):
        return pytester.runpytest_subprocess(*args, timeout=timeout_s)
    threads_before, patched, libraries = set(threading.enumerate()), Patched(), KeptLibraries(pytester.path)
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    try:
        result = pytester.runpytest_inprocess(*args, plugins=[libraries])
    finally:
        faulthandler.cancel_dump_traceback_later()
        patched.undo()
        libraries.keep()
    left = [thread for thread in threading.enumerate() if thread not in threads_before]
    for thread in left:
        thread.join(timeout=2.0)  # one that is ending as the session returns
    assert not [thread for thread in left if thread.is_alive()], f"the inner session left threads running: {left}"
    return result


# The library modules in-process sessions imported, for the rest of this worker's life (KeptLibraries).
KEPT_MODULES: dict[str, object] = {}


class KeptLibraries:
    """A plugin of an in-process session that keeps the library modules it imported (transformers loads many
    lazily). pytester takes out of sys.modules every module a session added, and again at the end of the
    test; imported again, such a module would be a second copy beside the first that other modules still
    hold, with classes of its own (`isinstance(cache, DynamicCache)` then fails). So they go into
    KEPT_MODULES, which tests/conftest.py puts back before every test. The session's own test files and
    semgap's modules, which an inner conftest may patch, are still taken out."""

    def __init__(self, root: Path):
        self.root, self.modules = str(root), {}

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        self.modules = dict(sys.modules)

    def keep(self) -> None:
        for name, module in self.modules.items():
            if name not in sys.modules and name.partition(".")[0] != "semgap" \
                    and not str(getattr(module, "__file__", None) or "").startswith(self.root):
                KEPT_MODULES[name] = sys.modules[name] = module


class Patched:
    """The attributes of os, of semgap's modules and of the classes they define, as they are now; undo() puts
    back whatever an inner conftest (a fault injected on purpose) changed, added or removed since."""

    def __init__(self):
        self.saved: dict[object, dict] = {}
        for name, module in list(sys.modules.items()):
            if module is not None and (name in ("os", "semgap") or name.startswith("semgap.")):
                self.saved[module] = dict(vars(module))
                for value in list(vars(module).values()):
                    if isinstance(value, type) and value.__module__ == name:
                        self.saved[value] = dict(vars(value))

    def undo(self) -> None:
        for owner, before in self.saved.items():
            now = vars(owner)
            for key in [key for key in now if key not in before]:
                delattr(owner, key)
            for key, value in before.items():
                if now.get(key, Patched) is not value:
                    setattr(owner, key, value)


def _starts_rpc(arg: str) -> bool:
    """Whether an inner run's argument starts PyTorch RPC, which a process can start only once."""
    return arg == "rpc" or arg.endswith("=rpc") or arg == "--semgap-calibrate-rpc"


def run_suite(pytester, *args: str):
    """Run the suite (run_pytest); (result, its benchmark.json or None, the inner pytest's pid).

    The inner session leaves its pid behind (INNER_CONFTEST): link names embed their owner's pid.
    """
    before = rundir.run_dirs(pytester.path / "results")
    (pytester.path / "inner.pid").unlink(missing_ok=True)
    result = run_pytest(pytester, "--benchmark-only", *args)
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
