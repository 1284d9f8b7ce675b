"""The experiment: every mode x phase (x link rate) as a pytest-benchmark benchmark."""
import pytest


def test_semantic_gap(benchmark, semgap_bench):
    """Measured rounds with warm-up; bytes per round, per level and direction, go to extra_info."""
    if benchmark.disabled:
        pytest.skip("benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds")
    semgap_bench.run(benchmark)
