"""CPU placement: disjoint halves for client and server, CPU lists as taskset writes them, applied to every thread."""
import os
import threading

import pytest
import torch

from semgap.model import cpus


def test_the_split_gives_each_side_its_own_half_and_equal_threads():
    plan = cpus.CpuPlan.split({0, 1, 2, 3, 4})
    assert plan.client_cpus == {0, 1} and plan.server_cpus == {2, 3} and plan.threads == 2
    assert not plan.client_cpus & plan.server_cpus
    assert cpus.CpuPlan.split({4, 7}) == cpus.CpuPlan(frozenset({4}), frozenset({7}))
    with pytest.raises(ValueError, match="two CPUs or more"):
        cpus.CpuPlan.split({3})


def test_policy_off_pins_nothing_and_an_unknown_policy_says_the_choices():
    assert cpus.plan("off") is None
    with pytest.raises(ValueError, match="choose from auto, off"):
        cpus.plan("half")


@pytest.mark.parametrize("text, expected", [("0", {0}), ("0-3,6", {0, 1, 2, 3, 6}), ("2,1", {1, 2})])
def test_cpu_lists_parse_and_format_as_taskset_writes_them(text, expected):
    assert cpus.parse_cpus(text) == expected
    assert cpus.parse_cpus(cpus.format_cpus(expected)) == expected
    assert cpus.format_cpus({0, 1, 2, 6}) == "0-2,6"


def test_a_bad_cpu_list_is_refused_with_its_form():
    with pytest.raises(ValueError, match="write it as 0-3,6"):
        cpus.parse_cpus("all")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move a thread from one to another")
def test_a_placement_moves_every_thread_already_running_and_restores():
    before = cpus.Placement.current()
    started, stop = threading.Event(), threading.Event()
    thread_id = []

    def worker():
        thread_id.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(10)
    target = frozenset({min(before.cpus)})
    try:
        cpus.Placement(target, 1).apply()
        assert os.sched_getaffinity(thread_id[0]) == target  # a thread started before the placement moved too
        assert os.sched_getaffinity(0) == target and torch.get_num_threads() == 1
    finally:
        before.apply()
        stop.set()
        thread.join()
    assert os.sched_getaffinity(0) == before.cpus and torch.get_num_threads() == before.threads
