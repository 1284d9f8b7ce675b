"""Where compute runs on a CPU host: disjoint CPU sets and intra-op thread counts for client and server.

On a machine of two cores, a client and a server that both use both cores slow each other down: the
latency difference between two modes is then partly the scheduler's. Pinned, each process runs on
its own cores with as many intra-op threads as it has cores, and `local` computes with the server's
thread count, so every mode's forward is the same accelerator. The policy is `auto` (pin when the
machine has at least two CPUs this process may use) or `off`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

POLICIES = ("auto", "off")


@dataclass(frozen=True)
class CpuPlan:
    """The client's and the server's CPUs and threads; None: nothing is pinned (the policy is off)."""

    client_cpus: frozenset[int]
    server_cpus: frozenset[int]

    @property
    def threads(self) -> int:
        """Intra-op threads of each side: one per CPU of the smaller side, so both compute alike."""
        return min(len(self.client_cpus), len(self.server_cpus))

    @classmethod
    def split(cls, available: set[int] | frozenset[int]) -> "CpuPlan":
        """The first half of `available` for the client, the second for the server (at least two CPUs)."""
        ordered = sorted(available)
        if len(ordered) < 2:
            raise ValueError(f"pinning needs two CPUs or more, this process may use {format_cpus(ordered)}")
        half = len(ordered) // 2
        return cls(frozenset(ordered[:half]), frozenset(ordered[half:2 * half]))


def plan(policy: str) -> CpuPlan | None:
    """The plan `policy` asks for on this machine, or None where it pins nothing."""
    if policy not in POLICIES:
        raise ValueError(f"unknown CPU policy {policy!r}; choose from {', '.join(POLICIES)}")
    available = os.sched_getaffinity(0)
    return CpuPlan.split(available) if policy == "auto" and len(available) >= 2 else None


@dataclass(frozen=True)
class Placement:
    """What a process runs on: its CPUs and its intra-op thread count."""

    cpus: frozenset[int]
    threads: int

    @classmethod
    def current(cls) -> "Placement":
        return cls(frozenset(os.sched_getaffinity(0)), torch.get_num_threads())

    def apply(self) -> None:
        """Run every thread of this process on `cpus`, and torch's intra-op work on `threads` threads."""
        for task in Path("/proc/self/task").iterdir():  # threads started earlier keep their own affinity
            try:
                os.sched_setaffinity(int(task.name), self.cpus)
            except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
                continue
        torch.set_num_threads(self.threads)


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset writes it: "0-3,6" -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (write it as 0-3,6)")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def format_cpus(cpus) -> str:
    """{0, 1, 2, 6} -> "0-2,6"."""
    ordered, ranges = sorted(cpus), []
    for cpu in ordered:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)
