"""The experiment: every mode x phase (x link rate), once per interleaved block, as pytest-benchmark benchmarks."""
import pytest


def test_semantic_gap(benchmark, semgap_bench):
    """One case's rounds in one block, after warm-up; bytes per round, per level and direction, go to extra_info.

    Fails when a lossless mode generates other tokens than local, or a round's kernel TCP bytes
    stray from its payload beyond the transport's framing.
    """
    if benchmark.disabled:
        pytest.skip("benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds")
    semgap_bench.run(benchmark)
