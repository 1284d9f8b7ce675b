"""Transport calibration: raw TCP against each transport, small calls and 25 MB one way, on the run's link."""
import pytest


def test_calibration(benchmark, semgap_calibration, semgap_probe):
    """Per-call cost and throughput of each transport, each as a ratio to a raw socket in extra_info."""
    if benchmark.disabled:
        pytest.skip("benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds")
    reason = semgap_calibration.probe_unavailable(semgap_probe)
    if reason:
        pytest.skip(reason)
    semgap_calibration.run(benchmark, semgap_probe)
