"""Shared fixtures of the library's tests: one tiny server and one client connection per test process."""
from pathlib import Path

import pytest

from semgap import models, transport
from semgap.serverproc import ServerProcess, free_port

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model():
    return models.build_model(models.ModelSpec("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    server = ServerProcess.spawn("tiny-gpt2", "127.0.0.1", free_port(), tmp_path_factory.mktemp("logs"),
                                 extra_args=("--no-gpu-monitor",), ready_timeout_s=120)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(tiny_server):
    """A counting RPC connection; PyTorch RPC allows one per process, so the whole session shares it."""
    connection = transport.CountingTransport(transport.RpcTransport(tiny_server.host, tiny_server.port, timeout_s=30))
    yield connection
    connection.close()
