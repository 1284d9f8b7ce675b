"""The train-once cache: outside the repository, built once under a lock, published whole or not at all."""
import subprocess
import sys
import time

import pytest

from semgap.model import weights_cache

from .conftest import REPO


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_weights(directory):
    (directory / "weights").write_text("complete")


def test_default_cache_lies_outside_the_repository(monkeypatch):
    monkeypatch.delenv(weights_cache.CACHE_VARIABLE, raising=False)
    root = weights_cache.cache_root()
    assert root.parts[-2:] == (".cache", "semgap") and not root.resolve().is_relative_to(REPO)


def test_an_entry_is_built_once_then_found(cache):
    builds = []

    def build(directory):
        builds.append(directory)
        write_weights(directory)

    first = weights_cache.cached_directory("model-a", build, print)
    again = weights_cache.cached_directory("model-a", build, print)
    assert first == again == cache / "model-a" and len(builds) == 1
    assert (first / "weights").read_text() == "complete"


def test_a_failed_build_publishes_nothing(cache):
    def fail_halfway(directory):
        write_weights(directory)
        raise RuntimeError("failed while writing")

    with pytest.raises(RuntimeError, match="failed while writing"):
        weights_cache.cached_directory("model-a", fail_halfway, print)
    assert sorted(path.name for path in cache.iterdir()) == ["model-a.lock"]  # no entry, no partial directory


def test_a_builder_killed_halfway_publishes_nothing_and_the_next_build_starts_clean(cache):
    code = ("import time; from pathlib import Path; from semgap.model import weights_cache\n"
            "def build(directory):\n    (directory / 'weights').write_text('half')\n    time.sleep(600)\n"
            "weights_cache.cached_directory('model-a', build, print)\n")
    builder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob("*/weights")):
            assert time.monotonic() < deadline and builder.poll() is None
            time.sleep(0.1)
    finally:
        builder.kill()  # SIGKILL: no cleanup of its own runs
        builder.wait()
    assert not (cache / "model-a").exists()
    entry = weights_cache.cached_directory("model-a", write_weights, print)
    assert (entry / "weights").read_text() == "complete"
    assert sorted(path.name for path in cache.iterdir()) == ["model-a", "model-a.lock"]


def test_entry_names_cannot_leave_the_cache(cache):
    for name in ("../escape", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="plain directory name"):
            weights_cache.cached_directory(name, write_weights, print)
