"""The train-once cache: outside the repository, built once under a lock, published whole or not at all."""
import pytest

from semgap import weights_cache

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


def test_a_failed_build_publishes_nothing_and_the_next_build_starts_clean(cache):
    def fail_halfway(directory):
        (directory / "weights").write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed while writing"):
        weights_cache.cached_directory("model-a", fail_halfway, print)
    assert sorted(path.name for path in cache.iterdir()) == ["model-a.lock"]  # no entry, no partial directory
    (cache / "model-a.partial-999999").mkdir()  # what a killed builder leaves behind
    entry = weights_cache.cached_directory("model-a", write_weights, print)
    assert (entry / "weights").read_text() == "complete"
    assert sorted(path.name for path in cache.iterdir()) == ["model-a", "model-a.lock"]


def test_entry_names_cannot_leave_the_cache(cache):
    for name in ("../escape", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="plain directory name"):
            weights_cache.cached_directory(name, write_weights, print)
