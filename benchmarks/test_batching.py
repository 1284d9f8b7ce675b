"""Semantic batching: N concurrent sessions decode at once, served one by one (blind) or in one batched forward (semantic)."""
import pytest


def test_batching(benchmark, semgap_batching):
    """One (sessions, flavour) case: tokens/s, per-token latency and bytes per token go to extra_info.

    Fails when a lossless flavour generates other tokens than local for any session's prompt.
    """
    if benchmark.disabled:
        pytest.skip("benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds")
    semgap_batching.run(benchmark)
