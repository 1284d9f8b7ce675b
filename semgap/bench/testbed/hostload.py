"""How busy the client's host was while a benchmark ran: load average and CPU steal, from /proc."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate `cpu` line of /proc/stat, in clock ticks since boot."""

    total_ticks: int
    steal_ticks: int
    idle_ticks: int  # idle + iowait

    @classmethod
    def read(cls, path: Path = PROC_STAT) -> "CpuTimes | None":
        """None where /proc/stat is missing or has no aggregate line (not Linux)."""
        try:
            first = path.read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        if not first or first[0] != "cpu":
            return None
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user
        ticks = [int(value) for value in first[1:9]] + [0] * max(0, 9 - len(first))
        return cls(total_ticks=sum(ticks[:8]), steal_ticks=ticks[7], idle_ticks=ticks[3] + ticks[4])


def steal_pct(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two readings, in percent.

    None when either reading is missing or no tick passed in between.
    """
    if before is None or after is None or after.total_ticks <= before.total_ticks:
        return None
    return 100.0 * (after.steal_ticks - before.steal_ticks) / (after.total_ticks - before.total_ticks)


def busy_pct(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """Share of all CPUs' time spent not idle between two readings, in percent (100 = every core busy)."""
    if before is None or after is None or after.total_ticks <= before.total_ticks:
        return None
    idle = after.idle_ticks - before.idle_ticks
    return 100.0 * (1.0 - idle / (after.total_ticks - before.total_ticks))


def load_avg_1m(path: Path = PROC_LOADAVG) -> float | None:
    """The 1-minute load average (runnable and uninterruptible tasks), or None where unknown."""
    try:
        return float(path.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def cores() -> int:
    """CPUs this process may run on (what a load average is compared with)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
