"""pytest-benchmark's terminal table with one row per case: a case's blocks are merged into one row.

Each block of a matrix case is a benchmark of its own (`test_semantic_gap[semantic-decode-b03]`), so
the table would show blocks x cases rows (120 for 12 cases) above the verdicts. The table is for the
eye; the JSON keeps every block's row and every round, and the verdicts read those. A merged row shows:
- median: the median of the blocks' medians, the statistic H2 is judged on;
- iqr: the interquartile range of the blocks' medians (block-to-block spread, not round-to-round);
- min and max: over every round of every block;
- rounds: every round of every block.
"""
from __future__ import annotations

import statistics
from typing import Iterable

BLOCK_FIELDS = ("block", "blocks")  # extra_info keys a matrix block's benchmark carries (semgap.schema)
NOTE = ("pytest-benchmark's table: one row per case; median and iqr over the blocks' medians, min, max and "
        "rounds over every round of every block (per-block rows in benchmark.json)")


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def merged(blocks: list[dict]) -> dict:
    """One flat benchmark row (pytest-benchmark's `as_dict(flat=True)` shape) for the blocks of one case."""
    medians = [b["median"] for b in blocks]
    q1, q3 = _quartiles(medians)
    first = blocks[0]
    case = first["extra_info"]["case"]
    row = dict(first)
    median = statistics.median(medians)
    row.update(
        name=f"{first['name'].split('[')[0]}[{case}]", fullname=f"{first['fullname'].split('[')[0]}[{case}]",
        param=case, median=median, q1=q1, q3=q3, iqr=q3 - q1, min=min(b["min"] for b in blocks),
        max=max(b["max"] for b in blocks), rounds=sum(b["rounds"] for b in blocks),
        mean=statistics.fmean(b["mean"] for b in blocks), ops=1 / median if median else 0.0,
        stddev=statistics.stdev(medians) if len(medians) > 1 else 0.0,
        total=sum(b["total"] for b in blocks),
    )
    return row


def one_row_per_case(benchmarks: Iterable[dict]) -> list[dict]:
    """The benchmarks with each matrix case's blocks merged into one row, at its first block's place.

    Rows that are not blocks, and rows pytest-benchmark compares against (`source` set), pass unchanged.
    """
    out: list[dict | tuple] = []
    cases: dict[tuple, list[dict]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if bench.get("source") or not all(key in info for key in BLOCK_FIELDS) or "case" not in info:
            out.append(bench)
            continue
        key = (bench.get("group"), bench["name"].split("[")[0], info["case"])
        if key not in cases:
            cases[key] = []
            out.append(key)
        cases[key].append(bench)
    return [merged(cases[item]) if isinstance(item, tuple) else item for item in out]
