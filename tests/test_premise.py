"""The premise of H2: each remote mode's server compute per step against local's, flagged beyond ±10 %."""
from dataclasses import asdict, replace

import pytest

from semgap import schema
from semgap.analysis import premise
from semgap.analysis.measurements import read_run
from semgap.report import equal_compute
from semgap.analysis import verdicts

from .test_schema import IDENTITY, ROUNDS, TOKENS


def benchmark(mode: str, role: str, latency_s: float, server_compute_ms: float, phase="decode", steps=5) -> dict:
    identity = replace(IDENTITY, case=f"{mode}-{phase}", mode=mode, label=mode, role=role, phase=phase,
                       decode_steps=steps, techniques=None, technique_spec=None, block=0)
    rounds = [schema.RoundRecord(**{**asdict(r), "server_compute_ms": server_compute_ms}) for r in ROUNDS]
    return {"name": f"test_semantic_gap[{mode}-{phase}]", "stats": {"data": [latency_s] * 3},
            "extra_info": schema.matrix_extra_info(identity, rounds, TOKENS)}


def run(*benchmarks) -> dict:
    return {"benchmarks": list(benchmarks), "semgap": {"cpus_pinned": True, "client_cpus": "0", "server_cpus": "1",
                                                       "client_threads": 1, "server_threads": 1}}


@pytest.mark.parametrize("server_ms, within", [(50.0, True), (54.9, True), (45.1, True), (56.0, False), (40.0, False)])
def test_a_server_is_within_the_premise_only_near_locals_compute_per_step(server_ms, within):
    # local: a 5-step decode round of 50 ms is 10 ms a step; the server's 5 forwards took server_ms.
    cases = read_run(run(benchmark("local", "local", 0.050, 0.0), benchmark("remote_cache", "blind", 0.070, server_ms))).cases
    (check,) = premise.compute_checks(cases)
    assert check.local_ms_per_step == pytest.approx(10.0) and check.server_ms_per_step == pytest.approx(server_ms / 5)
    assert check.within is within


def test_a_prefill_is_one_step_and_a_group_without_local_is_not_checked():
    cases = read_run(run(benchmark("local", "local", 0.020, 0.0, "prefill", 0),
                         benchmark("semantic", "semantic", 0.030, 30.0, "prefill", 0),
                         benchmark("remote_cache", "blind", 0.070, 50.0))).cases
    (check,) = premise.compute_checks(cases)
    assert (check.label, check.phase, check.ratio) == ("semantic", "prefill", pytest.approx(1.5))
    assert "semantic's server computes a prefill step in 30.00 ms, local in 20.00 ms (+50%" in check.warning()


def test_the_report_states_the_policy_and_warns_when_the_premise_fails():
    data = run(benchmark("local", "local", 0.050, 0.0), benchmark("remote_cache", "blind", 0.070, 80.0))
    (section,) = equal_compute.sections(verdicts.compute(data, n_resamples=100), data)
    text = "\n".join(section.before)
    assert "**Warning: 1 of 1 remote cases computed a step more than ±10% away from local" in text
    assert "pinned on disjoint CPUs (client 0, 1 thread(s); server 1, 1 thread(s))" in text
