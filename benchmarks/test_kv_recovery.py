"""KV-cache recovery: a session's cache is evicted, or the session migrates to a second server; blind vs semantic."""
import pytest

from semgap.bench.kvrecovery import RecoveryHosts, RecoveryRunner, recovery_cases
from semgap.bench.plugin import settings_key


@pytest.fixture(scope="module")
def semgap_kv_hosts(semgap_session):
    """The run's server and, for migration, a second one; the second and its link are removed at the end, also on failure."""
    if semgap_session is None:
        pytest.skip("the session did not open: see the first benchmark's failure")
    hosts = RecoveryHosts(semgap_session)
    try:
        yield hosts
    finally:
        hosts.close()


def pytest_generate_tests(metafunc):
    if "semgap_kv_case" in metafunc.fixturenames:
        cases = recovery_cases(metafunc.config.stash[settings_key].link_rates_bps)
        metafunc.parametrize("semgap_kv_case", cases, ids=[case.id for case in cases])


def test_kv_recovery(benchmark, semgap_kv_hosts, semgap_kv_case):
    """One strategy's recoveries: bytes per level and direction, recovery_ms and the tokens after, in extra_info.

    Fails when a lossless strategy's tokens after the recovery differ from local's.
    """
    if benchmark.disabled:
        pytest.skip("benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds")
    reason = semgap_kv_hosts.unavailable(semgap_kv_case.scenario)
    if reason:
        pytest.skip(reason)
    RecoveryRunner(semgap_kv_hosts, semgap_kv_case).run(benchmark)
