"""KV-cache recovery: a session's cache is evicted, or the session migrates to a second server; blind vs semantic."""
import pytest

from semgap.bench.design import run_models
from semgap.bench.kvrecovery import RecoveryHosts, RecoveryRunner, recovery_cases
from semgap.bench.plugin import settings_key


@pytest.fixture(scope="module")
def semgap_kv_hosts(semgap_sessions):
    """Per model, the run's server and, for migration, a second one, made when first needed; the second servers
    and their links are removed at the end, also on failure."""
    if semgap_sessions is None:
        pytest.skip("the session did not open: see the first benchmark's failure")
    hosts: dict[str, RecoveryHosts] = {}

    def of(model: str) -> RecoveryHosts:
        if model not in hosts:
            hosts[model] = RecoveryHosts(semgap_sessions.of(model))
        return hosts[model]

    try:
        yield of
    finally:
        for opened in reversed(list(hosts.values())):
            opened.close()


def pytest_generate_tests(metafunc):
    if "semgap_kv_case" in metafunc.fixturenames:
        settings = metafunc.config.stash[settings_key]
        cases = recovery_cases(settings.link_rates_bps, run_models(settings))
        metafunc.parametrize("semgap_kv_case", cases, ids=[case.id for case in cases])


def test_kv_recovery(benchmark, semgap_kv_hosts, semgap_kv_case):
    """One strategy's recoveries: bytes per level and direction, recovery_ms and the tokens after, in extra_info.

    Fails when a lossless strategy's tokens after the recovery differ from local's.
    """
    if benchmark.disabled:
        pytest.skip("benchmarking is disabled (pytest-xdist or --benchmark-disable): semgap needs measured rounds")
    hosts = semgap_kv_hosts(semgap_kv_case.model)
    reason = hosts.unavailable(semgap_kv_case.scenario)
    if reason:
        pytest.skip(reason)
    RecoveryRunner(hosts, semgap_kv_case).run(benchmark)
