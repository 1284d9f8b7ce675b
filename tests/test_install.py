"""The installed plugin and commands (pyproject.toml, put into .venv by scripts/setup.sh): the cross-host
recipe of docs/transports-and-security.md, run as written there on 127.0.0.1."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from semgap.bench import rundir
from semgap.bench.testbed.serverproc import READY_LINE, reported_port
from tests.conftest import REPO, TEST_MODEL
from tests.inner import QUICK

RECIPE_DOC = REPO / "docs" / "transports-and-security.md"
SERVER_SCRIPT = REPO / ".venv" / "bin" / "semgap-server"
needs_install = pytest.mark.skipif(
    not SERVER_SCRIPT.exists(), reason=f"{SERVER_SCRIPT} is not installed: run bash scripts/setup.sh")


def recipe_line(name: str) -> str:
    """The one command of the ```bash block after the `<!-- recipe:NAME ` marker, exactly as the doc has it."""
    found = re.search(rf"<!-- recipe:{name} [^\n]*-->\n```bash\n([^\n]+)\n```", RECIPE_DOC.read_text())
    assert found, f"{RECIPE_DOC} has no recipe:{name} block"
    return found.group(1)


def for_loopback(line: str, port: int) -> str:
    """Adapt a recipe line for host and model only: 10.0.0.5 -> 127.0.0.1, gpt2 -> the tests' model."""
    adapted = line.replace("10.0.0.5", "127.0.0.1").replace("29501", str(port))
    adapted = re.sub(r"(--(?:semgap-)?model) gpt2(?= )", rf"\1 {TEST_MODEL}", adapted)
    assert adapted.count("127.0.0.1") == 1 and TEST_MODEL in adapted, f"recipe line changed shape: {line}"
    return adapted


@pytest.mark.slow
@needs_install
def test_cross_host_recipe_runs_as_written(tmp_path, outside_xdist):
    # The secret lies in a HOME outside the checkout and the client names it as a separate word
    # (~/.semgap-secret): that path must not move pytest's rootdir off the checkout.
    home = tmp_path / "home"
    home.mkdir()
    secret = home / ".semgap-secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    env = {**os.environ, "HOME": str(home)}
    env.pop("SEMGAP_SECRET", None)
    server_log = tmp_path / "server.log"
    with server_log.open("w") as log:
        server = subprocess.Popen(["bash", "-c", "exec " + for_loopback(recipe_line("server"), 0)], cwd=REPO,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while READY_LINE not in server_log.read_text():
            assert server.poll() is None, f"the recipe's server exited: {server_log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the recipe's server not ready: {server_log.read_text()[-2000:]}"
            time.sleep(0.2)
        port = reported_port(server_log.read_text())  # the server bound port 0 and says which port it got
        results = tmp_path / "results"
        # Only the run's size is added: few rounds and blocks, results kept out of the checkout.
        client = subprocess.run(
            ["bash", "-c", for_loopback(recipe_line("client"), port) + " " + " ".join(
                (*QUICK, "--semgap-blocks=2", "--semgap-modes=local,remote_cache", f"--semgap-results={results}"))],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    out = client.stdout + client.stderr
    assert client.returncode == 0, out[-4000:]
    assert f"rootdir: {REPO}" in out, out[:2000]
    assert "semgap verdicts" in out, out[-4000:]
    runs = rundir.run_dirs(results)
    assert len(runs) == 1 and (runs[0] / "verdicts.json").is_file(), runs


@needs_install
def test_plugin_loads_once_inside_and_outside_the_checkout(tmp_path):
    # Outside the checkout no conftest lists the plugin: only the pytest11 entry point brings its options.
    # Inside, the root conftest lists it too, under the entry point's name, so it must be registered once
    # (pytest stops with "Plugin already registered" otherwise).
    for cwd in (tmp_path, REPO):
        result = subprocess.run([str(REPO / ".venv" / "bin" / "pytest"), "--help"], cwd=cwd, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and "--semgap-secret-file" in result.stdout, (cwd, result.stderr[-2000:])
