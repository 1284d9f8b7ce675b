"""Shared fixtures of the library's tests: one small server and one client connection per test process."""
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
# Imported once, now: it registers torch libraries in C++, and a pytester test (which restores sys.modules
# when it ends) that first imported it would leave the next import to register them again and fail.
import torch._dynamo  # noqa: F401
# Imported here, so that in-process inner sessions (tests/inner.py run_pytest) find torch, transformers and
# scipy loaded and keep them: pytester takes from sys.modules only what a session imported itself.
import semgap.bench.plugin  # noqa: F401
# pygal (--benchmark-histogram) imports importlib_metadata, which replaces the standard library's
# distribution finder for good: first imported inside an in-process session and then taken out of
# sys.modules, it would leave later sessions without entry points, pytest-benchmark's among them.
import pygal  # noqa: F401

from semgap.model import presets

from semgap.wire import transport
from semgap.bench.testbed.serverproc import ServerProcess

from .inner import KEPT_MODULES

pytest_plugins = ["pytester"]

# The tests' model: small enough to build in a second, and its greedy tokens depend on the context, so a
# mode that loses or corrupts its KV cache generates other tokens than `local` (tests/test_modes.py).
TEST_MODEL = "gpt2-test"

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = (REPO / "benchmarks" / "test_semantic_gap.py").read_text()
CALIBRATION = (REPO / "benchmarks" / "test_calibration.py").read_text()
# Inner sessions write their pid, so tests can tell their namespaces and servers from others'.
INNER_CONFTEST = 'import os\npytest_plugins = ["semgap.bench.plugin"]\nopen("inner.pid", "w").write(str(os.getpid()))\n'


def pytest_collection_modifyitems(items):
    """Modules with a slow test first, each module's tests kept together (module fixtures are set up once).

    Under xdist's worksteal, the long tests then start early and the short ones fill the end, rather than
    one long test running alone at the end while the other worker idles.
    """
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)  # stable: the order inside each group stays


@pytest.fixture(autouse=True)
def kept_library_modules():
    """Put back the library modules in-process inner runs imported (tests/inner.py KeptLibraries) before
    each test, and before its pytester, if any, notes which modules were there."""
    for name, module in KEPT_MODULES.items():
        sys.modules.setdefault(name, module)


@pytest.fixture(scope="session")
def preset_model():
    return presets.build_model(presets.ModelSpec(TEST_MODEL))


@pytest.fixture(scope="session")
def prompt(preset_model):
    """The default run's prompt length (128 tokens) for the test model."""
    return presets.prompt_ids(128, preset_model.config.vocab_size)


def unused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, for tests of a server that is not there (servers bind port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextmanager
def spawned_server(tmp_path_factory, *extra_args: str):
    """A server of TEST_MODEL on loopback, without a GPU monitor, stopped at the end of the block."""
    server = ServerProcess.spawn(TEST_MODEL, "127.0.0.1", 0, tmp_path_factory.mktemp("logs"),
                                 extra_args=("--no-gpu-monitor", *extra_args), ready_timeout_s=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def preset_server(tmp_path_factory):
    with spawned_server(tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="session")
def rpc_server(tmp_path_factory):
    with spawned_server(tmp_path_factory, "--transport", "rpc") as server:
        yield server


@pytest.fixture(scope="session")
def rpc_client(rpc_server):
    """A counting PyTorch RPC connection; RPC starts once per process, so the whole session shares it."""
    connection = transport.CountingTransport(transport.connect("rpc", rpc_server.host, rpc_server.port, timeout_s=30))
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def client(preset_server):
    """A counting connection over the default transport (tcp) to the session's server."""
    connection = transport.CountingTransport(transport.connect("tcp", preset_server.host, preset_server.port, timeout_s=30))
    yield connection
    connection.close()


@pytest.fixture
def outside_xdist(monkeypatch):
    """Keep a worker's PYTEST_XDIST_* variables from inner runs: pytest-benchmark would disable itself there."""
    for name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def suite(pytester, monkeypatch, outside_xdist):
    """A copy of the benchmark suite in a temporary directory, run by inner pytest sessions on this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_semantic_gap=BENCHMARK)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini(
        # No plots (2 s a run): the tests that check them pass --semgap-plots=on. Nothing pinned: under xdist
        # every inner run would pin its client to the first CPU and its server to the second, whatever the
        # other workers run there; the test that checks pinning passes --semgap-cpus=auto.
        f"[pytest]\naddopts = --benchmark-save-data --semgap-model={TEST_MODEL} --semgap-blocks=1 --semgap-plots=off --semgap-cpus=off\n"
        "filterwarnings =\n    error:::semgap\n"
    )
    return pytester
